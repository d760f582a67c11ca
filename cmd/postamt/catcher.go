package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// catcher is the development mail catcher of `postamt up`: an SMTP server on loopback that
// accepts every message and writes it to a file, so mail "sent" on a laptop can be read and
// never leaves the machine. The dev tenant's default connector points at it.
type catcher struct {
	dir string
	srv *smtp.Server
	lis net.Listener
	n   atomic.Int64
}

// maxCaughtBytes bounds one caught message, like a relay's size limit.
const maxCaughtBytes = 64 << 20

func startCatcher(dir string) (*catcher, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // G301: under the developer's ./data, for them to read the caught mail
		return nil, fmt.Errorf("mail catcher directory: %w", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("mail catcher: %w", err)
	}
	c := &catcher{dir: dir, lis: lis}
	c.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &caughtSession{c: c}, nil }))
	c.srv.Domain = "localhost"
	c.srv.MaxMessageBytes = maxCaughtBytes
	// Like the relays of the big providers: mail to jörg@… is caught, not refused for SMTPUTF8.
	c.srv.EnableSMTPUTF8 = true
	c.srv.ReadTimeout, c.srv.WriteTimeout = time.Minute, time.Minute
	go func() { _ = c.srv.Serve(lis) }()
	return c, nil
}

func (c *catcher) addr() (string, int) {
	a := c.lis.Addr().(*net.TCPAddr)
	return a.IP.String(), a.Port
}

func (c *catcher) close() { _ = c.srv.Close() }

type caughtSession struct {
	c     *catcher
	from  string
	rcpts []string
}

// Mail accepts any sender: the catcher is for looking at what would have been sent.
func (s *caughtSession) Mail(from string, _ *smtp.MailOptions) error {
	s.from = from
	return nil
}

// Rcpt accepts any recipient; nothing leaves the machine.
func (s *caughtSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.rcpts = append(s.rcpts, to)
	return nil
}

// Data writes the message with the envelope in front, as X-Postamt-Envelope-* lines.
func (s *caughtSession) Data(r io.Reader) error {
	name := filepath.Join(s.c.dir, time.Now().UTC().Format("20060102T150405")+"-"+strconv.FormatInt(s.c.n.Add(1), 10)+".eml")
	f, err := os.Create(name) //nolint:gosec // G304: a name made above, in the catcher's directory
	if err != nil {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "cannot store the message"}
	}
	_, err = fmt.Fprintf(f, "X-Postamt-Envelope-From: %s\r\nX-Postamt-Envelope-To: %v\r\n", s.from, s.rcpts)
	if err == nil {
		_, err = io.Copy(f, r)
	}
	err = errors.Join(err, f.Close())
	if err != nil {
		_ = os.Remove(name)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "cannot store the message"}
	}
	return nil
}

// Reset forgets the envelope between messages on one connection.
func (s *caughtSession) Reset() { s.from, s.rcpts = "", nil }

// Logout has nothing to release.
func (s *caughtSession) Logout() error { return nil }
