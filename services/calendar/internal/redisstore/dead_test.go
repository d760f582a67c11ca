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

// deadCounts is DeadItems by target.
func deadCounts(t *testing.T, s *redisstore.Store) map[calendar.Target]int64 {
	t.Helper()
	items, err := s.DeadItems(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[calendar.Target]int64{}
	for _, d := range items {
		out[d.Target] = d.Count
	}
	return out
}

// giveUp queues revision rev of entry id for user's target and answers it dead.
func giveUp(t *testing.T, s *redisstore.Store, tenant, user, id string, rev int64, g calendar.Target, now time.Time) {
	t.Helper()
	ctx := context.Background()
	e := &calendar.Entry{ID: id, Owner: user, Revision: rev}
	pos, err := s.Enqueue(ctx, tenant, e, g, false, now, "")
	if err != nil || pos == 0 {
		t.Fatalf("enqueue %s: %d, %v", id, pos, err)
	}
	res, err := s.Ack(ctx, tenant, user, calendar.AckInput{Target: g, Position: pos, EntryID: id, Revision: rev,
		Outcome: calendar.OutcomeError, Message: "401 Unauthorized", MaxAttempts: 1, Attempts: 1, Dead: true, Now: now})
	if err != nil || !res.Dead {
		t.Fatalf("ack %s dead: %+v, %v", id, res, err)
	}
}

// TestDeadItemsIndexed: the partitions' dead index counts exactly the dead items of the users'
// queues — a delivery given up joins it, a new revision of the entry takes it out — so the
// gauge is a few reads per partition, however many users there are; and dead items written
// before the index existed are indexed once at start.
func TestDeadItemsIndexed(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := redisstore.New(rdb, redisstore.Options{})
	died := time.UnixMilli(time.Now().UnixMilli()).Add(-time.Hour)
	if got := deadCounts(t, s); got[calendar.TargetAgent] != 0 || got[calendar.TargetCalDAV] != 0 {
		t.Fatalf("empty store: %v", got)
	}
	giveUp(t, s, "kanzlei", "anwalt", "frist-1", 1, calendar.TargetCalDAV, died)
	giveUp(t, s, "kanzlei", "anwalt", "frist-2", 1, calendar.TargetCalDAV, died.Add(time.Minute))
	giveUp(t, s, "notariat", "huber", "termin-1", 1, calendar.TargetAgent, died.Add(2*time.Minute))
	items, err := s.DeadItems(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[calendar.Target]redisstore.DeadItems{
		calendar.TargetAgent:  {Target: calendar.TargetAgent, Count: 1, OldestDied: died.Add(2 * time.Minute)},
		calendar.TargetCalDAV: {Target: calendar.TargetCalDAV, Count: 2, OldestDied: died},
	}
	for _, got := range items {
		if w := want[got.Target]; got.Count != w.Count || !got.OldestDied.Equal(w.OldestDied) {
			t.Errorf("dead items of %s = %d, oldest %s; want %d, oldest %s", got.Target, got.Count, got.OldestDied, w.Count, w.OldestDied)
		}
	}

	// A new revision of frist-1 for the same target clears its dead item, and the index with it.
	rev := &calendar.Revision{Entry: calendar.Entry{ID: "frist-1", Owner: "anwalt", Revision: 2}, ICS: []byte("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n")}
	if _, err := s.WriteEntry(ctx, "kanzlei", calendar.Write{Rev: rev, Prev: 0, Target: calendar.TargetCalDAV, Now: time.Now()}); err != nil {
		t.Fatal(err)
	}
	st, err := s.QueueStats(ctx, "kanzlei", "anwalt")
	if err != nil {
		t.Fatal(err)
	}
	if got := deadCounts(t, s); got[calendar.TargetCalDAV] != 1 || st.Dead != 1 {
		t.Errorf("after a new revision: index %v, anwalt's queue %d dead; want 1 caldav in both", got, st.Dead)
	}

	// Dead items of a version without the index: the index and its marker are gone. The first
	// start indexes them, scored by that start; later starts do not walk the keyspace again.
	if err := rdb.Del(ctx, "pm:cal:{cal0}:deadindexed").Err(); err != nil {
		t.Fatal(err)
	}
	var indexes []string
	for n := range s.Partitions() {
		for _, g := range redisstore.DeadTargets() {
			indexes = append(indexes, "pm:cal:{cal"+strconv.Itoa(n)+"}:dead:"+string(g))
		}
	}
	if err := rdb.Del(ctx, indexes...).Err(); err != nil {
		t.Fatal(err)
	}
	if got := deadCounts(t, s); got[calendar.TargetAgent] != 0 || got[calendar.TargetCalDAV] != 0 {
		t.Fatalf("index deleted, yet %v", got)
	}
	start := time.UnixMilli(time.Now().UnixMilli())
	n, err := s.IndexDeadItems(ctx, start)
	if err != nil || n != 2 {
		t.Fatalf("IndexDeadItems = %d, %v; want the 2 dead items", n, err)
	}
	items, err = s.DeadItems(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range items {
		if got.Count != 1 || !got.OldestDied.Equal(start) {
			t.Errorf("indexed dead items of %s = %d, oldest %s; want 1, found at %s", got.Target, got.Count, got.OldestDied, start)
		}
	}
	if err := rdb.HSet(ctx, "pm:cal:{cal0}:t:x:u:y:q:agent:dead", "z", "1|1|dead|1|").Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := s.IndexDeadItems(ctx, start); err != nil || n != 0 {
		t.Errorf("second IndexDeadItems = %d, %v; want nothing (the marker is set)", n, err)
	}
	if err := rdb.Get(ctx, "pm:cal:{cal0}:deadindexed").Err(); err == redis.Nil {
		t.Error("no marker after indexing")
	}
}
