package eventbus_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/testkit/poll"
)

// redriveScript re-emits an entity's event only while the record still holds the value the
// event was built from, as a service's Redrive must.
// KEYS[1] the record, KEYS[2] the event stream; ARGV[1] the value read, ARGV[2..7] the envelope.
var redriveScript = redis.NewScript(eventbus.LuaEmit + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
postamt_emit(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
`)

// redriveRecords is a Redrive of the test's records: every entity under streamKey's partition
// gets its current value's event again, with the id the original event had.
func redriveRecords(rdb *redis.Client, calls *atomic.Int64) func(ctx context.Context, since time.Time) (int, error) {
	return func(ctx context.Context, since time.Time) (int, error) {
		calls.Add(1)
		keys, err := rdb.Keys(ctx, recordKey(streamKey, "*")).Result()
		if err != nil {
			return 0, err
		}
		sort.Strings(keys)
		n := 0
		for _, k := range keys {
			id := k[len(recordKey(streamKey, "")):]
			v, err := rdb.Get(ctx, k).Result()
			if err != nil {
				return n, err
			}
			argv, err := eventbus.Envelope(ctx, id, subject, "t1", wrapperspb.String(v))
			if err != nil {
				return n, err
			}
			ok, err := redriveScript.Run(ctx, rdb, []string{k, streamKey}, append([]any{v}, argv...)...).Int()
			if err != nil {
				return n, err
			}
			n += ok
		}
		return n, nil
	}
}

// TestRedriverRefillsARecreatedStream: a stream deleted after consumers read part of it comes
// back with an event for every entity — the lost ones re-driven from the records, the ones
// written since exactly once (the re-driven copy carries the same id and JetStream drops it) —
// and a consumer that was behind gets what it had missed.
func TestRedriverRefillsARecreatedStream(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	spec := eventbus.StreamSpec{Name: testStream, Subjects: []string{"postamt.test.v1.>"}}
	var calls atomic.Int64
	rd := &eventbus.Redriver{
		Client: h.rdb, JS: h.js, Stream: spec, Redrive: redriveRecords(h.rdb, &calls),
		Interval: time.Hour, Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
	rd.Init()
	r := h.relay(t, "r1", time.Minute)
	r.Stream, r.OnRecreated = spec, rd.Nudge
	startRelay(t, r)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rd.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	for _, id := range ids("e", 0, 20) {
		write(t, ctx, h.rdb, streamKey, id, "v1")
	}
	waitDrained(t, h.rdb, streamKey)
	poll.Eventually(t, "the stream recorded", func() bool {
		return h.rdb.Get(ctx, eventbus.MarkerKey(testStream)).Val() != ""
	})
	if calls.Load() != 0 {
		t.Fatalf("Redrive ran %d times at the first sight of the stream, want none", calls.Load())
	}

	if err := h.js.DeleteStream(ctx, testStream); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids("e", 20, 30) {
		write(t, ctx, h.rdb, streamKey, id, "v1")
	}
	poll.Eventually(t, "a re-drive", func() bool { n, _ := rd.Stats(); return n == 1 })
	waitDrained(t, h.rdb, streamKey)

	// A consumer created now, as the services re-create theirs, reads the whole stream.
	var c collector
	consume(t, h.js, eventbus.ConsumerSpec{Durable: "late"}, c.handle)
	want := ids("e", 0, 30)
	poll.Eventually(t, "30 events at the consumer", func() bool { return len(c.all()) >= len(want) })
	got := c.ids()
	sort.Strings(got)
	if !slices.Equal(got, want) {
		t.Errorf("the consumer got %v, want each of %v once", got, want)
	}
	if n := storedMsgs(t, h.js); n != 30 {
		t.Errorf("the re-created stream holds %d messages, want 30 (one per entity)", n)
	}
	if _, events := rd.Stats(); events != 30 {
		t.Errorf("re-driven %d events, want 30 (every record)", events)
	}
	if calls.Load() != 1 {
		t.Errorf("Redrive ran %d times, want 1", calls.Load())
	}
}

// TestRedriverReplicasRedriveOnce: replicas sharing Redis re-drive a re-created stream once
// between them; one whose re-drive failed leaves the marker, so the next check re-drives again.
func TestRedriverReplicasRedriveOnce(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	spec := eventbus.StreamSpec{Name: testStream, Subjects: []string{"postamt.test.v1.>"}}
	var calls atomic.Int64
	var fail atomic.Bool
	var pending atomic.Pointer[eventbus.Redriver] // the replica to check while a re-drive runs
	check := func(rd *eventbus.Redriver) {
		if _, err := rd.Check(ctx); err != nil && !fail.Load() {
			t.Errorf("check: %v", err)
		}
	}
	slow := func(ctx context.Context, since time.Time) (int, error) {
		calls.Add(1)
		if age := time.Since(since); age < 7*24*time.Hour-time.Minute || age > 7*24*time.Hour+time.Minute {
			t.Errorf("Redrive since %s ago, want the stream's default MaxAge of 7 days", age)
		}
		// The other replica tries while this one holds the lock.
		if rd := pending.Swap(nil); rd != nil {
			check(rd)
		}
		if fail.Load() {
			return 3, errors.New("redis went away")
		}
		return 5, nil
	}
	replicas := []*eventbus.Redriver{
		{Client: h.rdb, JS: h.js, Stream: spec, Redrive: slow},
		{Client: h.rdb, JS: h.js, Stream: spec, Redrive: slow},
	}
	// Replica 0 checks first; replica 1 checks from inside replica 0's re-drive if one runs (the
	// lock held), else after it.
	checkAll := func() {
		pending.Store(replicas[1])
		check(replicas[0])
		if rd := pending.Swap(nil); rd != nil {
			check(rd)
		}
	}
	checkAll() // first sight
	if calls.Load() != 0 {
		t.Fatalf("Redrive ran at the first sight")
	}
	recreate := func() {
		t.Helper()
		if err := h.js.DeleteStream(ctx, testStream); err != nil {
			t.Fatal(err)
		}
		if err := eventbus.EnsureStream(ctx, h.js, spec); err != nil {
			t.Fatal(err)
		}
	}

	recreate()
	fail.Store(true)
	checkAll()
	if calls.Load() != 1 {
		t.Fatalf("Redrive ran %d times by two replicas at once, want 1", calls.Load())
	}
	fail.Store(false)
	checkAll()
	if calls.Load() != 2 {
		t.Fatalf("after a failed re-drive, Redrive ran %d times in all, want 2 (the failure retried once)", calls.Load())
	}
	checkAll()
	if calls.Load() != 2 {
		t.Errorf("an unchanged stream was re-driven again (%d runs)", calls.Load())
	}
	var runs int64
	for _, rd := range replicas {
		n, _ := rd.Stats()
		runs += n
	}
	if runs != 1 {
		t.Errorf("replicas report %d successful re-drives, want 1", runs)
	}

	// A missing stream is nobody's error: the next publisher re-creates it.
	if err := h.js.DeleteStream(ctx, testStream); err != nil {
		t.Fatal(err)
	}
	if did, err := replicas[0].Check(ctx); did || err != nil {
		t.Errorf("Check of a missing stream = %v, %v; want false, nil", did, err)
	}
}
