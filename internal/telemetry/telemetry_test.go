package telemetry_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postamt/postamt/internal/telemetry"
)

func TestOpsServer(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "postamt_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Inc()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ops := telemetry.NewOpsServer(lis.Addr().String(), reg, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ops.Serve(ctx, lis) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	tests := []struct{ path, want string }{
		{"/metrics", "postamt_test_total 1"},
		{"/debug/pprof/", "goroutine"},
		{"/healthz", "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			resp, err := http.Get("http://" + lis.Addr().String() + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), tt.want) {
				t.Errorf("GET %s = %d, body lacks %q", tt.path, resp.StatusCode, tt.want)
			}
		})
	}
}
