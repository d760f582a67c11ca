package smtp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
)

// This file is the outbox's SMTP client: one connection to a relay, its handshake (greeting,
// EHLO, STARTTLS, AUTH) and its mail transactions. It replaces go-smtp's client because that
// client sends one command and waits for its reply before the next, and keeps its connection to
// itself, so PIPELINING (RFC 2920) cannot be added around it. With PIPELINING a transaction
// costs two round trips (MAIL, every RCPT and DATA together; then the message and its ".")
// instead of 3 + recipients. go-smtp's server stays the relay in every test.

// replyError is a relay's reply that refused a command, with the RFC 3463 code split off, so
// the outbox can tell a temporary refusal from a permanent one and show the person why.
type replyError struct {
	Code int
	// Enhanced is "5.1.1" when the relay sent an enhanced status code, else empty.
	Enhanced string
	Message  string
}

func (e *replyError) Error() string {
	if e.Enhanced != "" {
		return fmt.Sprintf("%d %s %s", e.Code, e.Enhanced, e.Message)
	}
	return fmt.Sprintf("%d %s", e.Code, e.Message)
}

// maxReplyLine bounds a reply line from the relay (RFC 5321 §4.5.3.1.5 allows 512 octets; twice
// that, as go-smtp does), so a broken relay cannot make the client buffer without end.
const maxReplyLine = 2000

// maxReplyLines bounds the lines of one multi-line reply: an EHLO answer has a dozen, and a relay
// sending continuation lines without end would otherwise grow the reply in memory without end
// (found by FuzzSend): a reply is at most maxReplyLines × maxReplyLine octets.
const maxReplyLines = 100

// errReplyLineTooLong ends a connection whose relay sent a reply line over maxReplyLine, or a
// reply of more than maxReplyLines lines.
var errReplyLineTooLong = errors.New("reply from the relay too long")

// lineLimitReader fails a read once a line grows beyond limit bytes, or a reply beyond
// maxReplyLines lines. The lines before it are read first: a reply and a long line in one read
// are the reply, then the error.
type lineLimitReader struct {
	r     io.Reader
	limit int
	cur   int     // bytes of the current line seen so far
	head  [4]byte // the current line's first bytes: "250-" goes on, "250 " ends a reply
	more  int     // continuation lines of the current reply so far
	err   error   // errReplyLineTooLong once a line or a reply was too long
}

func (l *lineLimitReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.r.Read(p)
	for start := 0; start < n; {
		i := bytes.IndexByte(p[start:n], '\n')
		if i < 0 {
			i = n - start // the line goes on in the next read
		}
		if l.cur < len(l.head) {
			copy(l.head[l.cur:], p[start:start+min(i, len(l.head)-l.cur)])
		}
		if l.cur+i > l.limit {
			return l.fail(start)
		}
		if start+i == n {
			l.cur += i
			break
		}
		if l.cur+i >= len(l.head) && l.head[3] == '-' {
			l.more++
		} else {
			l.more = 0
		}
		if l.more >= maxReplyLines {
			return l.fail(start)
		}
		l.cur, start = 0, start+i+1
	}
	return n, err
}

// fail records errReplyLineTooLong and returns the complete lines before the offending one.
func (l *lineLimitReader) fail(start int) (int, error) {
	l.err = errReplyLineTooLong
	if start == 0 {
		return 0, l.err
	}
	return start, nil
}

// dataChunk is how much of a message is written under one deadline.
const dataChunk = 64 << 10

// maxPipelined bounds the commands sent ahead of their replies: 100 commands and their replies
// are a few kilobytes, far below any socket buffer.
const maxPipelined = 100

// conn is one connection to the relay after its handshake, ready for transactions. It is not
// safe for concurrent use: the Sender's pool hands it to one Send at a time.
type conn struct {
	nc     net.Conn
	r      *textproto.Reader
	bw     *bufio.Writer
	w      *textproto.Writer
	cmdTO  time.Duration
	dataTO time.Duration
	// What the relay's EHLO offered and the client uses.
	pipelining, size, eightBitMIME, smtpUTF8 bool
	line                                     []byte // a command line being built, reused
	// ctx is the running transaction's context: once it ends, no new deadline is set in the
	// future, so interrupt's deadline in the past sticks.
	ctx context.Context
	// permit is the Gate's permit the connection holds while open ("" without a gate); gen is
	// the Sender's generation it was dialled in (Sender.Close).
	permit string
	gen    uint64
}

// interrupt makes every blocked read and write of the connection fail now; the transaction's
// context ending calls it.
func (c *conn) interrupt() { _ = c.nc.SetDeadline(time.Unix(1, 0)) }

// newConn wraps an established (and, for implicit TLS, already encrypted) connection.
func newConn(nc net.Conn, cmdTO, dataTO time.Duration) *conn {
	c := &conn{cmdTO: cmdTO, dataTO: dataTO}
	c.setNetConn(nc)
	return c
}

func (c *conn) setNetConn(nc net.Conn) {
	c.nc = nc
	c.r = textproto.NewReader(bufio.NewReaderSize(&lineLimitReader{r: nc, limit: maxReplyLine}, 4096))
	c.bw = bufio.NewWriterSize(nc, 8192)
	c.w = textproto.NewWriter(c.bw)
}

// handshake reads the greeting, says EHLO (HELO where the relay knows no EHLO), upgrades with
// STARTTLS when asked, and authenticates with mech when it is not nil.
func (c *conn) handshake(localName string, startTLS *tls.Config, mech func() (sasl.Client, error)) error {
	if err := checkLine(localName); err != nil {
		return err
	}
	c.deadline(c.cmdTO)
	if _, _, err := c.reply(220); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	if err := c.hello(localName); err != nil {
		return err
	}
	if startTLS != nil {
		if _, _, err := c.cmd(220, "STARTTLS"); err != nil {
			return fmt.Errorf("STARTTLS: %w", err)
		}
		tc := tls.Client(c.nc, startTLS)
		c.deadline(c.cmdTO)
		if err := tc.Handshake(); err != nil { //nolint:noctx // bounded by the deadline set above, like every step of the conversation
			return fmt.Errorf("TLS handshake after STARTTLS: %w", err)
		}
		c.setNetConn(tc)
		// RFC 3207 §4.2: what was learned before TLS is forgotten; ask again.
		if err := c.hello(localName); err != nil {
			return err
		}
	}
	if mech != nil {
		m, err := mech()
		if err != nil {
			return err
		}
		if err := c.auth(m); err != nil {
			return err
		}
	}
	return nil
}

// hello says EHLO and records the extensions used; a relay that answers EHLO with 500 or 502
// gets HELO and is used without extensions.
func (c *conn) hello(localName string) error {
	_, text, err := c.cmd(2, "EHLO "+localName)
	var re *replyError
	if errors.As(err, &re) && (re.Code == 500 || re.Code == 502) {
		c.pipelining, c.size, c.eightBitMIME, c.smtpUTF8 = false, false, false, false
		if _, _, err := c.cmd(2, "HELO "+localName); err != nil {
			return fmt.Errorf("HELO: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("EHLO: %w", err)
	}
	c.pipelining, c.size, c.eightBitMIME, c.smtpUTF8 = false, false, false, false
	lines := strings.Split(text, "\n")
	for _, l := range lines[1:] { // the first line is the relay's name
		kw, _, _ := strings.Cut(l, " ")
		switch strings.ToUpper(kw) {
		case "PIPELINING":
			c.pipelining = true
		case "SIZE":
			c.size = true
		case "8BITMIME":
			c.eightBitMIME = true
		case "SMTPUTF8":
			c.smtpUTF8 = true
		}
	}
	return nil
}

// auth runs a SASL exchange (RFC 4954). The relay's refusal keeps its code: 535 is a wrong
// password (permanent), 454 a temporary failure on the relay's side.
func (c *conn) auth(m sasl.Client) error {
	name, ir, err := m.Start()
	if err != nil {
		return fmt.Errorf("AUTH: %w", err)
	}
	line := "AUTH " + name
	switch {
	case len(ir) > 0:
		line += " " + base64.StdEncoding.EncodeToString(ir)
	case ir != nil:
		line += " =" // an empty initial response
	}
	code, text, err := c.cmd(0, line)
	for {
		if err != nil {
			return fmt.Errorf("AUTH %s: %w", name, err)
		}
		switch code {
		case 235:
			return nil
		case 334:
		default:
			return fmt.Errorf("AUTH %s: %w", name, replyErr(code, text))
		}
		challenge, derr := base64.StdEncoding.DecodeString(text)
		var resp []byte
		if derr == nil {
			resp, derr = m.Next(challenge)
		}
		if derr != nil {
			_, _, _ = c.cmd(0, "*") // cancel the exchange (RFC 4954 §4)
			return fmt.Errorf("AUTH %s: %w", name, derr)
		}
		code, text, err = c.cmd(0, base64.StdEncoding.EncodeToString(resp))
	}
}

// send runs one mail transaction. dataSent says whether the message and its final "." may have
// reached the relay: after that a failure without a reply leaves the outcome unknown (RFC 1047).
// After any error the connection is in an unknown state and must be closed.
// guard, when set, is asked before MAIL and before the message is written; its error, or ctx
// ending before the final ".", stops the transaction with errNotSent.
func (c *conn) send(ctx context.Context, from string, rcpts []string, msg []byte, guard Guard) (code int, text string, dataSent bool, err error) {
	if err := checkLine(from); err != nil {
		return 0, "", false, err
	}
	for _, r := range rcpts {
		if err := checkLine(r); err != nil {
			return 0, "", false, err
		}
	}
	c.ctx = ctx
	defer func() { c.ctx = nil }()
	vouch := func(message bool) error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: %w", errNotSent, err)
		}
		if guard != nil {
			if err := guard(message); err != nil {
				return fmt.Errorf("%w: %w", errNotSent, err)
			}
		}
		return nil
	}
	if err := vouch(false); err != nil {
		return 0, "", false, err
	}
	c.deadline(c.cmdTO)
	c.line = append(c.line[:0], "MAIL FROM:<"...)
	c.line = append(c.line, from...)
	c.line = append(c.line, '>')
	if c.eightBitMIME {
		c.line = append(c.line, " BODY=8BITMIME"...)
	}
	if needsUTF8(from, rcpts) {
		if !c.smtpUTF8 {
			return 0, "", false, errNoSMTPUTF8
		}
		c.line = append(c.line, " SMTPUTF8"...)
	}
	if c.size {
		// SIZE (RFC 1870) lets the relay refuse an oversize message before the data is sent.
		c.line = append(c.line, " SIZE="...)
		c.line = strconv.AppendInt(c.line, int64(len(msg)), 10)
	}
	c.line = append(c.line, "\r\n"...)
	if c.pipelining {
		err = c.pipelined(rcpts)
	} else {
		err = c.stepwise(rcpts)
	}
	if err != nil {
		return 0, "", false, err
	}
	// The relay accepted DATA and waits for the message: the last moment to stop without sending
	// that does not cut a message short.
	if err := vouch(true); err != nil {
		return 0, "", false, err
	}

	// The message goes out in chunks, each with the command timeout: a large message on a slow
	// link gets the time it needs as long as it moves, and a stalled relay is noticed.
	dw := c.w.DotWriter() // dot-stuffing, and the final "." on Close, which also flushes
	for rest := msg; len(rest) > 0; {
		n := min(len(rest), dataChunk)
		c.deadline(c.cmdTO)
		if _, err := dw.Write(rest[:n]); err != nil {
			// The final "." has not left (Close writes it, and dot-stuffing keeps it out of the
			// message): the relay discards the transaction, so nothing was sent.
			return 0, "", false, err
		}
		rest = rest[n:]
	}
	c.deadline(c.cmdTO)
	if err := dw.Close(); err != nil {
		return 0, "", true, err
	}
	c.deadline(c.dataTO) // the relay may scan the message before it answers
	code, text, err = c.reply(2)
	return code, text, true, err
}

// pipelined writes MAIL, every RCPT and DATA without waiting (RFC 2920 §3.1: DATA ends the
// group) and reads their replies in order. Every reply is read, so the connection stays in
// step; the first refusal is the transaction's error. When a recipient was refused but DATA was
// accepted anyway (others were not refused), the connection is given up instead of sending the
// message, since a recipient is never dropped silently. At most maxPipelined commands are
// unanswered at a time: a client that writes without reading can fill the relay's send buffer
// with replies until both sides wait on each other (RFC 2920 §3.1 warns of it).
func (c *conn) pipelined(rcpts []string) error {
	n := len(rcpts) + 2 // MAIL (already in c.line), the RCPTs, DATA
	var first error
	for written, read := 1, 0; read < n; {
		for ; written < n && written-read < maxPipelined; written++ {
			if written <= len(rcpts) {
				c.appendRcpt(rcpts[written-1])
			} else {
				c.line = append(c.line, "DATA\r\n"...)
			}
		}
		if _, err := c.bw.Write(c.line); err != nil {
			return err
		}
		if err := c.bw.Flush(); err != nil {
			return err
		}
		c.line = c.line[:0]
		for ; read < written; read++ {
			expect := 2
			if read == n-1 {
				expect = 354
			}
			_, _, err := c.reply(expect)
			var re *replyError
			if err != nil && !errors.As(err, &re) {
				// The connection failed; a refusal read before it says more (a 421 closes it).
				if first != nil {
					return first
				}
				return err
			}
			if err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

// stepwise is the same transaction for a relay without PIPELINING, one command at a time.
func (c *conn) stepwise(rcpts []string) error {
	if err := c.flushAndReply(2); err != nil {
		return err
	}
	for _, r := range rcpts {
		c.line = c.line[:0]
		c.appendRcpt(r)
		if err := c.flushAndReply(2); err != nil {
			return err
		}
	}
	c.line = append(c.line[:0], "DATA\r\n"...)
	return c.flushAndReply(354)
}

func (c *conn) appendRcpt(r string) {
	c.line = append(c.line, "RCPT TO:<"...)
	c.line = append(c.line, r...)
	c.line = append(c.line, ">\r\n"...)
}

func (c *conn) flushAndReply(expect int) error {
	if _, err := c.bw.Write(c.line); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return err
	}
	_, _, err := c.reply(expect)
	return err
}

// reset ends any transaction (RSET); on a pooled connection it also finds out whether the relay
// has closed it meanwhile.
func (c *conn) reset() error {
	_, _, err := c.cmd(2, "RSET")
	return err
}

// quit says goodbye and closes the connection whatever the relay answers.
func (c *conn) quit() {
	_, _, _ = c.cmd(221, "QUIT")
	_ = c.nc.Close()
}

func (c *conn) close() { _ = c.nc.Close() }

// quitAndWait is quit that returns only once the relay has closed its end (or after wait): a
// relay that counts its clients' connections still counts this one until then, so a permit for
// it (Gate) is given back only afterwards.
func (c *conn) quitAndWait(wait time.Duration) {
	if _, _, err := c.cmd(221, "QUIT"); err == nil {
		_ = c.nc.SetReadDeadline(time.Now().Add(wait))
		_, _ = io.Copy(io.Discard, c.r.R)
	}
	_ = c.nc.Close()
}

// cmd writes one command line and reads its reply within the command timeout. expect is a
// reply code, or its first digit, that counts as success; 0 accepts any reply.
func (c *conn) cmd(expect int, line string) (int, string, error) {
	c.deadline(c.cmdTO)
	c.line = append(append(c.line[:0], line...), "\r\n"...)
	if _, err := c.bw.Write(c.line); err != nil {
		return 0, "", err
	}
	if err := c.bw.Flush(); err != nil {
		return 0, "", err
	}
	return c.reply(expect)
}

// reply reads one (possibly multi-line) reply; a code other than expect is a *replyError.
func (c *conn) reply(expect int) (int, string, error) {
	code, text, err := c.r.ReadResponse(0)
	if err != nil {
		var pe textproto.ProtocolError
		if errors.As(err, &pe) {
			return 0, "", fmt.Errorf("malformed reply from the relay: %w", err)
		}
		return 0, "", err
	}
	ok := expect == 0 || code == expect || (expect < 10 && code/100 == expect)
	if !ok {
		return code, text, replyErr(code, text)
	}
	return code, text, nil
}

// replyErr splits an RFC 3463 enhanced code off a refusal's text; RFC 2034 repeats it on
// every line, and it is kept once.
func replyErr(code int, text string) *replyError {
	e := &replyError{Code: code, Message: text}
	first, rest, ok := strings.Cut(text, " ")
	if !ok || !isEnhanced(first) {
		return e
	}
	e.Enhanced = first
	e.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return e
}

// isEnhanced reports whether s looks like "class.subject.detail" (RFC 3463 §2).
func isEnhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || (s[0] != '2' && s[0] != '4' && s[0] != '5') {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) == 0 || len(p) > 3 {
			return false
		}
		if _, err := strconv.Atoi(p); err != nil {
			return false
		}
	}
	return true
}

// checkLine refuses what would end a command line early and smuggle in another command (or cut
// it at a NUL); the outbox validates addresses long before, so this only guards the protocol.
// errNoSMTPUTF8 refuses a transaction whose envelope has an address with non-ASCII characters
// when the relay does not offer SMTPUTF8: RFC 6531 §3.2 forbids sending it, and a relay that took
// it anyway would mangle the address. It is permanent until the connector points at a relay
// that offers it (Exchange Online, Gmail and Postfix with smtputf8_enable do).
var errNoSMTPUTF8 = errors.New("the relay does not offer SMTPUTF8 (RFC 6531), which an address with non-ASCII characters needs")

// needsUTF8 reports whether an envelope address has a non-ASCII character (an internationalised
// local part or an unencoded IDN domain), which only SMTPUTF8 carries.
func needsUTF8(from string, rcpts []string) bool {
	if !isASCII(from) {
		return true
	}
	for _, r := range rcpts {
		if !isASCII(r) {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func checkLine(s string) error {
	if strings.ContainsAny(s, "\r\n\x00") {
		return errors.New("a line break or NUL in an SMTP command argument")
	}
	return nil
}

func (c *conn) deadline(d time.Duration) {
	if c.ctx != nil && c.ctx.Err() != nil {
		c.interrupt()
		return
	}
	_ = c.nc.SetDeadline(time.Now().Add(d))
}

// dialConn connects to the relay of cfg and runs the handshake.
func dialConn(ctx context.Context, cfg Config) (*conn, error) {
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	d := net.Dialer{Timeout: cfg.CommandTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	tlsCfg := cfg.TLSConfig
	switch {
	case tlsCfg == nil:
		tlsCfg = &tls.Config{ServerName: cfg.Host, MinVersion: tls.VersionTLS12}
	case tlsCfg.ServerName == "":
		tlsCfg = tlsCfg.Clone()
		tlsCfg.ServerName = cfg.Host // the certificate is checked against the host dialled
	}
	var startTLS *tls.Config
	switch cfg.TLS {
	case TLSImplicit:
		tc := tls.Client(nc, tlsCfg)
		_ = tc.SetDeadline(time.Now().Add(cfg.CommandTimeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		nc = tc
	case TLSStartTLS:
		startTLS = tlsCfg
	}
	var mech func() (sasl.Client, error)
	if cfg.Auth == AuthPlain || cfg.Auth == AuthLogin {
		mech = func() (sasl.Client, error) {
			if cfg.Secret == nil {
				return nil, errors.New("AUTH not attempted: no password source configured")
			}
			secret, err := cfg.Secret()
			if err != nil {
				return nil, fmt.Errorf("AUTH not attempted: %w", err)
			}
			if cfg.Auth == AuthLogin {
				return sasl.NewLoginClient(cfg.Username, secret), nil
			}
			return sasl.NewPlainClient("", cfg.Username, secret), nil
		}
	}
	c := newConn(nc, cfg.CommandTimeout, cfg.SubmitTimeout)
	// A relay that accepts the connection and then says nothing (or stalls in EHLO, STARTTLS or
	// AUTH) holds the send only until ctx ends, as it does once connected: the deadline in the
	// past is set on the TCP connection, which STARTTLS wraps, and deadline keeps it.
	raw := nc
	c.ctx = ctx
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	err = c.handshake(cfg.LocalName, startTLS, mech)
	interrupted := !stop() // its deadline in the past may be set after the handshake ended
	c.ctx = nil
	if err != nil || interrupted {
		c.close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: handshake interrupted: %w", addr, ctx.Err())
		}
		return nil, fmt.Errorf("%s: %w", addr, err) // a refusal keeps its code: 535 permanent, 454 temporary
	}
	return c, nil
}
