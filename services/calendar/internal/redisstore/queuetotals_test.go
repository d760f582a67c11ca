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

// totals is QueueTotals by target.
func totals(t *testing.T, s *redisstore.Store) map[calendar.Target]redisstore.QueueTotals {
	t.Helper()
	qs, err := s.QueueTotals(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[calendar.Target]redisstore.QueueTotals{}
	for _, q := range qs {
		out[q.Target] = q
	}
	return out
}

// queued queues revision rev of entry id for user's target at now and returns its position.
func queued(t *testing.T, s *redisstore.Store, tenant, user, id string, rev int64, g calendar.Target, now time.Time) int64 {
	t.Helper()
	pos, err := s.Enqueue(context.Background(), tenant, &calendar.Entry{ID: id, Owner: user, Revision: rev}, g, false, now, "")
	if err != nil || pos == 0 {
		t.Fatalf("enqueue %s: %d, %v", id, pos, err)
	}
	return pos
}

// answer acknowledges (outcome applied) or gives up (dead) the item at pos.
func answer(t *testing.T, s *redisstore.Store, tenant, user, id string, rev, pos int64, g calendar.Target, dead bool, now time.Time) {
	t.Helper()
	a := calendar.AckInput{Target: g, Position: pos, EntryID: id, Revision: rev, Outcome: calendar.OutcomeApplied, MaxAttempts: 1, Attempts: 1, Now: now}
	if dead {
		a.Outcome, a.Message, a.Dead = calendar.OutcomeError, "401 Unauthorized", true
	}
	res, err := s.Ack(context.Background(), tenant, user, a)
	if err != nil || res.Dead != dead || res.Stale {
		t.Fatalf("answer %s (dead %v): %+v, %v", id, dead, res, err)
	}
}

// checkTotals compares QueueTotals with what the users' own queues and dead hashes hold.
func checkTotals(t *testing.T, s *redisstore.Store, what string, want map[calendar.Target]redisstore.QueueTotals) {
	t.Helper()
	got := totals(t, s)
	for g, w := range want {
		if q := got[g]; q.Pending != w.Pending || q.Dead != w.Dead || !q.OldestQueued.Equal(w.OldestQueued) || !q.OldestDied.Equal(w.OldestDied) {
			t.Errorf("%s, %s: pending %d (oldest %s), dead %d (oldest %s); want pending %d (oldest %s), dead %d (oldest %s)",
				what, g, q.Pending, q.OldestQueued, q.Dead, q.OldestDied, w.Pending, w.OldestQueued, w.Dead, w.OldestDied)
		}
	}
}

// TestQueueTotals: the partitions' pending and dead indexes hold exactly the items of the
// users' queues and dead hashes — an item queued joins the pending index (a newer revision
// keeps its first time), an acknowledged or dead one leaves it, a dead one joins the dead index
// and a new revision of its entry takes it out — so the gauges are a few reads per partition
// however many users there are; and what was written before the indexes existed is indexed once
// at start.
func TestQueueTotals(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := redisstore.New(rdb, redisstore.Options{})
	t1 := time.UnixMilli(time.Now().UnixMilli()).Add(-time.Hour)
	checkTotals(t, s, "empty", map[calendar.Target]redisstore.QueueTotals{calendar.TargetAgent: {}, calendar.TargetCalDAV: {}})

	// huber's agent is offline: three entries wait for it, one of them changed later.
	queued(t, s, "notariat", "huber", "termin-1", 1, calendar.TargetAgent, t1)
	queued(t, s, "notariat", "huber", "termin-2", 1, calendar.TargetAgent, t1.Add(time.Minute))
	queued(t, s, "notariat", "huber", "termin-3", 1, calendar.TargetAgent, t1.Add(2*time.Minute))
	queued(t, s, "notariat", "huber", "termin-1", 2, calendar.TargetAgent, t1.Add(3*time.Minute))
	// anwalt's CalDAV server: one delivery acknowledged, two rejected (dead).
	for i, id := range []string{"frist-1", "frist-2", "frist-3"} {
		at := t1.Add(time.Duration(10+i) * time.Minute)
		pos := queued(t, s, "kanzlei", "anwalt", id, 1, calendar.TargetCalDAV, at)
		answer(t, s, "kanzlei", "anwalt", id, 1, pos, calendar.TargetCalDAV, id != "frist-1", at)
	}
	checkTotals(t, s, "after queueing and answering", map[calendar.Target]redisstore.QueueTotals{
		calendar.TargetAgent:  {Pending: 3, OldestQueued: t1},
		calendar.TargetCalDAV: {Dead: 2, OldestDied: t1.Add(11 * time.Minute)},
	})
	// The users' own counts (GetSyncStatus) agree.
	for _, u := range []struct {
		tenant, user  string
		pending, dead int64
	}{{"notariat", "huber", 3, 0}, {"kanzlei", "anwalt", 0, 2}} {
		st, err := s.QueueStats(ctx, u.tenant, u.user)
		if err != nil || st.Pending != u.pending || st.Dead != u.dead {
			t.Errorf("%s/%s: %+v, %v; want %d pending, %d dead", u.tenant, u.user, st, err, u.pending, u.dead)
		}
	}

	// A new revision of frist-2 clears its dead item and queues it: dead 1, pending 1.
	rev := &calendar.Revision{Entry: calendar.Entry{ID: "frist-2", Owner: "anwalt", Revision: 2}, ICS: []byte("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n")}
	at := t1.Add(20 * time.Minute)
	if _, err := s.WriteEntry(ctx, "kanzlei", calendar.Write{Rev: rev, Prev: 0, Target: calendar.TargetCalDAV, Now: at}); err != nil {
		t.Fatal(err)
	}
	checkTotals(t, s, "after a new revision of a dead entry", map[calendar.Target]redisstore.QueueTotals{
		calendar.TargetAgent:  {Pending: 3, OldestQueued: t1},
		calendar.TargetCalDAV: {Pending: 1, OldestQueued: at, Dead: 1, OldestDied: t1.Add(12 * time.Minute)},
	})

	// Data of a version without the indexes: indexes and marker gone. The first start indexes
	// the queues and dead hashes, scored by that start; later starts do not walk again.
	if err := rdb.Del(ctx, "pm:cal:{cal0}:queuesindexed").Err(); err != nil {
		t.Fatal(err)
	}
	var indexes []string
	for n := range s.Partitions() {
		for _, g := range redisstore.QueueTargets() {
			indexes = append(indexes, "pm:cal:{cal"+strconv.Itoa(n)+"}:dead:"+string(g), "pm:cal:{cal"+strconv.Itoa(n)+"}:pending:"+string(g))
		}
	}
	if err := rdb.Del(ctx, indexes...).Err(); err != nil {
		t.Fatal(err)
	}
	start := time.UnixMilli(time.Now().UnixMilli())
	n, err := s.IndexQueues(ctx, start)
	if err != nil || n != 5 {
		t.Fatalf("IndexQueues = %d, %v; want the 3 + 1 queue items and the 1 dead item", n, err)
	}
	checkTotals(t, s, "after indexing", map[calendar.Target]redisstore.QueueTotals{
		calendar.TargetAgent:  {Pending: 3, OldestQueued: start},
		calendar.TargetCalDAV: {Pending: 1, OldestQueued: start, Dead: 1, OldestDied: start},
	})
	if err := rdb.HSet(ctx, "pm:cal:{cal0}:t:x:u:y:q:agent:dead", "z", "1|1|dead|1|").Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := s.IndexQueues(ctx, start); err != nil || n != 0 {
		t.Errorf("second IndexQueues = %d, %v; want nothing (the marker is set)", n, err)
	}
	if err := rdb.Get(ctx, "pm:cal:{cal0}:queuesindexed").Err(); err == redis.Nil {
		t.Error("no marker after indexing")
	}
}
