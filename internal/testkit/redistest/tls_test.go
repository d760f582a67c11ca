package redistest_test

import (
	"context"
	"crypto/tls"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/testkit/redistest"
)

// TestTLSAndACL: with WithTLS and WithUser a server refuses a client without TLS and one without
// credentials, and serves one with both, on every topology.
func TestTLSAndACL(t *testing.T) {
	ctx := context.Background()
	opts := []redistest.Option{redistest.WithTLS(), redistest.WithUser("postamt", "s3cret")}
	type target struct {
		addr, url string
		tls       *tls.Config
		ok        func(t *testing.T) error // a command through the kit's own client
	}
	topologies := []struct {
		name  string
		start func(t *testing.T) target
	}{
		{"standalone", func(t *testing.T) target {
			s := redistest.Start(t, opts...)
			return target{s.Addr(), s.URL(), s.TLSConfig(), func(t *testing.T) error { return s.Client(t).Set(ctx, "k", "v", 0).Err() }}
		}},
		{"cluster", func(t *testing.T) target {
			c := redistest.StartCluster(t, opts...)
			return target{c.Addrs()[0], c.URL(), c.TLSConfig(), func(t *testing.T) error { return c.Client(t).Set(ctx, "k", "v", 0).Err() }}
		}},
		{"sentinel", func(t *testing.T) target {
			s := redistest.StartSentinel(t, append(opts, redistest.WithSentinelPassword("watch"))...)
			return target{s.Master(t).Addr(), s.URL(), s.TLSConfig(), func(t *testing.T) error { return s.Client(t).Set(ctx, "k", "v", 0).Err() }}
		}},
	}
	for _, tp := range topologies {
		t.Run(tp.name, func(t *testing.T) {
			begin := time.Now()
			tg := tp.start(t)
			t.Logf("started in %s", time.Since(begin).Round(time.Millisecond))
			u, err := url.Parse(tg.url)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(u.Scheme, "rediss") {
				t.Errorf("URL scheme %q, want rediss...", u.Scheme)
			}
			if pw, _ := u.User.Password(); u.User.Username() != "postamt" || pw != "s3cret" {
				t.Errorf("URL credentials %v, want postamt:s3cret", u.User)
			}
			if err := tg.ok(t); err != nil {
				t.Errorf("with TLS and credentials: %v", err)
			}
			// Plain clients of one data node, so each fails for the reason tested.
			try := func(o *redis.Options) error {
				o.Addr, o.MaxRetries, o.DialTimeout = tg.addr, -1, time.Second
				c := redis.NewClient(o)
				defer c.Close()
				return c.Ping(ctx).Err()
			}
			if err := try(&redis.Options{TLSConfig: tg.tls, Username: "postamt", Password: "s3cret"}); err != nil {
				t.Errorf("PING with TLS and credentials: %v", err)
			}
			if err := try(&redis.Options{TLSConfig: tg.tls}); err == nil {
				t.Error("PING without credentials succeeded, want it refused")
			}
			if err := try(&redis.Options{Username: "postamt", Password: "s3cret"}); err == nil {
				t.Error("PING without TLS succeeded, want it refused")
			}
			if err := try(&redis.Options{TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12}, Username: "postamt", Password: "s3cret"}); err == nil {
				t.Error("PING trusting the system CAs only succeeded, want the certificate rejected")
			}
		})
	}
}
