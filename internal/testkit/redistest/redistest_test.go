package redistest_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/testkit/redistest"
)

func TestStart(t *testing.T) {
	ctx := context.Background()
	t.Run("answers on Addr and URL", func(t *testing.T) {
		s := redistest.Start(t)
		if err := s.Client(t).Ping(ctx).Err(); err != nil {
			t.Fatalf("PING via Client: %v", err)
		}
		opts, err := redis.ParseURL(s.URL())
		if err != nil {
			t.Fatalf("ParseURL(%q): %v", s.URL(), err)
		}
		if got, want := opts.Addr, s.Addr(); got != want {
			t.Errorf("URL address = %q, want %q", got, want)
		}
	})
	t.Run("servers are isolated", func(t *testing.T) {
		a, b := redistest.Start(t), redistest.Start(t)
		if a.Addr() == b.Addr() {
			t.Fatalf("both servers on %s", a.Addr())
		}
		if err := a.Client(t).Set(ctx, "k", "a", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if got, want := b.Client(t).Exists(ctx, "k").Val(), int64(0); got != want {
			t.Errorf("EXISTS k on the other server = %d, want %d", got, want)
		}
	})
	t.Run("WithArgs configures the server", func(t *testing.T) {
		s := redistest.Start(t, redistest.WithArgs("--maxmemory", "12345678"))
		got, err := s.Client(t).ConfigGet(ctx, "maxmemory").Result()
		if err != nil {
			t.Fatal(err)
		}
		if got, want := got["maxmemory"], "12345678"; got != want {
			t.Errorf("maxmemory = %q, want %q", got, want)
		}
	})
}

func TestKillAndRestart(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		opts    []redistest.Option
		wantKey bool
	}{
		{"with AOF the data survives", []redistest.Option{redistest.WithAOF()}, true},
		{"without AOF it starts empty", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := redistest.Start(t, tt.opts...)
			addr := s.Addr()
			c := s.Client(t)
			if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatal(err)
			}

			s.Kill()
			if conn, err := net.Dial("tcp", addr); err == nil {
				conn.Close()
				t.Fatal("connected after Kill, want the port closed")
			}

			s.Restart(t)
			if got := s.Addr(); got != addr {
				t.Errorf("Addr after Restart = %s, want the same %s", got, addr)
			}
			got, err := c.Get(ctx, "k").Result() // the old client reconnects
			switch {
			case tt.wantKey && (err != nil || got != "v"):
				t.Errorf("GET k after restart = %q, %v; want %q", got, err, "v")
			case !tt.wantKey && !errors.Is(err, redis.Nil):
				t.Errorf("GET k after restart = %q, %v; want redis.Nil", got, err)
			}
		})
	}
}

// TestRestartWith: the extra arguments apply to that one start only. Started with the AOF off
// (and no RDB), the server holds nothing of its AOF; restarted as configured, it has it again.
func TestRestartWith(t *testing.T) {
	ctx := context.Background()
	s := redistest.Start(t, redistest.WithAOF())
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.RestartWith(t, "--appendonly", "no")
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Errorf("with --appendonly no: %d keys, %v; want none (the AOF not read)", n, err)
	}
	s.Restart(t)
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Errorf("restarted as configured: k = %q, %v; want the AOF's v", v, err)
	}
	if s.Dir() == "" {
		t.Error("no data directory")
	}
}

func TestKillTwiceIsHarmless(t *testing.T) {
	s := redistest.Start(t)
	s.Kill()
	s.Kill()
}

func TestCluster(t *testing.T) {
	ctx := context.Background()
	s := redistest.Start(t, redistest.WithCluster())
	c := s.ClusterClient(t)
	t.Run("serves every slot", func(t *testing.T) {
		if err := c.Set(ctx, "{a}:1", "v", 0).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
		if err := c.MSet(ctx, "{a}:2", "v", "{a}:3", "v").Err(); err != nil {
			t.Errorf("MSET within one slot: %v", err)
		}
	})
	t.Run("rejects keys of different slots in one command", func(t *testing.T) {
		// Through a plain client: the cluster client would split the command by slot.
		err := s.Client(t).MSet(ctx, "{a}:x", "v", "{b}:y", "v").Err()
		if err == nil || !strings.Contains(err.Error(), "CROSSSLOT") {
			t.Errorf("MSET across slots: err = %v, want CROSSSLOT", err)
		}
	})
	t.Run("survives a restart", func(t *testing.T) {
		s.Restart(t)
		if err := s.ClusterClient(t).Set(ctx, "{a}:4", "v", 0).Err(); err != nil {
			t.Errorf("SET after restart: %v", err)
		}
	})
}
