package redisstore_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// TestMoveBetweenLanes runs the move cases on a plain server and on a one-node Redis Cluster,
// whose CROSSSLOT rule checks that a move declares only keys of its email's {obN} slot.
func TestMoveBetweenLanes(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		rdb := redistest.Start(t).Client(t)
		testMoveBetweenLanes(t, rdb, func() {
			if err := rdb.FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("cluster", func(t *testing.T) {
		rdb := redistest.Start(t, redistest.WithCluster()).ClusterClient(t)
		testMoveBetweenLanes(t, rdb, func() {
			err := rdb.ForEachMaster(context.Background(), func(ctx context.Context, n *redis.Client) error { return n.FlushAll(ctx).Err() })
			if err != nil {
				t.Fatal(err)
			}
		})
	})
}

var newLane = redisstore.Lane{Tenant: "kanzlei", Connector: "neu"}

// move is the change MoveEmails makes: the same status and due time, another connector.
func move(e *redisstore.Email, to string) redisstore.Change {
	return redisstore.Change{Status: e.Status, Due: e.Due, At: t0, Connector: to}
}

// heads returns the ids due in a lane of partition p at a time far ahead.
func heads(t *testing.T, l *redisstore.Ledger, ln redisstore.Lane, p int) []string {
	t.Helper()
	cands, err := l.Heads(context.Background(), ln, []int{p}, t0.Add(1000*time.Hour), 10)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range cands {
		out = append(out, c.ID)
	}
	return out
}

func testMoveBetweenLanes(t *testing.T, rdb redis.UniversalClient, flush func()) {
	ctx := context.Background()
	l := redisstore.New(rdb, time.Hour, 0)

	t.Run("queued mail leaves the old lane and is claimed in the new one", func(t *testing.T) {
		flush()
		p, id := samePartition(l, 1)
		submit(t, l, id[0], 1, t0.Add(time.Minute))
		e, err := l.Get(ctx, id[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Apply(ctx, e, move(e, "neu"), evf); err != nil {
			t.Fatal(err)
		}
		if got := heads(t, l, lane, p); len(got) != 0 {
			t.Errorf("old lane still holds %v", got)
		}
		if got := heads(t, l, newLane, p); !slices.Equal(got, id) {
			t.Errorf("new lane holds %v, want %v", got, id)
		}
		due, _, _, err := l.Ready(ctx, p, t0.Add(time.Minute), 10)
		if err != nil || !slices.Contains(due, newLane) {
			t.Errorf("ready lanes at the due time %v (%v), want the new lane among them", due, err)
		}
		got, _ := l.Get(ctx, id[0])
		if got.Connector != "neu" || got.Status != outbox.StatusQueued || !got.Due.Equal(t0.Add(time.Minute)) || got.Version != 2 || got.Priority != 1 {
			t.Errorf("after the move: %+v", got)
		}
		cands, err := l.Heads(ctx, newLane, []int{p}, t0.Add(time.Minute), 10)
		if err != nil {
			t.Fatal(err)
		}
		claimed, err := l.ClaimLane(ctx, newLane, []int{p}, cands, t0.Add(time.Minute), 30*time.Second)
		if err != nil || len(claimed.Emails) != 1 || claimed.Emails[0].Connector != "neu" {
			t.Fatalf("claim in the new lane = %+v (%v)", claimed.Emails, err)
		}
	})

	t.Run("a move announces the new lane on the wake channel", func(t *testing.T) {
		flush()
		sub := rdb.Subscribe(ctx, redisstore.WakeChannel)
		defer sub.Close()
		if _, err := sub.Receive(ctx); err != nil { // the subscription's confirmation
			t.Fatal(err)
		}
		p, id := samePartition(l, 1)
		submit(t, l, id[0], 2, t0)
		e, _ := l.Get(ctx, id[0])
		if err := l.Apply(ctx, e, move(e, "neu"), evf); err != nil {
			t.Fatal(err)
		}
		// One notice for the submit, one for the new lane's first ready score.
		for i := range 2 {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			msg, err := sub.ReceiveMessage(ctx)
			cancel()
			if err != nil {
				t.Fatalf("notice %d: %v", i+1, err)
			}
			if got, ok := l.WakePartition(msg.Payload); !ok || got != p {
				t.Errorf("notice %d names %q, want partition %d", i+1, msg.Payload, p)
			}
		}
	})

	t.Run("a move is fenced against a concurrent claim", func(t *testing.T) {
		flush()
		p, id := samePartition(l, 1)
		submit(t, l, id[0], 2, t0)
		stale, _ := l.Get(ctx, id[0])
		if got := claim(t, l, p, t0, 1); len(got) != 1 {
			t.Fatalf("claimed %s", ids(got))
		}
		if err := l.Apply(ctx, stale, move(stale, "neu"), evf); !errors.Is(err, redisstore.ErrChanged) {
			t.Fatalf("move after a claim: err = %v, want ErrChanged", err)
		}
		got, _ := l.Get(ctx, id[0])
		if got.Connector != "relay" || got.Status != outbox.StatusSending {
			t.Errorf("after the refused move: %+v", got)
		}
		if h := heads(t, l, newLane, p); len(h) != 0 {
			t.Errorf("the new lane holds %v", h)
		}
		if err := l.Apply(ctx, got, move(got, "neu"), evf); err == nil {
			t.Error("mail in SENDING changed connector")
		}
	})

	t.Run("CONNECTOR_DISABLED mail moves between disabled sets, and out of them", func(t *testing.T) {
		flush()
		p, id := samePartition(l, 1)
		submit(t, l, id[0], 2, t0)
		e := claim(t, l, p, t0, 1)[0]
		held := redisstore.Change{Status: outbox.StatusConnectorDisabled, At: t0, Fenced: true}
		if err := l.Apply(ctx, &e, held, evf); err != nil {
			t.Fatal(err)
		}
		disabled := func(connector string) []string {
			t.Helper()
			got, err := l.Disabled(ctx, p, "kanzlei", connector, 10)
			if err != nil {
				t.Fatal(err)
			}
			return got
		}
		if err := l.Apply(ctx, &e, move(&e, "neu"), evf); err != nil {
			t.Fatal(err)
		}
		if old, nw := disabled("relay"), disabled("neu"); len(old) != 0 || !slices.Equal(nw, id) {
			t.Errorf("disabled sets after a move in CONNECTOR_DISABLED: relay %v, neu %v", old, nw)
		}
		queued := redisstore.Change{Status: outbox.StatusQueued, Due: t0, At: t0, Connector: "drei"}
		if err := l.Apply(ctx, &e, queued, evf); err != nil {
			t.Fatal(err)
		}
		if nw := disabled("neu"); len(nw) != 0 {
			t.Errorf("neu's disabled set still holds %v", nw)
		}
		if got := heads(t, l, redisstore.Lane{Tenant: "kanzlei", Connector: "drei"}, p); !slices.Equal(got, id) {
			t.Errorf("lane drei holds %v, want %v", got, id)
		}
		if got, _ := l.Get(ctx, id[0]); got.Connector != "drei" || got.Attempts != 0 {
			t.Errorf("after the second move: %+v", got)
		}
	})
}
