package redistest_test

import (
	"context"
	"testing"

	"github.com/postamt/postamt/internal/testkit/redistest"
)

func TestRestartKeepsAOFData(t *testing.T) {
	s := redistest.Start(t, redistest.WithAOF())
	ctx := context.Background()
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Restart(t)
	got, err := s.Client(t).Get(ctx, "k").Result()
	if err != nil || got != "v" {
		t.Errorf("after restart: %q, %v; want v", got, err)
	}
}

func TestServersAreIsolated(t *testing.T) {
	a, b := redistest.Start(t), redistest.Start(t)
	ctx := context.Background()
	if err := a.Client(t).Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n := b.Client(t).Exists(ctx, "k").Val(); n != 0 || a.Addr() == b.Addr() {
		t.Errorf("servers share state or address: %s %s", a.Addr(), b.Addr())
	}
}
