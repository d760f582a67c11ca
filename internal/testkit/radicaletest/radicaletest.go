// Package radicaletest spawns a real Radicale CalDAV server for a test, on a free loopback port
// with its collections in the test's temp dir and htpasswd authentication for the users the test
// names, so CalDAV clients are tested against a server that enforces ETags, preconditions and
// credentials the way deployed servers do, not against a fake of our own.
//
//	srv := radicaletest.Start(t, radicaletest.WithUser("alice", "secret"))
//	calendarURL := srv.CalendarURL("alice", "work") // http://127.0.0.1:PORT/alice/work/
//
// Stop (SIGTERM) or Kill (SIGKILL) and Restart take the server down and bring it back on the
// same port with the same storage, for tests of what a client does while its server is
// unreachable.
//
// Tests are skipped with -short. Without -short a missing radicale fails the test (Debian:
// apt-get install radicale), because a CalDAV test that silently skips proves nothing.
package radicaletest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/freeport"
)

const (
	// startTimeout bounds how long a spawned server may take to answer; Radicale is Python and
	// imports for about a second on an idle machine, more on a loaded CI runner.
	startTimeout = 30 * time.Second
	// stopTimeout is how long Stop waits after SIGTERM before it kills the server.
	stopTimeout = 5 * time.Second
	// tokenHeader is the response header that carries the server's token, so that readiness is
	// only reported for our own process and never for another server that took the port.
	tokenHeader = "X-Radicaletest-Token"
)

// User is an account in the server's htpasswd file.
type User struct {
	Name     string // login, also the name of the user's home collection /<Name>/
	Password string // stored in plain text in the test's htpasswd file
}

// Server is a spawned Radicale. Its methods are safe for concurrent use.
type Server struct {
	dir   string
	users []User
	token string

	mu     sync.Mutex
	port   int
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd's process has exited
}

// Option changes how the server runs.
type Option func(*Server)

// WithUser adds an account; the server accepts exactly the accounts given, and by Radicale's
// default rights (owner_only) each user reads and writes only below /<name>/.
func WithUser(name, password string) Option {
	return func(s *Server) { s.users = append(s.users, User{Name: name, Password: password}) }
}

// Start spawns Radicale for tb and stops it at cleanup. It skips the test in -short mode, and
// fails it when radicale is not installed, when no user is given, or when the server does not
// come up.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	if testing.Short() {
		tb.Skip("radicaletest: spawns radicale; skipped with -short")
	}
	if _, err := exec.LookPath("radicale"); err != nil {
		tb.Fatal("radicaletest: radicale is not on PATH (Debian: apt-get install radicale; elsewhere: pip install radicale)")
	}
	s := &Server{dir: tb.TempDir()}
	for _, o := range opts {
		o(s)
	}
	if err := s.writeFiles(); err != nil {
		tb.Fatalf("radicaletest: %v", err)
	}
	tb.Cleanup(s.Stop)
	var err error
	for range 5 { // a port found free can be taken by another process before radicale binds it
		var port int
		if port, err = freePort(); err != nil {
			tb.Fatalf("radicaletest: %v", err)
		}
		if err = s.start(port); err == nil {
			return s
		}
	}
	tb.Fatalf("radicaletest: %v", err)
	return nil
}

// writeFiles writes the htpasswd file and prepares the token. Passwords are stored in plain
// text: the Debian package checks only plain, md5 (apr1) and, with python3-bcrypt installed,
// bcrypt, and these are throwaway test accounts in a temp dir.
func (s *Server) writeFiles() error {
	if len(s.users) == 0 {
		return errors.New("no users: pass at least one WithUser")
	}
	var b strings.Builder
	for _, u := range s.users {
		if u.Name == "" || strings.ContainsAny(u.Name, ":/\r\n") || strings.ContainsAny(u.Password, "\r\n") {
			return fmt.Errorf("user %q: a name must be non-empty without ':', '/' or line breaks, a password without line breaks", u.Name)
		}
		fmt.Fprintf(&b, "%s:%s\n", u.Name, u.Password)
	}
	if err := os.WriteFile(filepath.Join(s.dir, "users"), []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write htpasswd file: %w", err)
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:]) // never fails (crypto/rand)
	s.token = hex.EncodeToString(tok[:])
	return nil
}

// freePort is a port for the server to bind (freeport says why not port 0).
func freePort() (int, error) { return freeport.Port() }

// config is Radicale's configuration for port. It is the only configuration file read (-C
// replaces the system's /etc/radicale/config), so the host's settings never leak in.
func (s *Server) config(port int) string {
	return fmt.Sprintf(`[server]
hosts = 127.0.0.1:%d

[auth]
type = htpasswd
htpasswd_filename = %s
htpasswd_encryption = plain
# no penalty pause after a failed login: tests try wrong passwords on purpose
delay = 0

[rights]
type = owner_only

[storage]
filesystem_folder = %s

[logging]
level = info
mask_passwords = True

[headers]
%s = %s
`, port, filepath.Join(s.dir, "users"), filepath.Join(s.dir, "collections"), tokenHeader, s.token)
}

// start runs radicale on port and waits until it answers. The caller holds no lock.
func (s *Server) start(port int) error {
	cfgFile := filepath.Join(s.dir, "config")
	if err := os.WriteFile(cfgFile, []byte(s.config(port)), 0o600); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	logFile := filepath.Join(s.dir, "radicale.log")
	logw, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer logw.Close() // the child keeps its own descriptor
	cmd := exec.Command("radicale", "-C", cfgFile)
	cmd.Stdout, cmd.Stderr = logw, logw
	cmd.Env = append(os.Environ(), "RADICALE_CONFIG=") // -C wins anyway; make it explicit
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start radicale: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.port, s.cmd, s.exited = port, cmd, exited
	s.mu.Unlock()

	if err := s.waitReady(port, exited); err != nil {
		s.Stop()
		log, _ := os.ReadFile(logFile)
		return fmt.Errorf("radicale on port %d: %w\n%s", port, err, lastLines(string(log), 8))
	}
	return nil
}

// waitReady polls the server until it answers with our token, its process exits, or the
// deadline passes.
func (s *Server) waitReady(port int, exited <-chan struct{}) error {
	c := &http.Client{
		Timeout:       time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	defer c.CloseIdleConnections()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	u := "http://" + addr(port) + "/"
	for {
		resp, err := c.Get(u)
		if err == nil {
			resp.Body.Close()
			if got := resp.Header.Get(tokenHeader); got != s.token {
				return fmt.Errorf("port taken by another server (it answered %s without our token)", resp.Status)
			}
			return nil
		}
		select {
		case <-exited:
			return errors.New("radicale exited")
		case <-deadline.C:
			return fmt.Errorf("no answer within %s: %w", startTimeout, err)
		case <-tick.C:
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// Addr is the server's host:port.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return addr(s.port)
}

// URL is the server's root URL with a trailing slash, e.g. http://127.0.0.1:PORT/.
func (s *Server) URL() string { return "http://" + s.Addr() + "/" }

// CalendarURL is the URL of the calendar collection name of user, with a trailing slash. The
// collection does not exist until a client creates it (MKCALENDAR).
func (s *Server) CalendarURL(user, name string) string { return s.URL() + user + "/" + name + "/" }

// StorageDir is the directory Radicale keeps its collections in; it survives Stop and Restart.
func (s *Server) StorageDir() string { return filepath.Join(s.dir, "collections") }

// Stop shuts the server down with SIGTERM (SIGKILL after a grace period) and returns once the
// process is gone and the port is closed. It does nothing when the server is not running.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		_ = cmd.Process.Kill()
		<-exited
	}
}

// Kill ends the server with SIGKILL, as a crash or an OOM kill would: requests in flight get no
// answer and Radicale writes nothing more to its storage. It returns once the process is gone.
// Restart brings the server back on the same port and storage. It does nothing when the server
// is not running.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Kill()
	<-exited
}

// Restart stops the server if it runs and starts it again on the same port and storage, so
// clients reach the same URL and find what they wrote before.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Stop()
	s.mu.Lock()
	port := s.port
	s.mu.Unlock()
	if err := s.start(port); err != nil {
		tb.Fatalf("radicaletest: restart: %v", err)
	}
}
