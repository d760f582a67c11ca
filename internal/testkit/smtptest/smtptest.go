// Package smtptest runs an in-process SMTP sink (built on go-smtp) for tests of code that sends
// mail: it listens on a random loopback port, records every accepted message, and can be told at
// run time to answer with temporary or permanent failures, to hang, or to drop the connection, so
// that retry and error handling of an outbox can be exercised without a real mail server.
package smtptest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Behavior selects how the sink answers a message, so a test can inject a specific SMTP failure
// at the protocol step where a real server would produce it.
type Behavior int

const (
	// Accept answers every step with success and records the message; it is the default.
	Accept Behavior = iota
	// TempFailRcpt answers RCPT TO with 451 4.3.0, a transient per-recipient failure the sender
	// should retry.
	TempFailRcpt
	// TempFailData reads the whole message and then answers 451 4.3.0, a transient failure
	// reported only after the body was transferred.
	TempFailData
	// ServiceUnavailable answers MAIL FROM with 421 4.3.2 and closes the connection, as a server
	// that is shutting down does.
	ServiceUnavailable
	// MailboxFull answers RCPT TO with 452 4.2.2, the transient "mailbox full" condition.
	MailboxFull
	// PermFailRcpt answers RCPT TO with 550 5.1.1, an unknown recipient that must not be retried.
	PermFailRcpt
	// MessageTooBig reads the whole message and then answers 552 5.3.4, a permanent size
	// rejection.
	MessageTooBig
	// PermFailData reads the whole message and then answers 554 5.6.0, a permanent content
	// rejection.
	PermFailData
	// Hang reads the whole message and then never replies, until the sink is closed or the client
	// disconnects, so client-side timeouts can be tested.
	Hang
	// Drop reads the whole message and then closes the TCP connection without replying: the
	// RFC 1047 window in which the sender cannot know whether the message was delivered.
	Drop
	// ServiceUnavailableRcpt answers RCPT TO with 421 4.3.2 and closes the connection.
	ServiceUnavailableRcpt
	// ServiceUnavailableData reads the whole message, answers 421 4.3.2 and closes the
	// connection: a transient failure after the body, with the connection gone.
	ServiceUnavailableData
	// InsufficientStorageData reads the whole message and then answers 452 4.3.1, the transient
	// "insufficient system storage" condition.
	InsufficientStorageData
	// PermFailMail answers MAIL FROM with 550 5.7.1, a sender the relay refuses (e.g. not
	// allowed to send as that address); it must not be retried.
	PermFailMail
	// RecordThenDrop reads the whole message, records it as delivered and then closes the TCP
	// connection without replying: the RFC 1047 window as it ends worst, with the message
	// delivered though the sender cannot know it, so a sender that sends it again makes a
	// duplicate (Drop is the same window with the message lost).
	RecordThenDrop
	// ThrottleData reads the whole message and then answers as Exchange Online does to a
	// client over its rate: 451 4.7.500 Server busy.
	ThrottleData
	// QuotaExceededData reads the whole message and then answers as Gmail does once a daily
	// quota is used up: 550 5.4.5 Daily user sending quota exceeded (a 5xx that is no fault of
	// the message).
	QuotaExceededData
)

var behaviorNames = [...]string{
	Accept:                  "Accept",
	TempFailRcpt:            "TempFailRcpt",
	TempFailData:            "TempFailData",
	ServiceUnavailable:      "ServiceUnavailable",
	MailboxFull:             "MailboxFull",
	PermFailRcpt:            "PermFailRcpt",
	MessageTooBig:           "MessageTooBig",
	PermFailData:            "PermFailData",
	Hang:                    "Hang",
	Drop:                    "Drop",
	ServiceUnavailableRcpt:  "ServiceUnavailableRcpt",
	ServiceUnavailableData:  "ServiceUnavailableData",
	InsufficientStorageData: "InsufficientStorageData",
	PermFailMail:            "PermFailMail",
	RecordThenDrop:          "RecordThenDrop",
	ThrottleData:            "ThrottleData",
	QuotaExceededData:       "QuotaExceededData",
}

// String returns the constant's name, so behaviours read well in subtest names and failures.
func (b Behavior) String() string {
	if b >= 0 && int(b) < len(behaviorNames) {
		return behaviorNames[b]
	}
	return fmt.Sprintf("Behavior(%d)", int(b))
}

// Replies the sink sends for the injected failures.
var (
	errTempFailRcpt = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "smtptest: temporary recipient failure"}
	errTempFailData = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "smtptest: temporary failure after data"}
	errServiceUnav  = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "smtptest: service not available, closing transmission channel"}
	errMailboxFull  = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "smtptest: mailbox full"}
	errPermFailRcpt = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "smtptest: no such user"}
	errTooBig       = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "smtptest: message too big"}
	errPermFailData = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "smtptest: message content rejected"}
	errSinkClosed   = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "smtptest: sink closed"}
	errNoStorage    = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "smtptest: insufficient system storage"}
	errPermFailMail = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "smtptest: sender not allowed"}
	errTLSRequired  = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "smtptest: must issue a STARTTLS command first"}
	errThrottled    = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 500}, Message: "Server busy. Please try again later from [127.0.0.1]. (S77719) [smtptest]"}
	errQuota        = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 4, 5}, Message: "Daily user sending quota exceeded. [smtptest]"}
)

// Envelope is what a hook sees when choosing a Behavior, so it can fail selected senders or
// recipients while accepting the rest.
//
// The hook is consulted at MAIL FROM (To is empty), at each RCPT TO (To holds the recipients
// accepted so far followed by the one being offered, so the last element is the candidate), and
// after DATA (To holds all accepted recipients). At each step only the behaviours belonging to
// that step take effect; any other returned value counts as Accept there:
//
//	MAIL FROM     ServiceUnavailable (421), PermFailMail (550)
//	RCPT TO       ServiceUnavailableRcpt (421), TempFailRcpt (451), MailboxFull (452), PermFailRcpt (550)
//	end of DATA   ServiceUnavailableData (421), TempFailData (451), InsufficientStorageData (452),
//	              MessageTooBig (552), PermFailData (554), Hang, Drop, RecordThenDrop,
//	              ThrottleData (451 4.7.500), QuotaExceededData (550 5.4.5)
//
// Stage says which step it is, so a hook can count attempts of a message (one StageData per
// message whose recipients were accepted) without telling the steps apart by To.
type Envelope struct {
	From  string
	To    []string
	Stage Stage
}

// Stage is the protocol step a hook is consulted at.
type Stage int

// The steps; see Envelope.
const (
	StageMail Stage = iota + 1
	StageRcpt
	StageData
)

// String names the step.
func (s Stage) String() string {
	switch s {
	case StageMail:
		return "MAIL"
	case StageRcpt:
		return "RCPT"
	case StageData:
		return "DATA"
	}
	return fmt.Sprintf("Stage(%d)", int(s))
}

// Message is one accepted message as the sink received it, for assertions on envelope and body.
type Message struct {
	From     string
	To       []string
	Data     []byte
	Received time.Time
	// TLS reports whether the message came over a connection upgraded with STARTTLS.
	TLS bool
	// UTF8 reports whether MAIL FROM carried SMTPUTF8 (RFC 6531).
	UTF8 bool
}

// Option configures Start, so tests opt into authentication or a size limit only when they
// exercise them.
type Option func(*config)

type config struct {
	authSet         bool
	user, pass      string
	maxMessageBytes int64
	startTLS        bool
	requireTLS      bool
	implicitTLS     bool
	smtpUTF8        bool
	rateN           int
	ratePer         time.Duration
	maxConns        int
}

// WithAuth requires AUTH PLAIN with these credentials before MAIL FROM (plaintext AUTH is allowed
// without TLS), so a sender's authentication path can be tested.
func WithAuth(user, pass string) Option {
	return func(c *config) { c.authSet, c.user, c.pass = true, user, pass }
}

// WithMaxMessageBytes advertises SIZE n and rejects larger messages with 552 5.3.4, so a sender's
// handling of oversized mail can be tested.
func WithMaxMessageBytes(n int64) Option {
	return func(c *config) { c.maxMessageBytes = n }
}

// WithSTARTTLS offers STARTTLS with a self-signed certificate generated in memory for 127.0.0.1,
// ::1 and localhost; clients trust it through ClientTLSConfig. Plain text is still accepted.
func WithSTARTTLS() Option { return func(c *config) { c.startTLS = true } }

// WithRequireTLS implies WithSTARTTLS and refuses MAIL FROM before STARTTLS with 530 5.7.0, as
// relays that demand encryption do.
func WithRequireTLS() Option { return func(c *config) { c.startTLS, c.requireTLS = true, true } }

// WithSMTPUTF8 offers SMTPUTF8 (RFC 6531), so mail to or from an address with non-ASCII
// characters can be accepted; without it the sink, like go-smtp, refuses MAIL FROM with SMTPUTF8.
func WithSMTPUTF8() Option { return func(c *config) { c.smtpUTF8 = true } }

// WithRateLimit makes the sink a relay that rations, as providers do: it accepts at most n
// messages in any window of per, counted by when each message's data arrived, and answers one
// over the limit as ThrottleData does (451 4.7.500 Server busy), counting it (Throttled).
func WithRateLimit(n int, per time.Duration) Option {
	return func(c *config) { c.rateN, c.ratePer = n, per }
}

// WithConnectionLimit makes the sink a relay that caps the connections one client holds open,
// as Postfix's smtpd_client_connection_count_limit does: a connection beyond n open at once is
// answered "421 4.7.0 Error: too many connections" and closed, and counted (RefusedConnections).
// PeakConnections reports the most that were open at once.
func WithConnectionLimit(n int) Option { return func(c *config) { c.maxConns = n } }

// WithImplicitTLS makes the sink speak TLS from the first byte, as relays on port 465 do, with
// the certificate WithSTARTTLS uses; clients trust it through ClientTLSConfig.
func WithImplicitTLS() Option { return func(c *config) { c.implicitTLS = true } }

// Sink is a running SMTP server that records accepted messages and injects failures on demand.
// Its methods are safe for concurrent use.
type Sink struct {
	cfg    config
	server *smtp.Server
	certs  *x509.CertPool // trusts the STARTTLS certificate; nil without WithSTARTTLS
	ln     net.Listener
	addr   string

	served chan struct{} // closed when Serve has returned
	done   chan struct{} // closed by Close; releases hung sessions

	mu       sync.Mutex
	closed   bool
	active   sync.WaitGroup // sessions' Data calls and their helper goroutines
	behavior Behavior
	hook     func(Envelope) Behavior
	messages []Message
	// throttled counts messages refused by WithRateLimit's limit.
	throttled int
	// open, peak and refusedConns count TCP connections (WithConnectionLimit).
	open, peak, refusedConns int
	changed                  chan struct{} // closed and replaced whenever a message is recorded
	tb                       testing.TB
}

// Start runs a sink on 127.0.0.1 with a random port for tb and closes it at tb's cleanup.
func Start(tb testing.TB, opts ...Option) *Sink {
	tb.Helper()
	s := &Sink{
		served:  make(chan struct{}),
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		tb:      tb,
	}
	for _, o := range opts {
		o(&s.cfg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("smtptest: listen: %v", err)
	}
	s.addr = ln.Addr().String()

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = "smtptest.localhost"
	srv.AllowInsecureAuth = true
	srv.MaxMessageBytes = s.cfg.maxMessageBytes
	srv.EnableSMTPUTF8 = s.cfg.smtpUTF8
	srv.ErrorLog = sinkLogger{s}
	ln = &countingListener{Listener: ln, s: s, plain: !s.cfg.implicitTLS}
	if s.cfg.startTLS || s.cfg.implicitTLS {
		cert, pool, err := selfSigned()
		if err != nil {
			tb.Fatalf("smtptest: %v", err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		s.certs = pool
		if s.cfg.implicitTLS {
			ln = tls.NewListener(ln, srv.TLSConfig)
		}
	}
	s.server = srv
	s.ln = ln

	go func() {
		defer close(s.served)
		_ = srv.Serve(ln)
	}()
	tb.Cleanup(s.Close)
	return s
}

// countingListener counts the TCP connections open at once and refuses those over
// WithConnectionLimit's limit before go-smtp sees them.
type countingListener struct {
	net.Listener
	s     *Sink
	plain bool // a refusal may be written in clear text (no implicit TLS)
}

func (l *countingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		s := l.s
		s.mu.Lock()
		if s.cfg.maxConns > 0 && s.open >= s.cfg.maxConns {
			s.refusedConns++
			s.mu.Unlock()
			if l.plain {
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = c.Write([]byte("421 4.7.0 Error: too many connections\r\n"))
			}
			_ = c.Close()
			continue
		}
		s.open++
		s.peak = max(s.peak, s.open)
		s.mu.Unlock()
		return &countedConn{Conn: c, s: s}, nil
	}
}

type countedConn struct {
	net.Conn
	s    *Sink
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		c.s.open--
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// PeakConnections is the most TCP connections that were open at once.
func (s *Sink) PeakConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// OpenConnections is the TCP connections open now.
func (s *Sink) OpenConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open
}

// RefusedConnections counts connections WithConnectionLimit's limit turned away: a sender that
// keeps to the relay's limit makes it zero.
func (s *Sink) RefusedConnections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refusedConns
}

// Addr returns the host:port the sink listens on, for the sender under test to dial.
func (s *Sink) Addr() string { return s.addr }

// ClientTLSConfig returns a client configuration that trusts the sink's certificate, for
// Client.StartTLS or a connector's TLS settings; nil when the sink offers no TLS.
func (s *Sink) ClientTLSConfig() *tls.Config {
	if s.certs == nil {
		return nil
	}
	return &tls.Config{RootCAs: s.certs, MinVersion: tls.VersionTLS12}
}

// SetBehavior makes the sink answer all following messages with b (unless a hook is set).
func (s *Sink) SetBehavior(b Behavior) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.behavior = b
}

// SetHook lets f choose the Behavior per message and per recipient from the envelope; see
// Envelope for when it is called. A non-nil hook takes precedence over SetBehavior; nil removes
// it. f runs on the server's goroutines and must be safe for concurrent use.
func (s *Sink) SetHook(f func(env Envelope) Behavior) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hook = f
}

// Messages returns a copy of the messages accepted so far, in order of arrival.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.copyMessages()
}

// WaitForMessages blocks until at least n messages have been accepted and returns a copy of all
// of them; it fails tb if that does not happen within timeout or the sink closes first. Because
// it calls tb.Fatalf, call it from the test's goroutine.
func (s *Sink) WaitForMessages(tb testing.TB, n int, timeout time.Duration) []Message {
	tb.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		if len(s.messages) >= n {
			msgs := s.copyMessages()
			s.mu.Unlock()
			return msgs
		}
		changed, got := s.changed, len(s.messages)
		s.mu.Unlock()

		select {
		case <-changed:
		case <-timer.C:
			tb.Fatalf("smtptest: got %d messages after %v, want at least %d", got, timeout, n)
			return nil
		case <-s.done:
			tb.Fatalf("smtptest: sink closed with %d messages, want at least %d", got, n)
			return nil
		}
	}
}

// Close stops the sink: it closes the listener and all connections, releases hung sessions and
// waits for the sink's goroutines to leave its code. It is idempotent and registered with
// tb.Cleanup by Start.
func (s *Sink) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()

	_ = s.server.Close() // closes listener and connections; Logout releases hung sessions
	close(s.done)        // releases anything still waiting
	<-s.served
	s.active.Wait()
}

func (s *Sink) copyMessages() []Message {
	out := make([]Message, len(s.messages))
	for i, m := range s.messages {
		m.To, m.Data = slices.Clone(m.To), slices.Clone(m.Data)
		out[i] = m
	}
	return out
}

// decide returns the behaviour for env: the hook's if set, else the fixed one.
func (s *Sink) decide(env Envelope) Behavior {
	s.mu.Lock()
	hook, b := s.hook, s.behavior
	s.mu.Unlock()
	if hook != nil {
		return hook(Envelope{From: env.From, To: slices.Clone(env.To), Stage: env.Stage})
	}
	return b
}

// enter registers a goroutine in the sink's code; it fails once the sink is closed, so
// active.Add never races with Close's active.Wait.
func (s *Sink) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.active.Add(1)
	return true
}

// overRate reports whether a message arriving at now is over WithRateLimit's limit, and counts
// it then.
func (s *Sink) overRate(now time.Time) bool {
	if s.cfg.rateN <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for i := len(s.messages) - 1; i >= 0 && now.Sub(s.messages[i].Received) < s.cfg.ratePer; i-- {
		n++
	}
	if n < s.cfg.rateN {
		return false
	}
	s.throttled++
	return true
}

// Throttled is the number of messages WithRateLimit's limit refused: a sender that keeps to the
// relay's limits makes it zero.
func (s *Sink) Throttled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.throttled
}

func (s *Sink) record(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, m)
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Sink) newSession(c *smtp.Conn) (smtp.Session, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errSinkClosed
	}
	_, isTLS := c.TLSConnectionState()
	return &session{sink: s, conn: c.Conn(), tls: isTLS, gone: make(chan struct{})}, nil
}

// sinkLogger forwards go-smtp's error log to the test log until the sink is closed (logging to a
// finished test panics).
type sinkLogger struct{ s *Sink }

func (l sinkLogger) Printf(format string, v ...interface{}) {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if !l.s.closed {
		l.s.tb.Logf("smtptest: "+format, v...)
	}
}

func (l sinkLogger) Println(v ...interface{}) {
	l.Printf("%s", fmt.Sprintln(v...))
}

// session is one SMTP connection's state.
type session struct {
	sink *Sink
	conn net.Conn
	tls  bool

	authed bool
	from   string
	to     []string
	utf8   bool

	goneOnce sync.Once
	gone     chan struct{} // closed by Logout, i.e. when the connection is closed
}

var _ smtp.AuthSession = (*session)(nil)

func (ss *session) AuthMechanisms() []string {
	if !ss.sink.cfg.authSet {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if !ss.sink.cfg.authSet {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	check := func(identity, user, pass string) error {
		if (identity != "" && identity != user) || user != ss.sink.cfg.user || pass != ss.sink.cfg.pass {
			return smtp.ErrAuthFailed
		}
		ss.authed = true
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(check), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// loginServer is the server side of the obsolete but common LOGIN mechanism, which go-sasl only
// implements for clients: "Username:", then "Password:", each answered in its own line.
type loginServer struct {
	check func(identity, user, pass string) error
	user  string
	step  int
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step++
		if len(response) > 0 { // initial response carries the user name
			l.user, l.step = string(response), 2
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.user, l.step = string(response), 2
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check("", l.user, string(response))
	}
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.sink.cfg.requireTLS && !ss.tls {
		return errTLSRequired
	}
	if ss.sink.cfg.authSet && !ss.authed {
		return smtp.ErrAuthRequired
	}
	switch ss.sink.decide(Envelope{From: from, Stage: StageMail}) {
	case ServiceUnavailable:
		return ss.replyAndClose(errServiceUnav)
	case PermFailMail:
		return errPermFailMail
	}
	ss.from = from
	ss.to = nil
	ss.utf8 = opts != nil && opts.UTF8
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	env := Envelope{From: ss.from, To: append(slices.Clone(ss.to), to), Stage: StageRcpt}
	switch ss.sink.decide(env) {
	case ServiceUnavailableRcpt:
		return ss.replyAndClose(errServiceUnav)
	case TempFailRcpt:
		return errTempFailRcpt
	case MailboxFull:
		return errMailboxFull
	case PermFailRcpt:
		return errPermFailRcpt
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	if !ss.sink.enter() {
		return errSinkClosed
	}
	defer ss.sink.active.Done()

	data, err := io.ReadAll(r)
	if err != nil {
		// Typically smtp.ErrDataTooLarge (552 5.3.4); go-smtp needs the *SMTPError unwrapped.
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			return se
		}
		return err
	}
	received := time.Now()
	if ss.sink.overRate(received) {
		return errThrottled
	}

	switch ss.sink.decide(Envelope{From: ss.from, To: ss.to, Stage: StageData}) {
	case TempFailData:
		return errTempFailData
	case ThrottleData:
		return errThrottled
	case QuotaExceededData:
		return errQuota
	case MessageTooBig:
		return errTooBig
	case PermFailData:
		return errPermFailData
	case InsufficientStorageData:
		return errNoStorage
	case ServiceUnavailableData:
		return ss.replyAndClose(errServiceUnav)
	case Hang:
		ss.hang()
		_ = ss.conn.Close() // never reply, even once released
		return errSinkClosed
	case Drop:
		_ = ss.conn.Close()
		return errSinkClosed // not delivered: the connection is gone
	case RecordThenDrop:
		ss.sink.record(Message{From: ss.from, To: slices.Clone(ss.to), Data: data, Received: received, TLS: ss.tls, UTF8: ss.utf8})
		_ = ss.conn.Close()
		return errSinkClosed // delivered, but the sender never hears so
	}

	ss.sink.record(Message{From: ss.from, To: slices.Clone(ss.to), Data: data, Received: received, TLS: ss.tls, UTF8: ss.utf8})
	return nil
}

// replyAndClose sends e and closes the connection, as RFC 5321 wants after a 421. go-smtp writes
// a reply only after the session method returns and then keeps reading, so the sink writes the
// reply itself; go-smtp has flushed everything before (it flushes after every reply), so nothing
// is interleaved. The error returned is for go-smtp, whose own write then fails on the closed
// connection.
func (ss *session) replyAndClose(e *smtp.SMTPError) error {
	_, _ = fmt.Fprintf(ss.conn, "%d %d.%d.%d %s\r\n", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
	_ = ss.conn.Close()
	return e
}

// hang blocks until the sink closes, the connection is closed (Logout), or the client
// disconnects. The protocol is stalled while we are here, so nothing else reads the connection
// and a watcher may read it directly to notice EOF.
func (ss *session) hang() {
	clientGone := make(chan struct{})
	if ss.sink.enter() {
		go func() {
			defer ss.sink.active.Done()
			defer close(clientGone)
			buf := make([]byte, 512)
			for {
				if _, err := ss.conn.Read(buf); err != nil {
					return
				}
			}
		}()
	}
	select {
	case <-ss.sink.done:
	case <-ss.gone:
	case <-clientGone:
	}
}

func (ss *session) Reset() {
	ss.from = ""
	ss.to = nil
}

func (ss *session) Logout() error {
	ss.goneOnce.Do(func() { close(ss.gone) })
	return nil
}

// selfSigned makes a certificate for the loopback names, valid for a day, and a pool trusting it.
func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "smtptest"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("parse certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}
