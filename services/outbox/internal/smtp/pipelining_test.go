package smtp_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/smtptest"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// tap sits on the wire between the sender and a sink and records, for every command the client
// sends, how many of its earlier commands were still unanswered: 0 throughout for a client that
// waits for each reply, 0, 1, 2, … across a pipelined group.
//
// With hold set, the reply to MAIL is kept back until the client has sent that transaction's
// DATA (or 2 s have passed), so a pipelining client is seen to send the whole group without
// waiting, whatever the scheduler does; a client that waits for MAIL's reply is seen waiting.
// With hidePipelining, PIPELINING is removed from the relay's EHLO reply, as a relay that does
// not offer it would answer.
type tap struct {
	hold, hidePipelining bool

	mu       sync.Mutex
	pending  []string // commands forwarded whose replies have not come back, oldest first
	inData   bool     // a 354 was forwarded: the client now sends the message
	commands []sentCommand
	datas    chan struct{} // one per DATA command read
}

type sentCommand struct {
	verb       string // "MAIL", "RCPT", "DATA", "." (the end of a message), "EHLO", …
	unanswered int    // the client's commands still without a reply when this one arrived
}

// startTap listens on a free port and forwards every connection to the sink at target.
func startTap(t *testing.T, target string, hold, hidePipelining bool) (*tap, string) {
	t.Helper()
	tp := &tap{hold: hold, hidePipelining: hidePipelining, datas: make(chan struct{}, 1000)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				_ = client.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); tp.clientToServer(client, server) }()
			go func() { defer wg.Done(); tp.serverToClient(server, client) }()
		}
	}()
	return tp, l.Addr().String()
}

func (tp *tap) clientToServer(client, server net.Conn) {
	defer server.Close()
	r := bufio.NewReader(client)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		tp.mu.Lock()
		if tp.inData {
			if line == ".\r\n" {
				tp.inData = false
				tp.commands = append(tp.commands, sentCommand{".", len(tp.pending)})
				tp.pending = append(tp.pending, ".")
			}
		} else {
			verb, _, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
			verb = strings.ToUpper(verb)
			tp.commands = append(tp.commands, sentCommand{verb, len(tp.pending)})
			tp.pending = append(tp.pending, verb)
			if verb == "DATA" {
				tp.datas <- struct{}{}
			}
		}
		tp.mu.Unlock()
		if _, err := io.WriteString(server, line); err != nil {
			return
		}
	}
}

func (tp *tap) serverToClient(server, client net.Conn) {
	defer client.Close()
	r := bufio.NewReader(server)
	greeted := false
	for {
		var lines []string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			lines = append(lines, line)
			if len(line) < 4 || line[3] != '-' {
				break
			}
		}
		// The command this reply answers stays unanswered until the reply is on its way to
		// the client: popping it when the sink answers would let a reply the tap still holds,
		// or one the client cannot yet have seen, count as answered.
		var verb string
		if greeted {
			tp.mu.Lock()
			if len(tp.pending) > 0 {
				verb = tp.pending[0]
			}
			tp.mu.Unlock()
		}
		if verb == "MAIL" && tp.hold {
			select {
			case <-tp.datas:
			case <-time.After(2 * time.Second):
			}
		}
		if greeted {
			tp.mu.Lock()
			if len(tp.pending) > 0 {
				tp.pending = tp.pending[1:]
			}
			tp.mu.Unlock()
		}
		greeted = true
		if verb == "EHLO" && tp.hidePipelining {
			lines = withoutExtension(lines, "PIPELINING")
		}
		if strings.HasPrefix(lines[0], "354") {
			tp.mu.Lock()
			tp.inData = true
			tp.mu.Unlock()
		}
		if _, err := io.WriteString(client, strings.Join(lines, "")); err != nil {
			return
		}
	}
}

// withoutExtension drops ext from a multi-line EHLO reply and renumbers the separators.
func withoutExtension(lines []string, ext string) []string {
	var texts []string
	for i, l := range lines {
		text := strings.TrimRight(l[4:], "\r\n")
		if i > 0 && strings.EqualFold(text, ext) {
			continue
		}
		texts = append(texts, text)
	}
	out := make([]string, len(texts))
	for i, text := range texts {
		sep := "-"
		if i == len(texts)-1 {
			sep = " "
		}
		out[i] = lines[0][:3] + sep + text + "\r\n"
	}
	return out
}

// transactions returns the verbs of MAIL…DATA groups with each one's unanswered count, e.g.
// "MAIL/0 RCPT/1 RCPT/2 DATA/3".
func (tp *tap) transactions() []string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	var out []string
	var cur []string
	for _, c := range tp.commands {
		switch c.verb {
		case "MAIL", "RCPT", "DATA":
			cur = append(cur, c.verb+"/"+strconv.Itoa(c.unanswered))
			if c.verb == "DATA" {
				out = append(out, strings.Join(cur, " "))
				cur = nil
			}
		}
	}
	return out
}

func senderTo(t *testing.T, addr string) *smtp.Sender {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	s := smtp.New(smtp.Config{Host: host, Port: p, TLS: smtp.TLSNone, CommandTimeout: 5 * time.Second, SubmitTimeout: time.Second})
	t.Cleanup(s.Close)
	return s
}

var twoRcpts = []string{"client@example.com", "partner@example.com"}

// TestPipelining: against a relay that offers PIPELINING, MAIL, every RCPT and DATA leave in
// one group before any reply has come back, on a new connection and on a reused one; the
// message arrives whole with both recipients.
func TestPipelining(t *testing.T) {
	sink := smtptest.Start(t)
	tp, addr := startTap(t, sink.Addr(), true, false)
	s := senderTo(t, addr)
	for i := range 3 {
		if got := s.Send(context.Background(), "info@kanzlei.example", twoRcpts, []byte(msg)); got.Outcome != outbox.OutcomeSent {
			t.Fatalf("send %d = %+v", i, got)
		}
	}
	for i, tr := range tp.transactions() {
		if tr != "MAIL/0 RCPT/1 RCPT/2 DATA/3" {
			t.Errorf("transaction %d on the wire: %s, want MAIL/0 RCPT/1 RCPT/2 DATA/3 (pipelined)", i, tr)
		}
	}
	msgs := sink.Messages()
	if len(msgs) != 3 || strings.Join(msgs[2].To, ",") != strings.Join(twoRcpts, ",") || string(msgs[2].Data) != msg {
		t.Fatalf("sink recorded %+v", msgs)
	}
}

// TestManyRecipients: 250 recipients go out in groups of at most 100 unanswered commands, and
// the message reaches all of them.
func TestManyRecipients(t *testing.T) {
	sink := smtptest.Start(t)
	tp, addr := startTap(t, sink.Addr(), false, false)
	var rcpts []string
	for i := range 250 {
		rcpts = append(rcpts, fmt.Sprintf("mandant%d@example.com", i))
	}
	if got := senderTo(t, addr).Send(context.Background(), "info@kanzlei.example", rcpts, []byte(msg)); got.Outcome != outbox.OutcomeSent {
		t.Fatalf("Send = %+v", got)
	}
	if msgs := sink.Messages(); len(msgs) != 1 || len(msgs[0].To) != 250 {
		t.Fatalf("sink recorded %d messages", len(msgs))
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for _, c := range tp.commands {
		if c.unanswered >= 100 {
			t.Fatalf("%s sent with %d commands unanswered, want fewer than 100", c.verb, c.unanswered)
		}
	}
}

// TestNoPipeliningWhenNotOffered: without PIPELINING in the EHLO reply every command waits for
// the previous reply.
func TestNoPipeliningWhenNotOffered(t *testing.T) {
	sink := smtptest.Start(t)
	tp, addr := startTap(t, sink.Addr(), false, true)
	s := senderTo(t, addr)
	for i := range 2 {
		if got := s.Send(context.Background(), "info@kanzlei.example", twoRcpts, []byte(msg)); got.Outcome != outbox.OutcomeSent {
			t.Fatalf("send %d = %+v", i, got)
		}
	}
	trs := tp.transactions()
	if len(trs) != 2 {
		t.Fatalf("transactions on the wire: %q", trs)
	}
	for i, tr := range trs {
		if tr != "MAIL/0 RCPT/0 RCPT/0 DATA/0" {
			t.Errorf("transaction %d on the wire: %s, want MAIL/0 RCPT/0 RCPT/0 DATA/0 (one at a time)", i, tr)
		}
	}
	if n := len(sink.Messages()); n != 2 {
		t.Errorf("sink recorded %d messages", n)
	}
}

// TestOutcomesBothWays drives every reply the sink can give at MAIL, RCPT and after the data
// (a hang and a dropped connection after the data included) through a real SMTP conversation,
// once pipelined and once with a relay without PIPELINING: the outcome and the reply code are
// the same, whichever way the commands went.
func TestOutcomesBothWays(t *testing.T) {
	tests := []struct {
		behavior smtptest.Behavior
		want     outbox.Outcome
		code     int
	}{
		{smtptest.Accept, outbox.OutcomeSent, 250},
		{smtptest.ServiceUnavailable, outbox.OutcomeTemporary, 421},
		{smtptest.PermFailMail, outbox.OutcomePermanent, 550},
		{smtptest.TempFailRcpt, outbox.OutcomeTemporary, 451},
		{smtptest.MailboxFull, outbox.OutcomeTemporary, 452},
		{smtptest.PermFailRcpt, outbox.OutcomePermanent, 550},
		{smtptest.ServiceUnavailableRcpt, outbox.OutcomeTemporary, 421},
		{smtptest.TempFailData, outbox.OutcomeTemporary, 451},
		{smtptest.InsufficientStorageData, outbox.OutcomeTemporary, 452},
		{smtptest.ServiceUnavailableData, outbox.OutcomeTemporary, 421},
		{smtptest.MessageTooBig, outbox.OutcomePermanent, 552},
		{smtptest.PermFailData, outbox.OutcomePermanent, 554},
		{smtptest.Hang, outbox.OutcomeUnknown, 0},
		{smtptest.Drop, outbox.OutcomeUnknown, 0},
	}
	for _, pipelined := range []bool{true, false} {
		for _, tt := range tests {
			t.Run(tt.behavior.String()+map[bool]string{true: "/pipelined", false: "/stepwise"}[pipelined], func(t *testing.T) {
				sink := smtptest.Start(t)
				sink.SetBehavior(tt.behavior)
				_, addr := startTap(t, sink.Addr(), false, !pipelined)
				s := senderTo(t, addr)
				got := s.Send(context.Background(), "info@kanzlei.example", twoRcpts, []byte(msg))
				if got.Outcome != tt.want || got.Code != tt.code {
					t.Errorf("Send = %+v, want outcome %d code %d", got, tt.want, tt.code)
				}
				if n := len(sink.Messages()); (tt.want == outbox.OutcomeSent) != (n == 1) {
					t.Errorf("sink recorded %d messages", n)
				}
				// Whatever happened, the sender is usable for the next message.
				sink.SetBehavior(smtptest.Accept)
				if got := s.Send(context.Background(), "info@kanzlei.example", twoRcpts, []byte(msg)); got.Outcome != outbox.OutcomeSent {
					t.Errorf("the next send = %+v", got)
				}
			})
		}
	}
}

// TestOneRecipientRefused: when the relay refuses one recipient and accepts the other, DATA is
// accepted in the pipelined group, but the message is not sent to the rest: the attempt fails
// with the refusal and nothing is delivered (a recipient is never dropped silently).
func TestOneRecipientRefused(t *testing.T) {
	for _, pipelined := range []bool{true, false} {
		sink := smtptest.Start(t)
		sink.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
			if len(env.To) > 0 && env.To[len(env.To)-1] == "partner@example.com" {
				return smtptest.PermFailRcpt
			}
			return smtptest.Accept
		})
		_, addr := startTap(t, sink.Addr(), false, !pipelined)
		got := senderTo(t, addr).Send(context.Background(), "info@kanzlei.example", twoRcpts, []byte(msg))
		if got.Outcome != outbox.OutcomePermanent || got.Code != 550 || got.Enhanced != "5.1.1" {
			t.Errorf("pipelined %v: Send = %+v, want a permanent 550 5.1.1", pipelined, got)
		}
		if n := len(sink.Messages()); n != 0 {
			t.Errorf("pipelined %v: sink recorded %d messages, want none", pipelined, n)
		}
	}
}

// TestTLS: STARTTLS against a relay that offers (or requires) it, implicit TLS against one that
// speaks TLS from the first byte, and STARTTLS asked of a relay that does not offer it, which
// fails without sending anything in plain text.
func TestTLS(t *testing.T) {
	tests := []struct {
		name string
		opt  smtptest.Option
		mode smtp.TLSMode
		sent bool
	}{
		{"STARTTLS offered", smtptest.WithSTARTTLS(), smtp.TLSStartTLS, true},
		{"STARTTLS required", smtptest.WithRequireTLS(), smtp.TLSStartTLS, true},
		{"implicit", smtptest.WithImplicitTLS(), smtp.TLSImplicit, true},
		{"STARTTLS not offered", nil, smtp.TLSStartTLS, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var opts []smtptest.Option
			if tt.opt != nil {
				opts = append(opts, tt.opt)
			}
			sink := smtptest.Start(t, opts...)
			host, port, _ := net.SplitHostPort(sink.Addr())
			p, _ := strconv.Atoi(port)
			s := smtp.New(smtp.Config{Host: host, Port: p, TLS: tt.mode, TLSConfig: sink.ClientTLSConfig(), CommandTimeout: 5 * time.Second})
			t.Cleanup(s.Close)
			for i := range 2 { // the second one on the pooled TLS connection
				got := s.Send(context.Background(), "info@kanzlei.example", twoRcpts, []byte(msg))
				if (got.Outcome == outbox.OutcomeSent) != tt.sent {
					t.Fatalf("send %d = %+v, want sent %v", i, got, tt.sent)
				}
				if !tt.sent && !strings.Contains(got.Message, "STARTTLS") {
					t.Errorf("message %q does not name STARTTLS", got.Message)
				}
			}
			msgs := sink.Messages()
			if !tt.sent {
				if len(msgs) != 0 {
					t.Errorf("sink recorded %d messages", len(msgs))
				}
				return
			}
			if len(msgs) != 2 || !msgs[0].TLS || !msgs[1].TLS {
				t.Errorf("sink recorded %d messages, TLS: %v", len(msgs), func() []bool {
					var b []bool
					for _, m := range msgs {
						b = append(b, m.TLS)
					}
					return b
				}())
			}
		})
	}
}

// TestDotStuffing: lines that begin with a dot, a lone "." line, a message without a final
// line break and a message larger than one write chunk arrive exactly as built.
func TestDotStuffing(t *testing.T) {
	sink := smtptest.Start(t)
	s := senderTo(t, sink.Addr())
	body := "From: info@kanzlei.example\r\nTo: client@example.com\r\nSubject: Punkte\r\n\r\n.\r\n..zwei\r\n.eins\r\nEnde ohne Umbruch"
	if got := s.Send(context.Background(), "info@kanzlei.example", []string{"client@example.com"}, []byte(body)); got.Outcome != outbox.OutcomeSent {
		t.Fatalf("Send = %+v", got)
	}
	msgs := sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("sink recorded %d messages", len(msgs))
	}
	if want := body + "\r\n"; string(msgs[0].Data) != want {
		t.Errorf("received %q, want %q", msgs[0].Data, want)
	}

	// 256 KiB of 64-byte lines that all begin with a dot: the message is written in 64 KiB
	// chunks, and a line starts exactly at each chunk's boundary.
	line := "." + strings.Repeat("x", 61) + "\r\n"
	big := strings.Repeat(line, 4096)
	if got := s.Send(context.Background(), "info@kanzlei.example", []string{"client@example.com"}, []byte(big)); got.Outcome != outbox.OutcomeSent {
		t.Fatalf("Send of 256 KiB = %+v", got)
	}
	if msgs := sink.Messages(); len(msgs) != 2 || string(msgs[1].Data) != big {
		t.Errorf("the 256 KiB message did not arrive as sent")
	}
}

// TestReplyLineTooLong: a relay that sends a reply line without end is cut off, and the attempt
// is temporary, not a client that buffers forever.
func TestReplyLineTooLong(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.WriteString(c, "220 "+strings.Repeat("x", 100_000))
		_, _ = io.Copy(io.Discard, c)
	}()
	got := senderTo(t, l.Addr().String()).Send(context.Background(), "info@kanzlei.example", twoRcpts, []byte(msg))
	if got.Outcome != outbox.OutcomeTemporary || !strings.Contains(got.Message, "too long") {
		t.Errorf("Send = %+v, want temporary, the reply line too long", got)
	}
}
