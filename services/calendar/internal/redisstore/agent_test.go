package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
	"github.com/postamt/postamt/services/calendar/internal/redisstore"
)

// TestClaimAgentNamesTheReplacedSession: claiming the user's agent slot tells the replicas
// which session must stop — the previous one — and says nothing when there was none or the
// session claims again, so a late message can never name the newest session.
func TestClaimAgentNamesTheReplacedSession(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	sub := rdb.Subscribe(ctx, redisstore.NotifyChannel)
	t.Cleanup(func() { _ = sub.Close() })
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	s := redisstore.New(rdb, redisstore.Options{})
	now := time.Now()
	for i, c := range []struct{ session, prev string }{{"A", ""}, {"B", "A"}, {"B", "B"}, {"C", "B"}} {
		prev, err := s.ClaimAgent(ctx, "kanzlei", "huber", calendar.Presence{Session: c.session, AgentID: "pc", Since: now})
		if err != nil || prev != c.prev {
			t.Fatalf("claim %d by %s = %q, %v; want previous %q", i, c.session, prev, err, c.prev)
		}
	}
	// Exactly two messages, in order: B replaced A, C replaced B (A's first claim and B's
	// second published nothing, or they would come first).
	for _, want := range []string{"A", "B"} {
		m, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n, ok := redisstore.ParseNotification(m.Payload)
		if !ok || n.Kind != 'k' || n.Tenant != "kanzlei" || n.User != "huber" || n.Session != want {
			t.Fatalf("message %q = %+v, want a kick of session %s", m.Payload, n, want)
		}
	}
}
