// Package servetest runs a server for a test on a fresh loopback listener and stops it cleanly
// at cleanup, so every test of a gRPC service starts and stops it the same way.
package servetest

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Run starts run on a listener on 127.0.0.1:0 and returns its address. At cleanup it cancels
// run's context, waits for run to return and fails tb if run returned an error: a server that
// does not drain cleanly fails the test that used it.
func Run(tb testing.TB, run func(ctx context.Context, lis net.Listener) error) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, lis) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("server: %v", err)
		}
	})
	return lis.Addr().String()
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
