package smtptest_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/smtptest"
)

const waitTimeout = 5 * time.Second

const body = "Subject: hi\r\n\r\nhello\r\n"

// dial connects a go-smtp client to the sink and says EHLO.
func dial(t *testing.T, s *smtptest.Sink) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("Hello: %v", err)
	}
	return c
}

// send runs MAIL, RCPT for every recipient, DATA; it returns the step that failed and its error.
func send(c *smtp.Client, from string, to []string, data string) (step string, err error) {
	if err := c.Mail(from, nil); err != nil {
		return "MAIL", err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return "RCPT", err
		}
	}
	w, err := c.Data()
	if err != nil {
		return "DATA", err
	}
	if _, err := io.WriteString(w, data); err != nil {
		return "DATA-write", err
	}
	if err := w.Close(); err != nil {
		return "DATA-end", err
	}
	return "", nil
}

func smtpCode(t *testing.T, err error) int {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T) is not an *smtp.SMTPError", err, err)
	}
	return se.Code
}

func TestAcceptRecordsMessage(t *testing.T) {
	s := smtptest.Start(t)
	c := dial(t, s)
	to := []string{"a@example.org", "b@example.org"}
	if step, err := send(c, "sender@example.com", to, body); err != nil {
		t.Fatalf("send failed at %s: %v", step, err)
	}

	msgs := s.WaitForMessages(t, 1, waitTimeout)
	if got, want := len(msgs), 1; got != want {
		t.Fatalf("messages = %d, want %d", got, want)
	}
	m := msgs[0]
	if got, want := m.From, "sender@example.com"; got != want {
		t.Errorf("From = %q, want %q", got, want)
	}
	if got, want := m.To, to; !slices.Equal(got, want) {
		t.Errorf("To = %q, want %q", got, want)
	}
	if got, want := string(m.Data), body; got != want {
		t.Errorf("Data = %q, want %q", got, want)
	}
	if m.Received.IsZero() {
		t.Error("Received is zero")
	}

	// Messages returns a copy: mutating it must not change the sink's record.
	msgs[0].To[0] = "mutated"
	if got, want := s.Messages()[0].To[0], to[0]; got != want {
		t.Errorf("after mutating the copy, To[0] = %q, want %q", got, want)
	}
}

func TestFaultBehaviors(t *testing.T) {
	tests := []struct {
		behavior smtptest.Behavior
		wantStep string
		wantCode int
	}{
		{smtptest.TempFailRcpt, "RCPT", 451},
		{smtptest.TempFailData, "DATA-end", 451},
		{smtptest.ServiceUnavailable, "MAIL", 421},
		{smtptest.MailboxFull, "RCPT", 452},
		{smtptest.PermFailRcpt, "RCPT", 550},
		{smtptest.MessageTooBig, "DATA-end", 552},
		{smtptest.PermFailData, "DATA-end", 554},
		{smtptest.ServiceUnavailableRcpt, "RCPT", 421},
		{smtptest.ServiceUnavailableData, "DATA-end", 421},
		{smtptest.InsufficientStorageData, "DATA-end", 452},
		{smtptest.PermFailMail, "MAIL", 550},
	}
	for _, tt := range tests {
		t.Run(tt.behavior.String(), func(t *testing.T) {
			s := smtptest.Start(t)
			s.SetBehavior(tt.behavior)
			c := dial(t, s)

			step, err := send(c, "sender@example.com", []string{"rcpt@example.org"}, body)
			if err == nil {
				t.Fatal("send succeeded, want an error")
			}
			if got, want := step, tt.wantStep; got != want {
				t.Errorf("failed at step %s, want %s (err %v)", got, want, err)
			}
			if got, want := smtpCode(t, err), tt.wantCode; got != want {
				t.Errorf("reply code = %d, want %d (err %v)", got, want, err)
			}
			if got := len(s.Messages()); got != 0 {
				t.Errorf("recorded %d messages, want 0", got)
			}
		})
	}
}

func TestServiceUnavailableClosesConnection(t *testing.T) {
	for _, b := range []smtptest.Behavior{smtptest.ServiceUnavailable, smtptest.ServiceUnavailableRcpt, smtptest.ServiceUnavailableData} {
		t.Run(b.String(), func(t *testing.T) {
			s := smtptest.Start(t)
			s.SetBehavior(b)
			c := dial(t, s)
			_, err := send(c, "sender@example.com", []string{"r@example.org"}, body)
			if got, want := smtpCode(t, err), 421; got != want {
				t.Fatalf("reply code = %d, want %d", got, want)
			}
			if err := c.Noop(); err == nil {
				t.Error("NOOP after 421 succeeded, want a connection error")
			}
		})
	}
}

func TestBehaviorChangesForFollowingMessages(t *testing.T) {
	s := smtptest.Start(t)
	c := dial(t, s)

	s.SetBehavior(smtptest.TempFailData)
	if _, err := send(c, "a@example.com", []string{"r@example.org"}, body); err == nil {
		t.Fatal("first send succeeded, want 451")
	}
	s.SetBehavior(smtptest.Accept)
	if step, err := send(c, "b@example.com", []string{"r@example.org"}, body); err != nil {
		t.Fatalf("second send failed at %s: %v", step, err)
	}
	msgs := s.WaitForMessages(t, 1, waitTimeout)
	if got, want := msgs[0].From, "b@example.com"; got != want {
		t.Errorf("From = %q, want %q", got, want)
	}
}

func TestHangTimesOutClient(t *testing.T) {
	s := smtptest.Start(t)
	s.SetBehavior(smtptest.Hang)

	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatalf("net.Dial: %v", err)
	}
	c := smtp.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	// go-smtp's client sets the connection deadline itself before reading each reply (it would
	// overwrite a SetReadDeadline made here), so the read deadline for the reply after the final
	// dot is configured through SubmissionTimeout.
	c.SubmissionTimeout = 200 * time.Millisecond
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("Hello: %v", err)
	}

	step, err := send(c, "sender@example.com", []string{"r@example.org"}, body)
	if got, want := step, "DATA-end"; got != want {
		t.Fatalf("failed at step %q, want %q (err %v)", got, want, err)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("error = %v (%T), want a net.Error timeout", err, err)
	}
	if got := len(s.Messages()); got != 0 {
		t.Errorf("recorded %d messages, want 0", got)
	}
}

func TestHangReleasedByClose(t *testing.T) {
	s := smtptest.Start(t)
	// The hook is consulted at MAIL, at the one RCPT and after DATA; the third call means the
	// body has been read and the session is about to hang.
	calls := 0
	hanging := make(chan struct{})
	s.SetHook(func(smtptest.Envelope) smtptest.Behavior {
		calls++ // one connection: the calls are sequential
		if calls == 3 {
			close(hanging)
		}
		return smtptest.Hang
	})
	c := dial(t, s)

	result := make(chan error, 1)
	go func() {
		_, err := send(c, "sender@example.com", []string{"r@example.org"}, body)
		result <- err
	}()
	select {
	case <-hanging:
	case err := <-result:
		t.Fatalf("send returned before the sink hung: %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("sink never reached the hang")
	}

	s.Close() // must not deadlock with the hung session
	s.Close() // idempotent

	select {
	case err := <-result:
		var se *smtp.SMTPError
		if err == nil || errors.As(err, &se) {
			t.Errorf("send after Close: err = %v, want a connection error without a reply", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("client still blocked after Close")
	}
}

func TestDropClosesWithoutReply(t *testing.T) {
	s := smtptest.Start(t)
	s.SetBehavior(smtptest.Drop)
	c := dial(t, s)

	step, err := send(c, "sender@example.com", []string{"r@example.org"}, body)
	if got, want := step, "DATA-end"; got != want {
		t.Fatalf("failed at step %q, want %q (err %v)", got, want, err)
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		t.Fatalf("got SMTP reply %d, want no reply", se.Code)
	}
	var ne net.Error
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.As(err, &ne) {
		t.Errorf("error = %v (%T), want io.EOF or a connection error", err, err)
	}
	if got := len(s.Messages()); got != 0 {
		t.Errorf("recorded %d messages, want 0", got)
	}
}

func TestRecordThenDropDeliversWithoutReply(t *testing.T) {
	s := smtptest.Start(t)
	s.SetBehavior(smtptest.RecordThenDrop)
	c := dial(t, s)

	step, err := send(c, "sender@example.com", []string{"r@example.org"}, body)
	if got, want := step, "DATA-end"; got != want {
		t.Fatalf("failed at step %q, want %q (err %v)", got, want, err)
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		t.Fatalf("got SMTP reply %d, want no reply", se.Code)
	}
	msgs := s.Messages()
	if len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "hello") {
		t.Fatalf("recorded %d messages, want the one sent: %v", len(msgs), msgs)
	}
}

func TestHookSeesTheStage(t *testing.T) {
	s := smtptest.Start(t)
	var mu sync.Mutex
	var stages []string
	s.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
		mu.Lock()
		defer mu.Unlock()
		stages = append(stages, fmt.Sprintf("%s %d", env.Stage, len(env.To)))
		return smtptest.Accept
	})
	c := dial(t, s)
	if step, err := send(c, "sender@example.com", []string{"a@example.org", "b@example.org"}, body); err != nil {
		t.Fatalf("%s: %v", step, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got, want := stages, []string{"MAIL 0", "RCPT 1", "RCPT 2", "DATA 2"}; !slices.Equal(got, want) {
		t.Errorf("the hook saw %q, want %q", got, want)
	}
}

func TestHookChoosesPerRecipient(t *testing.T) {
	s := smtptest.Start(t)
	s.SetBehavior(smtptest.PermFailData) // the hook must win over this
	s.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
		if len(env.To) == 0 {
			return smtptest.Accept
		}
		switch rcpt := env.To[len(env.To)-1]; {
		case strings.HasPrefix(rcpt, "unknown@"):
			return smtptest.PermFailRcpt
		case strings.HasPrefix(rcpt, "full@"):
			return smtptest.MailboxFull
		case strings.HasPrefix(rcpt, "busy@"):
			return smtptest.TempFailRcpt
		}
		return smtptest.Accept
	})
	c := dial(t, s)
	if err := c.Mail("sender@example.com", nil); err != nil {
		t.Fatalf("MAIL: %v", err)
	}

	tests := []struct {
		rcpt     string
		wantCode int // 0: accepted
	}{
		{"ok1@example.org", 0},
		{"unknown@example.org", 550},
		{"full@example.org", 452},
		{"busy@example.org", 451},
		{"ok2@example.org", 0},
	}
	for _, tt := range tests {
		t.Run(tt.rcpt, func(t *testing.T) {
			err := c.Rcpt(tt.rcpt, nil)
			if tt.wantCode == 0 {
				if err != nil {
					t.Errorf("RCPT: %v, want accepted", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("RCPT accepted, want %d", tt.wantCode)
			}
			if got, want := smtpCode(t, err), tt.wantCode; got != want {
				t.Errorf("RCPT code = %d, want %d", got, want)
			}
		})
	}

	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := io.WriteString(w, body); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("end of data: %v", err)
	}
	msgs := s.WaitForMessages(t, 1, waitTimeout)
	if got, want := msgs[0].To, []string{"ok1@example.org", "ok2@example.org"}; !slices.Equal(got, want) {
		t.Errorf("To = %q, want %q", got, want)
	}
}

func TestAuth(t *testing.T) {
	tests := []struct {
		name     string
		auth     sasl.Client // nil: no AUTH
		wantStep string      // "" means delivered
		wantCode int
	}{
		{"no auth rejects MAIL", nil, "MAIL", 502},
		{"wrong password", sasl.NewPlainClient("", "user", "wrong"), "AUTH", 535},
		{"valid credentials", sasl.NewPlainClient("", "user", "secret"), "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.WithAuth("user", "secret"))
			c := dial(t, s)
			if ok, _ := c.Extension("AUTH"); !ok {
				t.Fatal("AUTH not advertised")
			}

			step, err := "", error(nil)
			if tt.auth != nil {
				if err = c.Auth(tt.auth); err != nil {
					step = "AUTH"
				}
			}
			if err == nil {
				step, err = send(c, "sender@example.com", []string{"r@example.org"}, body)
			}

			if got, want := step, tt.wantStep; got != want {
				t.Fatalf("failed at step %q, want %q (err %v)", got, want, err)
			}
			if tt.wantCode == 0 {
				if got, want := len(s.WaitForMessages(t, 1, waitTimeout)), 1; got != want {
					t.Errorf("messages = %d, want %d", got, want)
				}
				return
			}
			if got, want := smtpCode(t, err), tt.wantCode; got != want {
				t.Errorf("code = %d, want %d (err %v)", got, want, err)
			}
			if got := len(s.Messages()); got != 0 {
				t.Errorf("recorded %d messages, want 0", got)
			}
		})
	}
}

func TestMaxMessageBytes(t *testing.T) {
	const limit = 64
	tests := []struct {
		name     string
		size     int
		wantCode int // 0: accepted
	}{
		{"under limit", limit / 2, 0},
		{"over limit", 4 * limit, 552},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := smtptest.Start(t, smtptest.WithMaxMessageBytes(limit))
			c := dial(t, s)
			if size, ok := c.MaxMessageSize(); !ok || size != limit {
				t.Errorf("advertised SIZE = %d, %v; want %d, true", size, ok, limit)
			}
			data := strings.Repeat("x", tt.size-2) + "\r\n"

			step, err := send(c, "sender@example.com", []string{"r@example.org"}, data)
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("send failed at %s: %v", step, err)
				}
				if got, want := string(s.WaitForMessages(t, 1, waitTimeout)[0].Data), data; got != want {
					t.Errorf("Data = %q, want %q", got, want)
				}
				return
			}
			if got, want := step, "DATA-end"; got != want {
				t.Fatalf("failed at step %q, want %q (err %v)", got, want, err)
			}
			if got, want := smtpCode(t, err), tt.wantCode; got != want {
				t.Errorf("code = %d, want %d (err %v)", got, want, err)
			}
			if got := len(s.Messages()); got != 0 {
				t.Errorf("recorded %d messages, want 0", got)
			}
		})
	}
}

func TestSTARTTLS(t *testing.T) {
	tests := []struct {
		name     string
		opt      smtptest.Option
		startTLS bool
		wantStep string // "" means delivered
		wantCode int
	}{
		{"offered, used", smtptest.WithSTARTTLS(), true, "", 0},
		{"offered, plain text still accepted", smtptest.WithSTARTTLS(), false, "", 0},
		{"required, used", smtptest.WithRequireTLS(), true, "", 0},
		{"required, not used", smtptest.WithRequireTLS(), false, "MAIL", 530},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := smtptest.Start(t, tt.opt)
			c := dial(t, s)
			if ok, _ := c.Extension("STARTTLS"); !ok {
				t.Fatal("STARTTLS not advertised")
			}
			if tt.startTLS {
				var err error
				if c, err = smtp.DialStartTLS(s.Addr(), s.ClientTLSConfig()); err != nil {
					t.Fatalf("DialStartTLS: %v", err)
				}
				t.Cleanup(func() { c.Close() })
				if _, ok := c.TLSConnectionState(); !ok {
					t.Fatal("connection is not TLS after STARTTLS")
				}
			}
			step, err := send(c, "sender@example.com", []string{"r@example.org"}, body)
			if got, want := step, tt.wantStep; got != want {
				t.Fatalf("failed at step %q, want %q (err %v)", got, want, err)
			}
			if tt.wantCode != 0 {
				if got, want := smtpCode(t, err), tt.wantCode; got != want {
					t.Errorf("code = %d, want %d", got, want)
				}
				return
			}
			if got, want := s.WaitForMessages(t, 1, waitTimeout)[0].TLS, tt.startTLS; got != want {
				t.Errorf("Message.TLS = %v, want %v", got, want)
			}
		})
	}
}

func TestSTARTTLSRejectsUntrustingClient(t *testing.T) {
	s := smtptest.Start(t, smtptest.WithSTARTTLS())
	// The system roots do not know the in-memory certificate.
	c, err := smtp.DialStartTLS(s.Addr(), &tls.Config{MinVersion: tls.VersionTLS12})
	if err == nil {
		defer c.Close()
		err = c.Noop() // the handshake happens with the first command after STARTTLS
	}
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("STARTTLS without the sink's roots: err = %v, want a certificate verification error", err)
	}
}

func TestNoSTARTTLSByDefault(t *testing.T) {
	s := smtptest.Start(t)
	c := dial(t, s)
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised without WithSTARTTLS")
	}
	if s.ClientTLSConfig() != nil {
		t.Error("ClientTLSConfig() != nil without WithSTARTTLS")
	}
}

// TestConnectionLimitRefusesTheOneTooMany: with a limit of two, a third connection open at once
// gets 421 and is counted; once one closes, the next is served.
func TestConnectionLimitRefusesTheOneTooMany(t *testing.T) {
	s := smtptest.Start(t, smtptest.WithConnectionLimit(2))
	a, b := dial(t, s), dial(t, s)
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	_ = c.Close()
	if err != nil || !strings.HasPrefix(line, "421 4.7.0") {
		t.Fatalf("third connection got %q (%v), want 421 4.7.0", line, err)
	}
	if s.RefusedConnections() != 1 || s.PeakConnections() != 2 {
		t.Fatalf("refused %d, peak %d; want 1 and 2", s.RefusedConnections(), s.PeakConnections())
	}
	_ = a.Quit()
	poll.Eventually(t, "the first connection to be counted closed", func() bool { return s.OpenConnections() == 1 })
	d := dial(t, s)
	if _, err := send(d, "a@example.com", []string{"b@example.com"}, body); err != nil {
		t.Fatalf("send on a connection within the limit: %v", err)
	}
	_, _ = b.Quit(), d.Quit()
	if s.PeakConnections() != 2 {
		t.Errorf("peak %d, want 2", s.PeakConnections())
	}
}
