// Package journal is the tracker's SMTP journaling endpoint: an SMTP server (go-smtp) to which a
// mail server journals copies of the mail its users send. Each configured journal address stands
// for one journaled mailbox (tenant, mailbox, sending user), like a journal rule scoped to that
// mailbox; a copy received for it is read with go-message and fed into the same ingest path as
// the outbox's events and IngestSentItem.
//
// Replies follow RFC 5321 with RFC 3463 enhanced codes: 550 5.1.1 for an address that is not a
// journal address, 552 5.3.4 for a message over the size limit (announced in EHLO as SIZE, and
// checked on MAIL FROM's SIZE and while reading DATA), 554 5.6.0 for a copy whose headers cannot
// be read (retrying cannot help), 451 4.3.0 when the tracker cannot evaluate it now (the sending
// server keeps the copy and retries). An Exchange envelope journal report is unwrapped: the
// message evaluated is the attached original (message/rfc822), with the Bcc recipients the
// report lists added to it (the original's header no longer names them).
package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	netmail "net/mail"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// Target is what a journal address stands for: the journaled mailbox and the user whose
// acceptance option applies to its sent mail.
type Target struct {
	Tenant    string
	MailboxID string
	User      string
}

// Ingester is the part of the tracker service the endpoint feeds.
type Ingester interface {
	Ingest(ctx context.Context, tenant string, m *tracker.Message) (*tracker.Result, error)
}

// Config configures the endpoint. Zero values are the documented defaults.
type Config struct {
	// Addresses maps journal addresses (lower case) to what they stand for.
	Addresses map[string]Target
	// Domain is the host name in the greeting; "" means "localhost".
	Domain string
	// MaxMessageBytes bounds one journal copy; 0 means 25 MiB.
	MaxMessageBytes int64
	// MaxRecipients bounds RCPT TO per transaction; 0 means 100.
	MaxRecipients int
	// Timeout bounds each read and write on a connection; 0 means 5 minutes (RFC 5321 4.5.3.2).
	Timeout time.Duration
	// IngestTimeout bounds the evaluation of one copy; 0 means 30s.
	IngestTimeout time.Duration
}

// Server is the journaling endpoint.
type Server struct {
	cfg Config
	ing Ingester
	log *slog.Logger
	srv *smtp.Server

	mu     sync.Mutex
	lis    net.Listener
	closed bool
}

// New returns a Server feeding ing; nothing listens until Serve.
func New(cfg Config, ing Ingester, logger *slog.Logger) *Server {
	if cfg.Domain == "" {
		cfg.Domain = "localhost"
	}
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 25 << 20
	}
	if cfg.MaxRecipients == 0 {
		cfg.MaxRecipients = 100
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Minute
	}
	if cfg.IngestTimeout == 0 {
		cfg.IngestTimeout = 30 * time.Second
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, ing: ing, log: logger}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) { return &session{s: s}, nil }))
	srv.Domain = cfg.Domain
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = cfg.MaxRecipients
	srv.ReadTimeout, srv.WriteTimeout = cfg.Timeout, cfg.Timeout
	srv.ErrorLog = slogLogger{logger}
	s.srv = srv
	return s
}

// Serve accepts connections on l until Shutdown; it returns nil after a shutdown.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = l.Close()
		return nil
	}
	s.lis = l
	s.mu.Unlock()
	err := s.srv.Serve(l)
	if errors.Is(err, smtp.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting and waits for running sessions until ctx ends, then closes them.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	lis := s.lis
	s.mu.Unlock()
	err := s.srv.Shutdown(ctx)
	if lis != nil {
		// go-smtp closes only the listeners its Serve registered already; a Serve that started
		// just now may not have, and would accept forever.
		_ = lis.Close()
	}
	if err != nil {
		_ = s.srv.Close()
	}
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

// Replies with their RFC 3463 codes.
var (
	errUnknownAddress = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such journal address"}
	errTryLater       = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Cannot evaluate the journal copy now; try again later"}
)

func errMalformed(detail string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Malformed journal copy: " + detail}
}

type session struct {
	s       *Server
	targets []Target
}

// Reset implements smtp.Session: RSET forgets the transaction's journal addresses.
func (ss *session) Reset() { ss.targets = nil }

// Logout implements smtp.Session; a session holds nothing to free.
func (ss *session) Logout() error { return nil }

// Mail implements smtp.Session: any sender may journal (the endpoint is internal); the size
// limit is checked by go-smtp against MAIL FROM's SIZE.
func (ss *session) Mail(string, *smtp.MailOptions) error {
	ss.targets = nil
	return nil
}

// Rcpt implements smtp.Session: only configured journal addresses are accepted (550 5.1.1).
func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	t, ok := ss.s.cfg.Addresses[tracker.NormalizeAddress(to)]
	if !ok {
		return errUnknownAddress
	}
	for _, have := range ss.targets {
		if have == t {
			return nil
		}
	}
	ss.targets = append(ss.targets, t)
	return nil
}

// Data implements smtp.Session: the copy is read (552 5.3.4 beyond the limit), its original
// header found and evaluated once for each journaled mailbox of the transaction.
func (ss *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		// go-smtp's ErrDataTooLarge (552 5.3.4) or a broken connection.
		return err
	}
	jc, err := readCopy(data)
	if err != nil {
		return errMalformed(err.Error())
	}
	for _, t := range ss.targets {
		if err := ss.ingest(t, jc); err != nil {
			return err
		}
	}
	return nil
}

// ingest evaluates the copy for one journaled mailbox.
func (ss *session) ingest(t Target, jc journalCopy) error {
	m, err := tracker.FromHeader("message", jc.header)
	if err != nil {
		var e *errs.Error
		if errors.As(err, &e) && len(e.Violations) > 0 {
			return errMalformed(e.Violations[0].Field + " " + e.Violations[0].Description)
		}
		return errMalformed("unreadable headers")
	}
	addBcc(m, jc.bcc)
	m.MailboxID, m.SenderUser, m.Source = t.MailboxID, t.User, tracker.SourceJournal
	ctx, cancel := context.WithTimeout(context.Background(), ss.s.cfg.IngestTimeout)
	defer cancel()
	r, err := ss.s.ing.Ingest(ctx, t.Tenant, m)
	if err != nil {
		if errs.KindOf(err) == errs.KindInvalid {
			return errMalformed("invalid message")
		}
		ss.s.log.Warn("journal: ingest failed; the sender will retry", "tenant", t.Tenant, "message_id", m.MessageID, "error", err)
		return errTryLater
	}
	ss.s.log.Debug("journal: evaluated", "tenant", t.Tenant, "message_id", m.MessageID, "tracked", r.Tracked)
	return nil
}

// journalCopy is what a journal copy says about the message it journals: the original's header
// and, from an envelope journal report, the Bcc recipients (as the sender addressed them).
type journalCopy struct {
	header mail.Header
	bcc    []string
}

// readCopy reads a journal copy: an envelope journal report (a multipart message with a
// message/rfc822 part, the original) gives the attached original's header and the Bcc lines of
// its report part; any other message is the original itself.
func readCopy(data []byte) (journalCopy, error) {
	e, err := message.Read(bytes.NewReader(data))
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return journalCopy{}, fmt.Errorf("unreadable message: %w", err)
	}
	own := journalCopy{header: mail.Header{Header: e.Header}}
	mt, _, _ := e.Header.ContentType()
	if !strings.HasPrefix(mt, "multipart/") {
		return own, nil
	}
	mr := e.MultipartReader()
	if mr == nil {
		return own, nil
	}
	var bcc []string
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return own, nil
		}
		if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
			return journalCopy{}, fmt.Errorf("unreadable part: %w", err)
		}
		pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		switch pt {
		case "text/plain":
			if bcc == nil {
				body, err := io.ReadAll(p.Body)
				if err != nil {
					return journalCopy{}, fmt.Errorf("unreadable report part: %w", err)
				}
				bcc = reportBcc(body)
			}
		case "message/rfc822":
			inner, err := message.Read(p.Body)
			if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
				return journalCopy{}, fmt.Errorf("unreadable attached message: %w", err)
			}
			return journalCopy{header: mail.Header{Header: inner.Header}, bcc: bcc}, nil
		}
	}
}

// reportBcc reads the Bcc recipients of an Exchange envelope journal report's body: one line per
// recipient, "Bcc: address", or "Bcc: address, Expanded: list" / ", Forwarded: address" when
// Exchange expanded a distribution list or followed a forwarding. The sender addressed the
// list or the original address, and that is what the sent item shows, so it is the one taken.
// Lines that are not Bcc, or whose address does not parse or is not one the tracker keeps
// (tracker.ValidAddress), are skipped: the report adds to what the original's header says, and
// never makes a copy unreadable.
func reportBcc(body []byte) []string {
	var out []string
	for _, line := range strings.Split(string(body), "\n") {
		v, ok := cutField(strings.TrimSpace(line), "Bcc")
		if !ok {
			continue
		}
		addr, redirect, _ := strings.Cut(v, ",")
		if kind, src, ok := strings.Cut(strings.TrimSpace(redirect), ":"); ok {
			if k := strings.TrimSpace(kind); strings.EqualFold(k, "Expanded") || strings.EqualFold(k, "Forwarded") {
				addr = src
			}
		}
		a, err := netmail.ParseAddress(strings.TrimSpace(addr))
		if err != nil {
			continue
		}
		// A quoted local part ("akte 7"@x) parses into an address with a space, which the
		// tracker's rules refuse everywhere else.
		if n := tracker.NormalizeAddress(a.Address); tracker.ValidAddress(n) {
			out = append(out, n)
		}
	}
	return out
}

// cutField returns the value of a "Name: value" line whose name is name (any case).
func cutField(line, name string) (string, bool) {
	k, v, ok := strings.Cut(line, ":")
	if !ok || !strings.EqualFold(strings.TrimSpace(k), name) {
		return "", false
	}
	return strings.TrimSpace(v), true
}

// addBcc adds the report's Bcc recipients the message does not name yet, up to the recipient
// limit.
func addBcc(m *tracker.Message, bcc []string) {
	if len(bcc) == 0 {
		return
	}
	have := make(map[string]bool, len(m.To)+len(m.Cc)+len(m.Bcc))
	for _, l := range [][]string{m.To, m.Cc, m.Bcc} {
		for _, a := range l {
			have[tracker.NormalizeAddress(a)] = true
		}
	}
	for _, a := range bcc {
		if have[a] || len(m.To)+len(m.Cc)+len(m.Bcc) >= tracker.MaxRecipients {
			continue
		}
		have[a] = true
		m.Bcc = append(m.Bcc, a)
	}
}

// slogLogger lets go-smtp log connection errors through the service's logger.
type slogLogger struct{ l *slog.Logger }

// Printf implements smtp.Logger.
func (s slogLogger) Printf(format string, v ...any) {
	s.l.Warn("journal smtp: " + fmt.Sprintf(format, v...))
}

// Println implements smtp.Logger.
func (s slogLogger) Println(v ...any) { s.l.Warn("journal smtp: " + fmt.Sprint(v...)) }
