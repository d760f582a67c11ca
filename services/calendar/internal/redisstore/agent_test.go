package redisstore_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// TestSyncLogRetention: writing to a user's sync log drops the lines older than the retention
// (by their ids, which are Redis server time), whether the line comes from Go or from a script.
func TestSyncLogRetention(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	s := redisstore.New(rdb, redisstore.Options{LogRetention: time.Hour})
	for _, append := range []struct {
		name, user string
		do         func() error
	}{
		{"AppendLog", "huber", func() error {
			return s.AppendLog(ctx, "kanzlei", "huber", calendar.LogLine{Action: "AGENT_CONNECTED", Target: calendar.TargetAgent})
		}},
		{"a script", "maier", func() error {
			_, err := s.Enqueue(ctx, "kanzlei", &calendar.Entry{ID: "e1", Owner: "maier", Revision: 1}, calendar.TargetAgent, true, time.Now(), "")
			return err
		}},
	} {
		t.Run(append.name, func(t *testing.T) {
			key := "pm:cal:{cal" + strconv.Itoa(s.PartitionOf("kanzlei")) + "}:t:kanzlei:u:" + append.user + ":log"
			if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, ID: "1000-0", Values: []any{"a", "OLD"}}).Err(); err != nil {
				t.Fatal(err)
			}
			if err := append.do(); err != nil {
				t.Fatal(err)
			}
			lines, err := s.SyncLog(ctx, "kanzlei", append.user, "", time.UnixMilli(0), 100)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range lines {
				if l.Action == "OLD" {
					t.Errorf("a line from 1970 is still in the log: %v", lines)
				}
			}
			if len(lines) == 0 {
				t.Error("the new line is missing")
			}
		})
	}
}
