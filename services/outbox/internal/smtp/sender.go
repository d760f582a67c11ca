// Package smtp delivers built messages to a connector's relay over go-smtp and classifies every
// way an attempt can end into the outbox's outcomes: 2xx sent, 4xx or a network failure before
// the final "." temporary, 5xx permanent, and a connection lost between the final "." and the
// reply unknown (RFC 1047: the relay may have the message). Connections are pooled and reused.
package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
)

// TLSMode is how the connection to the relay is secured; a connector chooses it because relays
// differ (port 465 speaks TLS at once, 587 upgrades, a relay on a trusted network may do neither).
type TLSMode int

// The TLS modes; the values match postamt.outbox.v1.TlsMode, and zero is "not set".
const (
	// TLSNone is plain text, for a relay on a trusted network (and the development catcher).
	TLSNone TLSMode = iota + 1
	// TLSStartTLS upgrades a plain connection, and fails if the relay does not offer STARTTLS.
	TLSStartTLS
	// TLSImplicit speaks TLS from the first byte (port 465).
	TLSImplicit
)

// AuthMechanism is how the outbox authenticates to the relay, since most relays accept mail for
// the world only from authenticated clients.
type AuthMechanism int

// The mechanisms; the values match postamt.outbox.v1.AuthMechanism, and zero means none.
const (
	// AuthNone sends no AUTH: the relay trusts the network.
	AuthNone AuthMechanism = iota + 1
	// AuthPlain is SASL PLAIN (RFC 4616), which every relay that authenticates offers.
	AuthPlain
	// AuthLogin is the obsolete LOGIN mechanism, for relays (older Exchange) without PLAIN.
	AuthLogin
)

// Config describes one connector's relay; zero values of the optional fields are the documented
// defaults, so a connector only sets what it changes.
type Config struct {
	// Host and Port are the relay's address; Host is also the TLS server name.
	Host string
	Port int
	// TLS is how the connection is secured.
	TLS TLSMode
	// TLSConfig overrides certificate checks (tests with a self-signed relay).
	TLSConfig *tls.Config
	// LocalName is sent in EHLO; empty means "localhost".
	LocalName string
	// CommandTimeout bounds each command's reply; SubmitTimeout bounds the reply to the final ".".
	// Zero means 30s and 2m.
	CommandTimeout time.Duration
	SubmitTimeout  time.Duration
	// PoolSize bounds the connections to the relay, open at once and kept idle for reuse; a send
	// waits for a free one. 0 means 4.
	PoolSize int
	// Auth, Username and Secret authenticate each new connection (AuthNone or zero: no AUTH).
	// Secret is called at dial time, so a rotated secret file is used from the next connection
	// on; its error must not contain the secret, as it becomes the attempt's message. A 535
	// reply to AUTH is a permanent outcome, a 454 a temporary one, and a Secret that fails (or
	// is nil) is temporary: an admin can put the file in place and the mail goes out.
	Auth     AuthMechanism
	Username string
	Secret   func() (string, error)
}

// Result is how an attempt ended, with what the relay said, so the outbox can decide what
// follows and show the person why.
type Result struct {
	// Outcome is what the outbox's rules act on.
	Outcome outbox.Outcome
	// Code is the SMTP reply code; 0 when there was no reply (network error, timeout).
	Code int
	// Enhanced is the RFC 3463 code ("5.7.8") when the relay sent one.
	Enhanced string
	// Message is the relay's text or the error, never a secret.
	Message string
}

// Sender delivers to one relay, reusing connections: a connection and its TLS and AUTH
// handshakes cost several round trips, a message on an open one costs four.
type Sender struct {
	cfg   Config
	slots chan struct{}
	mu    sync.Mutex
	idle  []pooled
}

// pooled is an idle connection and when its last transaction ended.
type pooled struct {
	c    *gosmtp.Client
	used time.Time
}

// freshFor is how long after a completed transaction a pooled connection is reused without a
// RSET probe: the relay just answered on it, and a transaction that completed leaves no state.
// Older connections are probed, since relays close idle ones.
const freshFor = 2 * time.Second

// New returns a Sender for cfg; it dials nothing until the first Send.
func New(cfg Config) *Sender {
	if cfg.CommandTimeout == 0 {
		cfg.CommandTimeout = 30 * time.Second
	}
	if cfg.SubmitTimeout == 0 {
		cfg.SubmitTimeout = 2 * time.Minute
	}
	if cfg.PoolSize == 0 {
		cfg.PoolSize = 4
	}
	if cfg.LocalName == "" {
		cfg.LocalName = "localhost"
	}
	return &Sender{cfg: cfg, slots: make(chan struct{}, cfg.PoolSize)}
}

// Close quits the idle connections, when the connector changes or the service stops. A Send
// after Close dials again.
func (s *Sender) Close() {
	s.mu.Lock()
	idle := s.idle
	s.idle = nil
	s.mu.Unlock()
	for _, p := range idle {
		_ = p.c.Quit()
	}
}

func (s *Sender) get(ctx context.Context) (*gosmtp.Client, error) {
	s.mu.Lock()
	if n := len(s.idle); n > 0 {
		p := s.idle[n-1]
		s.idle = s.idle[:n-1]
		s.mu.Unlock()
		c := p.c
		if time.Since(p.used) < freshFor {
			return c, nil
		}
		// A pooled connection may have been closed by the relay meanwhile; RSET finds out.
		if err := c.Reset(); err == nil {
			return c, nil
		}
		_ = c.Close()
		return s.dial(ctx)
	}
	s.mu.Unlock()
	return s.dial(ctx)
}

func (s *Sender) put(c *gosmtp.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.idle) < s.cfg.PoolSize {
		s.idle = append(s.idle, pooled{c: c, used: time.Now()})
		return
	}
	go func() { _ = c.Quit() }()
}

func (s *Sender) dial(ctx context.Context) (*gosmtp.Client, error) {
	addr := net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port))
	d := net.Dialer{Timeout: s.cfg.CommandTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	tlsCfg := s.cfg.TLSConfig
	if tlsCfg == nil {
		tlsCfg = &tls.Config{ServerName: s.cfg.Host, MinVersion: tls.VersionTLS12}
	}
	var c *gosmtp.Client
	switch s.cfg.TLS {
	case TLSImplicit:
		c = gosmtp.NewClient(tls.Client(conn, tlsCfg))
	case TLSStartTLS:
		c, err = gosmtp.NewClientStartTLS(conn, tlsCfg)
		if err != nil {
			return nil, fmt.Errorf("starttls with %s: %w", addr, err)
		}
	default:
		c = gosmtp.NewClient(conn)
	}
	c.CommandTimeout, c.SubmissionTimeout = s.cfg.CommandTimeout, s.cfg.SubmitTimeout
	if err := c.Hello(s.cfg.LocalName); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("EHLO to %s: %w", addr, err)
	}
	if s.cfg.Auth == AuthPlain || s.cfg.Auth == AuthLogin {
		if s.cfg.Secret == nil {
			_ = c.Close()
			return nil, fmt.Errorf("AUTH to %s not attempted: no password source configured", addr)
		}
		secret, err := s.cfg.Secret()
		if err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("AUTH to %s not attempted: %w", addr, err)
		}
		mech := sasl.NewPlainClient("", s.cfg.Username, secret)
		if s.cfg.Auth == AuthLogin {
			mech = sasl.NewLoginClient(s.cfg.Username, secret)
		}
		if err := c.Auth(mech); err != nil {
			_ = c.Close()
			return nil, err // an SMTPError keeps its code: 535 is permanent, 454 temporary
		}
	}
	return c, nil
}

// Send delivers msg (a complete RFC 5322 message with CRLF line ends) from from to rcpts. A
// recipient refused at RCPT fails the whole attempt with that reply: partial delivery is not
// attempted in this version.
func (s *Sender) Send(ctx context.Context, from string, rcpts []string, msg []byte) Result {
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return Result{Outcome: outbox.OutcomeTemporary, Message: "no connection to the relay was free: " + ctx.Err().Error()}
	}
	defer func() { <-s.slots }()
	c, err := s.get(ctx)
	if err != nil {
		return classify(err, false)
	}
	// SIZE (RFC 1870), where the relay offers it, lets it refuse an oversize message before the
	// data is sent.
	if err := c.Mail(from, &gosmtp.MailOptions{Size: int64(len(msg))}); err != nil {
		_ = c.Close()
		return classify(err, false)
	}
	for _, r := range rcpts {
		if err := c.Rcpt(r, nil); err != nil {
			_ = c.Close()
			return classify(err, false)
		}
	}
	w, err := c.Data()
	if err != nil {
		_ = c.Close()
		return classify(err, false)
	}
	if _, err := w.Write(msg); err != nil {
		_ = c.Close()
		return classify(err, false)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		_ = c.Close()
		return classify(err, true)
	}
	s.put(c)
	return Result{Outcome: outbox.OutcomeSent, Code: 250, Message: resp.StatusText}
}

// classify maps an error to an outcome. afterDot says the final "." may have been written, so a
// failure without a reply leaves the outcome unknown.
func classify(err error, afterDot bool) Result {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		r := Result{Code: se.Code, Message: se.Message}
		if se.EnhancedCode != (gosmtp.EnhancedCode{}) {
			r.Enhanced = fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		}
		switch {
		case se.Code >= 400 && se.Code < 500:
			r.Outcome = outbox.OutcomeTemporary
		default:
			r.Outcome = outbox.OutcomePermanent
		}
		return r
	}
	if afterDot {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "write" {
			// The "." did not leave: the relay cannot have accepted the message.
			return Result{Outcome: outbox.OutcomeTemporary, Message: err.Error()}
		}
		return Result{Outcome: outbox.OutcomeUnknown, Message: "connection lost after the message was sent, before the relay replied: " + err.Error()}
	}
	return Result{Outcome: outbox.OutcomeTemporary, Message: err.Error()}
}
