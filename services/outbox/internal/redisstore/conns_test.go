package redisstore_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// clock is a settable time for permits' leases.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }
func newClock() *clock               { return &clock{t: time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)} }
func open(t *testing.T, g *redisstore.ConnGate, w string) string {
	t.Helper()
	p, err := g.Open(context.Background(), w)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConnectionPermits: two replicas share a connector's limit of two connections. A third
// waits; the holder's replica gives an idle connection up for it (Keep false) but not for its
// own waiters; waiters are served in the order they began to wait; a replica that stops
// renewing loses its permits after PermitTTL.
func TestConnectionPermits(t *testing.T) {
	ctx := context.Background()
	l := redisstore.New(redistest.Start(t).Client(t), time.Hour, 0)
	clk := newClock()
	pa, pb := l.NewPermits(clk.now), l.NewPermits(clk.now)
	a, b := pa.Gate("kanzlei", "exo", 2), pb.Gate("kanzlei", "exo", 2)

	a1, a2 := open(t, a, a.Waiter()), open(t, a, a.Waiter())
	if a1 == "" || a2 == "" || a1 == a2 {
		t.Fatalf("permits %q, %q: want two distinct", a1, a2)
	}
	aw := a.Waiter() // a's own third conversation waits
	if p := open(t, a, aw); p != "" {
		t.Fatalf("a third permit %q was granted over a limit of 2", p)
	}
	if keep, err := a.Keep(ctx, a1); err != nil || !keep {
		t.Fatalf("Keep with only the replica's own waiter = %v, %v; want kept", keep, err)
	}
	clk.add(time.Millisecond)
	bw := b.Waiter()
	if p := open(t, b, bw); p != "" {
		t.Fatalf("b granted %q while both are held", p)
	}
	if keep, err := a.Keep(ctx, a1); err != nil || keep {
		t.Fatalf("Keep while another replica waits = %v, %v; want the connection closed", keep, err)
	}
	// The connection is still open until it has closed: its permit still counts.
	if p := open(t, b, bw); p != "" {
		t.Fatal("b granted while a's connection, told to close, had not given its permit back")
	}
	if err := a.Close(ctx, a1); err != nil {
		t.Fatal(err)
	}
	if n, _ := l.OpenConnections(ctx, "kanzlei", "exo", clk.now()); n != 1 {
		t.Fatalf("%d connections counted after one was given back, want 1", n)
	}
	// One permit is free: it is a's waiter's, who asked first, not b's.
	if p := open(t, b, bw); p != "" {
		t.Fatalf("b (waiting since later) took the free permit before a's earlier waiter")
	}
	a3 := open(t, a, aw)
	if a3 == "" {
		t.Fatal("a's earlier waiter was not granted the free permit")
	}
	if err := a.Close(ctx, a2); err != nil {
		t.Fatal(err)
	}
	b1 := open(t, b, bw)
	if b1 == "" {
		t.Fatal("b not granted after a gave a permit back")
	}
	// a stops renewing (it died); b renews. After the TTL a's permit is gone, b's stays.
	clk.add(redisstore.PermitTTL / 2)
	if lost, err := pb.Renew(ctx); err != nil || lost != 0 {
		t.Fatalf("b's Renew = %d lost, %v; want none lost", lost, err)
	}
	clk.add(redisstore.PermitTTL/2 + time.Millisecond)
	if n, _ := l.OpenConnections(ctx, "kanzlei", "exo", clk.now()); n != 1 {
		t.Fatalf("%d connections counted after a's lease ran out, want b's 1", n)
	}
	if lost, err := pa.Renew(ctx); err != nil || lost != 1 {
		t.Fatalf("a's late Renew = %d lost, %v; want its 1 permit lost", lost, err)
	}
	if keep, err := a.Keep(ctx, a3); err != nil || keep {
		t.Fatalf("Keep of a lost permit = %v, %v; want false", keep, err)
	}
	if p := open(t, b, b.Waiter()); p == "" {
		t.Fatal("the permit of the replica that died did not come back")
	}
	// Both permits are b's now. A waiter of a that leaves (it found an idle connection of its
	// own) no longer makes b give its connections up, nor holds up a later waiter's turn.
	gone := a.Waiter()
	if p := open(t, a, gone); p != "" {
		t.Fatal("granted over the limit")
	}
	if err := a.Leave(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if keep, err := b.Keep(ctx, b1); err != nil || !keep {
		t.Fatalf("Keep after the only other waiter left = %v, %v; want kept", keep, err)
	}
}
