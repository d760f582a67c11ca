package smtp_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/secretref"
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

// authSender returns a Sender that authenticates to sink with mech, user "kanzlei" and secret.
func authSender(t *testing.T, addr string, mech smtp.AuthMechanism, secret func() (string, error)) *smtp.Sender {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	s := smtp.New(smtp.Config{Host: host, Port: p, TLS: smtp.TLSNone, CommandTimeout: 2 * time.Second, Auth: mech, Username: "kanzlei", Secret: secret})
	t.Cleanup(s.Close)
	return s
}

func fixed(secret string) func() (string, error) {
	return func() (string, error) { return secret, nil }
}

// TestAuth: PLAIN and LOGIN against a sink that requires credentials (the sink implements both
// mechanisms' server side); a wrong password is a permanent 535, and a secret that cannot be
// read is temporary (an admin can fix the file). No message names a secret.
func TestAuth(t *testing.T) {
	tests := []struct {
		name    string
		mech    smtp.AuthMechanism
		secret  func() (string, error)
		outcome outbox.Outcome
		code    int
	}{
		{"PLAIN", smtp.AuthPlain, fixed("s3cret"), outbox.OutcomeSent, 250},
		{"LOGIN", smtp.AuthLogin, fixed("s3cret"), outbox.OutcomeSent, 250},
		{"PLAIN, wrong password", smtp.AuthPlain, fixed("falsch"), outbox.OutcomePermanent, 535},
		{"LOGIN, wrong password", smtp.AuthLogin, fixed("falsch"), outbox.OutcomePermanent, 535},
		{"secret unreadable", smtp.AuthLogin, func() (string, error) {
			return "", errors.New(`secret reference "file:/run/x": no such file or directory`)
		}, outbox.OutcomeTemporary, 0},
		{"no secret source", smtp.AuthPlain, nil, outbox.OutcomeTemporary, 0},
		// The relay insists at MAIL (go-smtp says 502 5.7.0, others 530): the connector is
		// misconfigured, and mail fails for good.
		{"no AUTH configured", smtp.AuthNone, nil, outbox.OutcomePermanent, 502},
		{"mechanism not set", 0, nil, outbox.OutcomePermanent, 502},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := smtptest.Start(t, smtptest.WithAuth("kanzlei", "s3cret"))
			got := authSender(t, sink.Addr(), tt.mech, tt.secret).Send(context.Background(), "info@kanzlei.example", []string{"client@example.com"}, []byte(msg))
			if got.Outcome != tt.outcome || got.Code != tt.code {
				t.Errorf("Send = %+v, want outcome %d code %d", got, tt.outcome, tt.code)
			}
			if strings.Contains(got.Message, "s3cret") || strings.Contains(got.Message, "falsch") {
				t.Errorf("message %q contains a secret", got.Message)
			}
			if tt.outcome == outbox.OutcomeTemporary && !strings.Contains(got.Message, "AUTH") {
				t.Errorf("message %q does not say that AUTH could not be attempted", got.Message)
			}
			if n := len(sink.Messages()); (tt.outcome == outbox.OutcomeSent) != (n == 1) {
				t.Errorf("sink recorded %d messages", n)
			}
		})
	}
}

// TestAuthTemporaryFailure: a relay whose authentication backend is down answers 454 (RFC
// 4954), which is retried, not failed.
func TestAuthTemporaryFailure(t *testing.T) {
	srv := gosmtp.NewServer(gosmtp.BackendFunc(func(*gosmtp.Conn) (gosmtp.Session, error) { return authOutage{}, nil }))
	srv.Domain, srv.AllowInsecureAuth = "relay.localhost", true
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })

	for _, mech := range []smtp.AuthMechanism{smtp.AuthPlain, smtp.AuthLogin} {
		got := authSender(t, l.Addr().String(), mech, fixed("s3cret")).Send(context.Background(), "info@kanzlei.example", []string{"client@example.com"}, []byte(msg))
		if got.Outcome != outbox.OutcomeTemporary || got.Code != 454 || got.Enhanced != "4.7.0" {
			t.Errorf("mechanism %d: Send = %+v, want a temporary 454 4.7.0", mech, got)
		}
	}
}

// authOutage is a relay session whose AUTH always fails temporarily.
type authOutage struct{}

func (authOutage) AuthMechanisms() []string { return []string{sasl.Plain, sasl.Login} }
func (authOutage) Auth(string) (sasl.Server, error) {
	// go-smtp answers an error that is not an SMTPError with 454 4.7.0.
	return sasl.NewPlainServer(func(string, string, string) error { return errors.New("directory unreachable") }), nil
}
func (authOutage) Mail(string, *gosmtp.MailOptions) error { return gosmtp.ErrAuthRequired }
func (authOutage) Rcpt(string, *gosmtp.RcptOptions) error { return gosmtp.ErrAuthRequired }
func (authOutage) Data(io.Reader) error                   { return gosmtp.ErrAuthRequired }
func (authOutage) Reset()                                 {}
func (authOutage) Logout() error                          { return nil }

// TestAuthSecretRotation: the secret is read when a connection is made, not when the sender is
// built, so fixing or rotating the file takes effect without restarting anything; an open
// connection is reused without reading it again.
func TestAuthSecretRotation(t *testing.T) {
	sink := smtptest.Start(t, smtptest.WithAuth("kanzlei", "s3cret"))
	file := filepath.Join(t.TempDir(), "smtp-password")
	if err := os.WriteFile(file, []byte("old-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reads := 0
	s := authSender(t, sink.Addr(), smtp.AuthPlain, func() (string, error) {
		reads++
		return secretref.Resolve("file:"+file, nil, nil)
	})
	send := func() smtp.Result {
		return s.Send(context.Background(), "info@kanzlei.example", []string{"client@example.com"}, []byte(msg))
	}
	if got := send(); got.Outcome != outbox.OutcomePermanent || got.Code != 535 {
		t.Fatalf("with the old password: %+v, want a permanent 535", got)
	}
	if err := os.WriteFile(file, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if got := send(); got.Outcome != outbox.OutcomeSent {
			t.Fatalf("send %d after the rotation: %+v", i, got)
		}
	}
	if reads != 2 {
		t.Errorf("secret read %d times, want 2 (one per connection)", reads)
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	s.Close() // the next send needs a new connection, and the file is gone
	if got := send(); got.Outcome != outbox.OutcomeTemporary || !strings.Contains(got.Message, file) {
		t.Errorf("with the file gone: %+v, want temporary, naming the reference", got)
	}
}

// TestInternationalisedAddresses: an envelope with a non-ASCII address goes with SMTPUTF8 where
// the relay offers it (RFC 6531), and an ASCII one without; a relay that does not offer it gets
// no transaction at all, and the outcome is permanent with 5.6.7, not a retry that cannot help.
func TestInternationalisedAddresses(t *testing.T) {
	ctx := context.Background()
	utf8Sink := smtptest.Start(t, smtptest.WithSMTPUTF8())
	s := sender(t, utf8Sink)
	if got := s.Send(ctx, "info@kanzlei.example", []string{"jörg@müller.example"}, []byte(msg)); got.Outcome != outbox.OutcomeSent {
		t.Fatalf("to jörg@müller.example through a relay with SMTPUTF8: %+v", got)
	}
	if got := s.Send(ctx, "info@kanzlei.example", []string{"client@example.com"}, []byte(msg)); got.Outcome != outbox.OutcomeSent {
		t.Fatalf("an ASCII envelope: %+v", got)
	}
	ms := utf8Sink.Messages()
	if len(ms) != 2 || !ms[0].UTF8 || ms[0].To[0] != "jörg@müller.example" || ms[1].UTF8 {
		t.Errorf("the relay saw %+v; want SMTPUTF8 on the first message only, the address unchanged", ms)
	}

	plain := smtptest.Start(t)
	got := sender(t, plain).Send(ctx, "jörg@kanzlei.example", []string{"client@example.com"}, []byte(msg))
	if got.Outcome != outbox.OutcomePermanent || got.Enhanced != "5.6.7" || !strings.Contains(got.Message, "SMTPUTF8") {
		t.Errorf("from jörg@ through a relay without SMTPUTF8 = %+v; want permanent, 5.6.7, naming SMTPUTF8", got)
	}
	if n := len(plain.Messages()); n != 0 {
		t.Errorf("the relay without SMTPUTF8 received %d messages", n)
	}
}
