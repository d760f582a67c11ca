// Package redistest spawns a real redis-server for a test, on a free loopback port with its data
// in the test's temp dir, so tests never share state or collide with a developer's Redis.
//
// A server per test is cheap (a few milliseconds) and is the default pattern:
//
//	rdb := redistest.Start(t).Client(t)
//
// WithCluster runs the server as a one-node Redis Cluster that serves every slot, so code under
// test meets cluster rules (CROSSSLOT for keys of one command or script in different slots)
// through a *redis.ClusterClient:
//
//	rdb := redistest.Start(t, redistest.WithCluster()).ClusterClient(t)
//
// Tests are skipped with -short and when redis-server is not on PATH.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/testkit/freeport"
)

// startTimeout bounds how long a spawned server may take to answer PING.
const startTimeout = 10 * time.Second

// Server is a spawned redis-server. Its methods are safe for concurrent use.
type Server struct {
	dir     string
	aof     bool
	cluster bool
	args    []string

	mu     sync.Mutex
	port   int
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd's process has exited
}

// Option changes how the server runs.
type Option func(*Server)

// WithAOF turns the append-only file on with an fsync per write, so data survives Kill and
// Restart as in production; fault tests use it. Without it the server keeps nothing on disk
// (--save "" --appendonly no) and Restart starts empty.
func WithAOF() Option { return func(s *Server) { s.aof = true } }

// WithArgs passes extra configuration to redis-server, e.g. "--maxmemory", "64mb", for tests that
// need a setting the defaults lack.
func WithArgs(args ...string) Option {
	return func(s *Server) { s.args = append(s.args, args...) }
}

// WithCluster runs the server in cluster mode with all 16384 slots assigned to it; use
// ClusterClient. The cluster state survives Restart.
func WithCluster() Option { return func(s *Server) { s.cluster = true } }

// Start spawns a redis-server for tb and kills it at cleanup. It skips the test in -short mode
// and when redis-server is not installed, and fails it when the server does not come up.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	if testing.Short() {
		tb.Skip("redistest: spawns redis-server; skipped with -short")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Skip("redistest: redis-server is not on PATH (Debian: apt-get install redis-server; macOS: brew install redis)")
	}
	s := &Server{dir: tb.TempDir()}
	for _, o := range opts {
		o(s)
	}
	tb.Cleanup(s.Kill)
	var err error
	for range 5 { // a port found free can be taken by another process before redis binds it
		var port int
		if port, err = freePort(); err != nil {
			tb.Fatalf("redistest: %v", err)
		}
		if err = s.start(port); err == nil {
			return s
		}
	}
	tb.Fatalf("redistest: %v", err)
	return nil
}

// freePort is a port for the server to bind (freeport says why not port 0).
func freePort() (int, error) { return freeport.Port() }

// start runs redis-server on port and waits until it answers PING. The caller holds no lock.
func (s *Server) start(port int) error {
	logFile := filepath.Join(s.dir, "redis.log")
	args := []string{
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", s.dir,
		"--save", "", "--logfile", logFile, "--daemonize", "no",
	}
	if s.aof {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	if s.cluster {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(s.dir, "nodes.conf"))
	}
	args = append(args, s.args...)
	cmd := exec.Command("redis-server", args...)
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.port, s.cmd, s.exited = port, cmd, exited
	s.mu.Unlock()

	err := waitReady(port, cmd.Process.Pid, exited)
	if err == nil && s.cluster {
		err = assignSlots(port)
	}
	if err != nil {
		s.Kill()
		log, _ := os.ReadFile(logFile)
		return fmt.Errorf("redis-server on port %d: %w\n%s", port, err, lastLines(string(log), 5))
	}
	return nil
}

// waitReady polls PING until the server of process pid answers, the process exits, or the
// deadline passes. It checks the answering process's id, so a server of someone else that
// grabbed the port is never mistaken for ours.
func waitReady(port, pid int, exited <-chan struct{}) error {
	c := redis.NewClient(&redis.Options{Addr: addr(port), MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := c.InfoMap(ctx, "server").Result()
		cancel()
		if err == nil {
			if got := info["Server"]["process_id"]; got != strconv.Itoa(pid) {
				return fmt.Errorf("port taken by another redis-server (process %s)", got)
			}
			return nil
		}
		select {
		case <-exited:
			return errors.New("redis-server exited")
		case <-deadline.C:
			return fmt.Errorf("no answer within %s: %w", startTimeout, err)
		case <-tick.C:
		}
	}
}

// assignSlots gives the one node every slot (unless nodes.conf already did, after a restart) and
// waits until the cluster reports ok.
func assignSlots(port int) error {
	c := redis.NewClient(&redis.Options{Addr: addr(port), MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := c.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER INFO: %w", err)
		}
		if strings.Contains(info, "cluster_state:ok") {
			return nil
		}
		if strings.Contains(info, "cluster_slots_assigned:0\r") {
			if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
				return fmt.Errorf("CLUSTER ADDSLOTSRANGE: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not ok within %s: %s", startTimeout, info)
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

// URL is the server's redis:// URL, for code under test that is configured by REDIS_URL.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Client returns a client of the server, closed at tb's cleanup.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// ClusterClient returns a cluster client of a server started WithCluster, closed at tb's cleanup.
func (s *Server) ClusterClient(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	if !s.cluster {
		tb.Fatal("redistest: ClusterClient needs a server started WithCluster")
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{s.Addr()}})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Kill stops the server with SIGKILL, as a crash would, and returns once the process is gone.
// It does nothing when the server is not running.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// Restart kills the server if it runs and starts it again on the same port and data directory,
// so clients reconnect to the same address. With WithAOF the data is still there.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Kill()
	s.mu.Lock()
	port := s.port
	s.mu.Unlock()
	if err := s.start(port); err != nil {
		tb.Fatalf("redistest: restart: %v", err)
	}
}
