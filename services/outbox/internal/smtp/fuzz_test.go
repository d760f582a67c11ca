package smtp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
)

// scriptConn is a relay that answers with a fixed script, whatever the client writes, and keeps
// what the client wrote.
type scriptConn struct {
	r       *bytes.Reader
	written bytes.Buffer
}

func (c *scriptConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)      { return c.written.Write(p) }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// scriptReply is one reply of a script as RFC 5321 reads it.
type scriptReply struct {
	code int
	text string
}

// readScript reads a relay's output the way RFC 5321 defines it, independently of the client's
// reader: line by line, a line over maxReplyLine octets or the continuation line that makes a
// reply longer than maxReplyLines lines ending the readable part, then replies until the end or
// the first malformed one.
func readScript(script []byte) []scriptReply {
	end, more := 0, 0
	for end < len(script) {
		i := bytes.IndexByte(script[end:], '\n')
		line := script[end:]
		if i >= 0 {
			line = script[end : end+i]
		}
		if len(line) > maxReplyLine {
			break
		}
		if i >= 0 {
			if len(line) >= 4 && line[3] == '-' {
				more++
			} else {
				more = 0
			}
			if more >= maxReplyLines {
				break
			}
		}
		if i < 0 {
			end = len(script)
			break
		}
		end += i + 1
	}
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(script[:end])))
	var out []scriptReply
	for {
		code, text, err := r.ReadResponse(0)
		if err != nil {
			return out
		}
		out = append(out, scriptReply{code, text})
	}
}

// marker is in the body of the message sent: it is on the wire once the message was written.
const marker = "FUZZ-BODY-7f3a"

// FuzzSend: a transaction against a relay that answers with any bytes at all. The client never
// panics or hangs, and the outcome is the one RFC 5321 and the outbox's rules give for the
// replies as RFC 5321 reads them (readScript, which knows nothing of the client's reader):
//   - the greeting must be 220, EHLO 2xx (HELO 2xx after a 500 or 502 to EHLO), and PIPELINING
//     is used exactly when a line after the first of EHLO's reply offers it;
//   - the message is written only when MAIL was accepted (2xx), every RCPT (2xx) and DATA (354):
//     a refused recipient is never dropped silently;
//   - Sent only for a 2xx to the message; Unknown only when the message was written and no
//     readable reply came; a refusal is Temporary for 4xx and Permanent otherwise, with its
//     code; no readable reply before the message is Temporary.
func FuzzSend(f *testing.F) {
	ehlo := "220 relay.example ESMTP\r\n250-relay.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n"
	f.Add(uint8(1), []byte(ehlo+"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 6159CC01B4\r\n"))
	f.Add(uint8(2), []byte(ehlo+"250 Ok\r\n550 5.1.1 No such user\r\n250 Ok\r\n354 Go ahead\r\n250 Ok\r\n"))
	f.Add(uint8(1), []byte(ehlo+"250 Ok\r\n250 Ok\r\n354 Go ahead\r\n"))
	f.Add(uint8(1), []byte(ehlo+"250 Ok\r\n250 Ok\r\n354 Go ahead\r\n451-4.3.0 Try\r\n451-4.3.0 again\r\n451 4.3.0 later\r\n"))
	f.Add(uint8(3), []byte("220 old.example\r\n502 5.5.2 What?\r\n250 old.example\r\n250 Ok\r\n250 Ok\r\n250 Ok\r\n250 Ok\r\n354 Go\r\n250 Ok\r\n"))
	f.Add(uint8(1), []byte("421 4.3.2 Service shutting down\r\n"))
	f.Add(uint8(1), []byte(ehlo+"250 Ok\r\n250 Ok\r\n354 Go ahead\r\n250 Ok\r\n"+strings.Repeat("x", maxReplyLine+1)+"\r\n"))
	f.Add(uint8(0), []byte("220 hi\r\n"+strings.Repeat("250-X\r\n", maxReplyLines)+"250 Ok\r\n"))
	f.Add(uint8(1), []byte(ehlo+"250 Ok\r\n250 Ok\r\n354 Go ahead\r\n25x Ok\r\n"))
	f.Add(uint8(1), []byte(ehlo+"250 Ok\r\n250 Ok\r\n250-Ok\r\n354 Go ahead\r\n250 Ok\r\n"))
	f.Fuzz(func(t *testing.T, nrcpt uint8, script []byte) {
		rcpts := []string{"a@kunde.example", "b@kunde.example", "c@kunde.example"}[:1+nrcpt%3]
		msg := []byte("Subject: x\r\n\r\n" + marker + "\r\n.\r\n")
		nc := &scriptConn{r: bytes.NewReader(script)}
		c := newConn(nc, time.Second, time.Second)

		replies := readScript(script)
		next := 0
		get := func() (scriptReply, bool) {
			if next == len(replies) {
				return scriptReply{}, false
			}
			next++
			return replies[next-1], true
		}
		// The handshake as RFC 5321 has it.
		wantHandshake, wantPipelining := true, false
		if g, ok := get(); !ok || g.code != 220 {
			wantHandshake = false
		} else {
			e, ok := get()
			switch {
			case !ok:
				wantHandshake = false
			case e.code == 500 || e.code == 502:
				h, ok := get()
				wantHandshake = ok && h.code/100 == 2
			case e.code/100 != 2:
				wantHandshake = false
			default:
				for _, l := range strings.Split(e.text, "\n")[1:] {
					kw, _, _ := strings.Cut(l, " ")
					wantPipelining = wantPipelining || strings.EqualFold(kw, "PIPELINING")
				}
			}
		}
		if err := c.handshake("localhost", nil, nil); (err == nil) != wantHandshake {
			t.Fatalf("handshake: %v, want success %v", err, wantHandshake)
		} else if err != nil {
			if r := classify(err, false); r.Outcome != outbox.OutcomeTemporary && r.Outcome != outbox.OutcomePermanent {
				t.Fatalf("a failed handshake is %v", r.Outcome)
			}
			return
		}
		if c.pipelining != wantPipelining {
			t.Fatalf("pipelining %v, want %v", c.pipelining, wantPipelining)
		}

		// The transaction as RFC 5321 has it: MAIL, the RCPTs, DATA, then the message.
		var refusal *scriptReply
		lost := false
		for i := range len(rcpts) + 2 {
			r, ok := get()
			if !ok {
				lost = true
				break
			}
			accepted := r.code/100 == 2
			if i == len(rcpts)+1 {
				accepted = r.code == 354 // DATA
			}
			if !accepted {
				refusal = &r
				break
			}
		}
		wantWritten := !lost && refusal == nil
		var want outbox.Outcome
		wantCode := 0
		switch {
		case refusal != nil:
			want, wantCode = outbox.OutcomePermanent, refusal.code
		case lost:
			want = outbox.OutcomeTemporary
		default:
			if r, ok := get(); !ok {
				want = outbox.OutcomeUnknown
			} else {
				want, wantCode = outbox.OutcomePermanent, r.code
				if r.code/100 == 2 {
					want = outbox.OutcomeSent
				}
			}
		}
		if wantCode/100 == 4 {
			want = outbox.OutcomeTemporary
		}

		code, text, dataSent, err := c.send(context.Background(), "info@kanzlei.example", rcpts, msg, nil)
		written := bytes.Contains(nc.written.Bytes(), []byte(marker))
		if written != wantWritten || (written && !dataSent) {
			t.Fatalf("message written %v (dataSent %v), want %v; replies %+v", written, dataSent, wantWritten, replies)
		}
		got := outbox.OutcomeSent
		gotCode := code
		if err != nil {
			r := classify(err, dataSent)
			got, gotCode = r.Outcome, r.Code
			var re *replyError
			if errors.As(err, &re) && r.Message == "" && re.Message != "" {
				t.Fatalf("the relay's text %q is lost", re.Message)
			}
		} else if r := sent(code, text, time.Time{}); r.Code != code || !strings.HasPrefix(text, r.Enhanced) {
			t.Fatalf("sent(%d, %q) = %+v", code, text, r)
		}
		if got != want || gotCode != wantCode {
			t.Fatalf("outcome %v code %d (err %v), want %v code %d; replies %+v", got, gotCode, err, want, wantCode, replies)
		}
	})
}

// FuzzReplyRoundTrip: a refusal written as RFC 5321 and RFC 2034 have it, one or more lines, the
// enhanced code repeated on each, is read back as its code, its enhanced code once and its lines.
func FuzzReplyRoundTrip(f *testing.F) {
	f.Add(550, "5.1.1", "No such user\nhere")
	f.Add(451, "", "Try again later")
	f.Add(421, "4.3.2", "")
	f.Add(554, "5.7.1", "5.7.1 twice\n\nempty line before")
	f.Fuzz(func(t *testing.T, code int, enhanced, text string) {
		lines := strings.Split(text, "\n")
		if code < 400 || code > 599 || strings.ContainsAny(text, "\r") || (enhanced != "" && !isEnhanced(enhanced)) || enhanced != "" && enhanced[0] != byte('0'+code/100) {
			return
		}
		if first, _, _ := strings.Cut(lines[0], " "); enhanced == "" && isEnhanced(first) {
			return // without an enhanced code, a first word that looks like one is read as one
		}
		var b strings.Builder
		for i, l := range lines {
			if len(l)+len(enhanced)+6 > maxReplyLine {
				return
			}
			sep := "-"
			if i == len(lines)-1 {
				sep = " "
			}
			if enhanced != "" {
				l = enhanced + " " + l
			}
			fmt.Fprintf(&b, "%d%s%s\r\n", code, sep, l)
		}
		c := newConn(&scriptConn{r: bytes.NewReader([]byte(b.String()))}, time.Second, time.Second)
		gotCode, _, err := c.reply(2)
		var re *replyError
		if !errors.As(err, &re) {
			t.Fatalf("reply %q read as %d, %v", b.String(), gotCode, err)
		}
		if re.Code != code || re.Enhanced != enhanced || re.Message != text {
			t.Fatalf("reply %q read as %+v, want %d %q %q", b.String(), *re, code, enhanced, text)
		}
		r := classify(err, true)
		if want := map[int]outbox.Outcome{4: outbox.OutcomeTemporary, 5: outbox.OutcomePermanent}[code/100]; r.Outcome != want || r.Code != code || r.Enhanced != enhanced || r.Message != text {
			t.Fatalf("classified as %+v", r)
		}
	})
}
