// Package servetest runs a server for a test on a fresh loopback listener and stops it cleanly
// at cleanup, so every test of a gRPC service starts and stops it the same way.
package servetest

import (
	"context"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Run starts run on a listener on 127.0.0.1:0 and returns its address. At cleanup it cancels
// run's context, waits for run to return and fails tb if run returned an error: a server that
// does not drain cleanly fails the test that used it.
func Run(tb testing.TB, run func(ctx context.Context, lis net.Listener) error) string {
	tb.Helper()
	addr, _ := Start(tb, run)
	return addr
}

// Start is Run for a test that stops the server itself (a drain with streams open, a replica
// going away): stop cancels run's context, waits for run to return and returns its error, once;
// later calls, and cleanup, return the same.
func Start(tb testing.TB, run func(ctx context.Context, lis net.Listener) error) (addr string, stop func() error) {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, lis) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	tb.Cleanup(func() {
		if err := stop(); err != nil {
			tb.Errorf("server: %v", err)
		}
	})
	return lis.Addr().String(), stop
}

// Dial returns a plaintext client connection to addr, closed at cleanup.
func Dial(tb testing.TB, addr string) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}
