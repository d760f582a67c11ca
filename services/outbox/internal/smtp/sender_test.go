package smtp_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/smtptest"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

const msg = "From: info@kanzlei.example\r\nTo: client@example.com\r\nSubject: Termin\r\nMessage-ID: <e1@kanzlei.example>\r\n\r\nHallo\r\n"

func sender(t *testing.T, sink *smtptest.Sink) *smtp.Sender {
	t.Helper()
	host, port, err := net.SplitHostPort(sink.Addr())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	s := smtp.New(smtp.Config{Host: host, Port: p, TLS: smtp.TLSNone, CommandTimeout: 2 * time.Second, SubmitTimeout: 300 * time.Millisecond})
	t.Cleanup(s.Close)
	return s
}

// TestOutcomes drives every reply the sink can give through a real SMTP conversation.
func TestOutcomes(t *testing.T) {
	tests := []struct {
		behavior smtptest.Behavior
		want     outbox.Outcome
		code     int
	}{
		{smtptest.Accept, outbox.OutcomeSent, 250},
		{smtptest.ServiceUnavailable, outbox.OutcomeTemporary, 421},
		{smtptest.TempFailRcpt, outbox.OutcomeTemporary, 451},
		{smtptest.MailboxFull, outbox.OutcomeTemporary, 452},
		{smtptest.TempFailData, outbox.OutcomeTemporary, 451},
		{smtptest.PermFailRcpt, outbox.OutcomePermanent, 550},
		{smtptest.MessageTooBig, outbox.OutcomePermanent, 552},
		{smtptest.PermFailData, outbox.OutcomePermanent, 554},
		{smtptest.Hang, outbox.OutcomeUnknown, 0},
		{smtptest.Drop, outbox.OutcomeUnknown, 0},
	}
	for _, tt := range tests {
		t.Run(tt.behavior.String(), func(t *testing.T) {
			sink := smtptest.Start(t)
			sink.SetBehavior(tt.behavior)
			got := sender(t, sink).Send(context.Background(), "info@kanzlei.example", []string{"client@example.com"}, []byte(msg))
			if got.Outcome != tt.want || got.Code != tt.code {
				t.Errorf("Send = %+v, want outcome %d code %d", got, tt.want, tt.code)
			}
			if n := len(sink.Messages()); (tt.want == outbox.OutcomeSent) != (n == 1) {
				t.Errorf("sink recorded %d messages", n)
			}
		})
	}
}

func TestConnectionIsReusedAndRecovers(t *testing.T) {
	sink := smtptest.Start(t)
	s := sender(t, sink)
	ctx := context.Background()
	for i := range 3 {
		if got := s.Send(ctx, "info@kanzlei.example", []string{"client@example.com"}, []byte(msg)); got.Outcome != outbox.OutcomeSent {
			t.Fatalf("send %d = %+v", i, got)
		}
	}
	// A 421 closes the relay's side; the next send must dial again, not fail on the dead one.
	sink.SetBehavior(smtptest.ServiceUnavailable)
	if got := s.Send(ctx, "info@kanzlei.example", []string{"client@example.com"}, []byte(msg)); got.Outcome != outbox.OutcomeTemporary {
		t.Fatalf("during 421: %+v", got)
	}
	sink.SetBehavior(smtptest.Accept)
	if got := s.Send(ctx, "info@kanzlei.example", []string{"client@example.com"}, []byte(msg)); got.Outcome != outbox.OutcomeSent {
		t.Fatalf("after 421: %+v", got)
	}
	if n := len(sink.Messages()); n != 4 {
		t.Errorf("sink recorded %d messages, want 4", n)
	}
}

func TestRelayDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr)
	l.Close() // nothing listens there now
	s := smtp.New(smtp.Config{Host: "127.0.0.1", Port: addr.Port, TLS: smtp.TLSNone, CommandTimeout: time.Second})
	if got := s.Send(context.Background(), "a@b.example", []string{"c@d.example"}, []byte(msg)); got.Outcome != outbox.OutcomeTemporary {
		t.Errorf("refused connection = %+v, want temporary", got)
	}
}

// TestAuth: PLAIN and LOGIN against a sink that requires credentials; a wrong password is a
// permanent 535, and a secret that cannot be read is temporary (an admin can fix the file).
func TestAuth(t *testing.T) {
	sink := smtptest.Start(t, smtptest.WithAuth("kanzlei", "s3cret"))
	host, port, _ := net.SplitHostPort(sink.Addr())
	p, _ := strconv.Atoi(port)
	send := func(mech smtp.AuthMechanism, secret func() (string, error)) smtp.Result {
		s := smtp.New(smtp.Config{Host: host, Port: p, TLS: smtp.TLSNone, CommandTimeout: 2 * time.Second, Auth: mech, Username: "kanzlei", Secret: secret})
		defer s.Close()
		return s.Send(context.Background(), "info@kanzlei.example", []string{"client@example.com"}, []byte(msg))
	}
	good := func() (string, error) { return "s3cret", nil }
	for _, mech := range []smtp.AuthMechanism{smtp.AuthPlain, smtp.AuthLogin} {
		if r := send(mech, good); r.Outcome != outbox.OutcomeSent {
			t.Errorf("mechanism %d: %+v", mech, r)
		}
	}
	if r := send(smtp.AuthPlain, func() (string, error) { return "falsch", nil }); r.Outcome != outbox.OutcomePermanent || r.Code != 535 {
		t.Errorf("wrong password: %+v, want a permanent 535", r)
	}
	if r := send(smtp.AuthLogin, func() (string, error) { return "", errors.New(`secret reference "file:/run/x": no such file`) }); r.Outcome != outbox.OutcomeTemporary {
		t.Errorf("unreadable secret: %+v, want temporary", r)
	}
	if r := send(0, nil); r.Outcome != outbox.OutcomePermanent {
		t.Errorf("no credentials: %+v, want the sink's refusal", r)
	}
	if n := len(sink.Messages()); n != 2 {
		t.Errorf("%d messages delivered, want 2", n)
	}
}
