package redisstore_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// TestRedrive: a re-drive appends the event of each email's current version — open mail always,
// final mail when it changed within the window — and skips a record that changed after it was
// read, whose newer event is already on its way.
func TestRedrive(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	l := redisstore.New(rdb, time.Hour, 0)
	ctx := context.Background()
	p, id := samePartition(l, 3)
	for _, e := range id {
		submit(t, l, e, 2, t0)
	}
	claimed := claim(t, l, p, t0, 1) // id[0] SENDING, then SENT at t0
	if err := l.Apply(ctx, &claimed[0], result(outbox.Decision{Status: outbox.StatusSent}, t0), evf); err != nil {
		t.Fatal(err)
	}
	// Everything so far was relayed: the streams are empty, as after the relay's deletes.
	if err := rdb.Del(ctx, l.EventStreams()...).Err(); err != nil {
		t.Fatal(err)
	}
	events := func() []string {
		t.Helper()
		var out []string
		for _, s := range l.EventStreams() {
			xs, err := rdb.XRange(ctx, s, "-", "+").Result()
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range xs {
				out = append(out, fmt.Sprint(x.Values[eventbus.FieldID], " ", x.Values[eventbus.FieldSubject]))
			}
		}
		slices.Sort(out)
		return out
	}
	byStatus := func(e *redisstore.Email) redisstore.Event {
		return redisstore.Event{Subject: "status." + e.Status.String(), Msg: ev.Msg}
	}
	want := func(id string, version int, st outbox.Status) string {
		return fmt.Sprintf("kanzlei:email:%s:%d status.%s", id, version, st)
	}

	n, err := l.Redrive(ctx, t0.Add(-time.Hour), byStatus)
	if err != nil || n != 3 {
		t.Fatalf("Redrive = %d, %v; want 3 events", n, err)
	}
	all := []string{want(id[0], 3, outbox.StatusSent), want(id[1], 1, outbox.StatusQueued), want(id[2], 1, outbox.StatusQueued)}
	slices.Sort(all)
	if got := events(); !slices.Equal(got, all) {
		t.Errorf("events after a re-drive:\n%v\nwant\n%v", got, all)
	}

	if err := rdb.Del(ctx, l.EventStreams()...).Err(); err != nil {
		t.Fatal(err)
	}
	n, err = l.Redrive(ctx, t0.Add(time.Hour), byStatus)
	if err != nil || n != 2 {
		t.Fatalf("Redrive after the SENT mail's last change = %d, %v; want the 2 open emails", n, err)
	}

	if err := rdb.Del(ctx, l.EventStreams()...).Err(); err != nil {
		t.Fatal(err)
	}
	// id[2] moves on between the read and the append: its stale event must not be appended.
	moved := func(e *redisstore.Email) redisstore.Event {
		if e.ID == id[2] {
			key := fmt.Sprintf("pm:ob:{ob%d}:e:%s", l.Partition(e.ID), e.ID)
			if err := rdb.HIncrBy(ctx, key, "version", 1).Err(); err != nil {
				t.Fatal(err)
			}
		}
		return byStatus(e)
	}
	n, err = l.Redrive(ctx, t0.Add(-time.Hour), moved)
	if err != nil || n != 2 {
		t.Fatalf("Redrive with a record changed meanwhile = %d, %v; want 2", n, err)
	}
	if got := events(); slices.Contains(got, want(id[2], 1, outbox.StatusQueued)) {
		t.Errorf("a stale event was re-driven: %v", got)
	}
}
