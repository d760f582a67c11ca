// Package natstest runs an embedded NATS server with JetStream for a test: a random loopback
// port, its store in the test's temp dir, no log output, shut down at cleanup. It is the
// current server from the nats-server/v2 module, not a distribution's older binary.
//
//	js := natstest.Start(t).JetStream(t)
//
// StartCluster runs several such servers routed into one JetStream cluster, for tests of a
// server's loss (Kill, Restart) with replicated streams. StartProcessCluster runs the same as
// nats-server processes, whose Kill is a SIGKILL: a crash, which an embedded server cannot have.
//
// Tests are skipped with -short.
package natstest

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// readyTimeout bounds how long the server may take to accept connections.
const readyTimeout = 10 * time.Second

// Server is an embedded NATS server. Its methods are safe for concurrent use.
type Server struct {
	mu   sync.Mutex
	opts *server.Options
	srv  *server.Server
}

// Option adjusts the server's options before it starts, for tests that need a limit or a
// feature the defaults lack (e.g. a small MaxPayload).
type Option func(*server.Options)

// WithoutJetStream runs a core NATS server only.
func WithoutJetStream() Option { return func(o *server.Options) { o.JetStream = false } }

// Start runs a server for tb and shuts it down at cleanup.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	if testing.Short() {
		tb.Skip("natstest: starts a NATS server; skipped with -short")
	}
	o := &server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  tb.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}
	for _, opt := range opts {
		opt(o)
	}
	s := &Server{opts: o}
	tb.Cleanup(s.Shutdown)
	s.start(tb)
	return s
}

func (s *Server) start(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	ns, err := server.NewServer(s.opts)
	if err != nil {
		tb.Fatalf("natstest: %v", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(readyTimeout) {
		ns.Shutdown()
		tb.Fatalf("natstest: server not ready within %s (port %d)", readyTimeout, s.opts.Port)
	}
	if s.opts.JetStream && !ns.JetStreamEnabled() {
		ns.Shutdown()
		tb.Fatal("natstest: server accepts connections but JetStream is not enabled")
	}
	s.srv = ns
	// Keep the port for Restart, so clients reconnect to the same address.
	s.opts.Port = ns.Addr().(*net.TCPAddr).Port
}

// URL is the server's client URL, nats://127.0.0.1:port.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv.ClientURL()
}

// Embedded returns the running server, for tests that inspect it (JetStream accounts, clients).
func (s *Server) Embedded() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

// Conn returns a connection that reconnects forever and quickly, as a service's would, closed at
// tb's cleanup; opts are added to those.
func (s *Server) Conn(tb testing.TB, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(20 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(s.URL(), opts...)
	if err != nil {
		tb.Fatalf("natstest: connect: %v", err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a new connection. Async publishes time out after 5s,
// so an acknowledgement lost in a restart fails instead of waiting forever.
func (s *Server) JetStream(tb testing.TB) jetstream.JetStream {
	tb.Helper()
	js, err := jetstream.New(s.Conn(tb), jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		tb.Fatalf("natstest: jetstream: %v", err)
	}
	return js
}

// StoreDir is the server's JetStream store directory (its streams under jetstream/), for a test
// that copies or destroys it while the server is down (a backup and restore drill).
func (s *Server) StoreDir() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.StoreDir
}

// Shutdown stops the server and waits until it is down; clients start reconnecting. It does
// nothing when the server is not running.
func (s *Server) Shutdown() {
	s.mu.Lock()
	ns := s.srv
	s.mu.Unlock()
	if ns == nil {
		return
	}
	ns.Shutdown()
	ns.WaitForShutdown()
}

// Restart shuts the server down if it runs and starts it again on the same port and store
// directory: streams, consumers and messages are kept, and clients reconnect by themselves.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Shutdown()
	s.start(tb)
}
