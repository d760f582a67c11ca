package redisx_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

const secret = "s3cr3t-pw"

func TestOpen(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)

	t.Run("connects and pings", func(t *testing.T) {
		c, err := redisx.Open(ctx, srv.URL())
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer c.Close()
		if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Errorf("SET: %v", err)
		}
	})
	t.Run("WithClientName names the connections", func(t *testing.T) {
		c, err := redisx.Open(ctx, srv.URL(), redisx.WithClientName("postamt-test"))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer c.Close()
		if got, want := c.ClientGetName(ctx).Val(), "postamt-test"; got != want {
			t.Errorf("CLIENT GETNAME = %q, want %q", got, want)
		}
	})
}

func TestOpenErrorsHideThePassword(t *testing.T) {
	ctx := context.Background()
	closedPort := func(t *testing.T) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	tests := []struct {
		name    string
		url     func(t *testing.T) string
		wantErr error // nil: any error
	}{
		{"bad scheme", func(*testing.T) string { return "http://u:" + secret + "@127.0.0.1:1/0" }, redisx.ErrInvalidURL},
		{"bad database", func(*testing.T) string { return "redis://u:" + secret + "@127.0.0.1:1/x" }, redisx.ErrInvalidURL},
		{"unparsable", func(*testing.T) string { return "redis://u:" + secret + "@127.0.0.1:1/%zz" }, redisx.ErrInvalidURL},
		{"sentinel without a master name", func(*testing.T) string { return "redis+sentinel://u:" + secret + "@127.0.0.1:1/0" }, redisx.ErrInvalidURL},
		{"cluster with a bad option", func(*testing.T) string { return "redis+cluster://u:" + secret + "@127.0.0.1:1?bogus=1" }, redisx.ErrInvalidURL},
		{"cluster nobody listening", func(t *testing.T) string { return "redis+cluster://u:" + secret + "@" + closedPort(t) }, nil},
		{"nobody listening", func(t *testing.T) string { return "redis://u:" + secret + "@" + closedPort(t) + "/0" }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := redisx.Open(ctx, tt.url(t), redisx.WithPingTimeout(2*time.Second), redisx.WithRetries(-1, 1))
			if err == nil {
				c.Close()
				t.Fatal("Open succeeded, want an error")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error = %v, want %v", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q contains the password", err)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"redis://u:" + secret + "@h:6379/0", "redis://u:xxxxx@h:6379/0"},
		{"redis://h:6379/0", "redis://h:6379/0"},
		{"redis://u:" + secret + "@h/%zz", "(unparsable URL)"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := redisx.Redact(tt.in); got != tt.want {
				t.Errorf("Redact = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestProbe(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer c.Close()
	probe := redisx.Probe(c)
	if err := probe(ctx); err != nil {
		t.Fatalf("probe of a running Redis: %v", err)
	}
	srv.Kill()
	if err := probe(ctx); err == nil {
		t.Error("probe of a killed Redis succeeded, want an error")
	}
}

// TestPartitionIsStable pins the mapping: stored keys carry their partition, so a change here
// would orphan every record. Fails if someone "improves" the hash.
func TestPartitionIsStable(t *testing.T) {
	for key, want := range map[string]int{"kanzlei": 9, "acme": 15, "e-1": 2, "": 5} {
		if got := redisx.Partition(key, 16); got != want {
			t.Errorf("redisx.Partition(%q, 16) = %d, want %d", key, got, want)
		}
	}
}
