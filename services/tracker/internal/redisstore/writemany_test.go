package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/tracker/internal/redisstore"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// TestWriteMany: a batch's writes, grouped into script calls per partition, store each email
// once with its event, keep the order of writes to the same thread, keep explanations with
// their TTL, and survive Redis forgetting the script.
func TestWriteMany(t *testing.T) {
	s, rdb := newStore(t)
	ctx := context.Background()
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	var ws []tracker.Write
	for i := range 150 { // more than one call's worth, in two tenants
		tenant := []string{"kanzlei", "andere"}[i%2]
		e := tracked(fmt.Sprintf("m%d@x", i), t0.Add(time.Duration(i)*time.Second), nil)
		ws = append(ws, tracker.Write{Tenant: tenant, Email: e, SmartKey: "k"})
	}
	ws = append(ws,
		tracker.Write{Tenant: "kanzlei", Email: tracked("m0@x", t0, nil)}, // tracked a moment ago
		tracker.Write{Tenant: "kanzlei", Explanation: &tracker.Explanation{MessageID: "u@x"}, TTL: time.Hour},
	)
	res, err := s.WriteMany(ctx, ws)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("write %d: %v", i, r.Err)
		}
		if want := i < 150; r.Created != want && ws[i].Email != nil {
			t.Errorf("write %d: created %v, want %v", i, r.Created, want)
		}
	}
	for _, tenant := range []string{"kanzlei", "andere"} {
		if n, _ := rdb.XLen(ctx, s.EventsKeyForTest(tenant)).Result(); n != 75 {
			t.Errorf("%s: %d events, want 75", tenant, n)
		}
	}
	// The thread index holds the latest of each tenant: written in order.
	g, _ := s.Gather(ctx, "kanzlei", tracker.Query{MessageID: "q@x", ThreadID: "conv-1", SmartKey: "k"})
	if g.Evidence.Thread == nil || g.Evidence.Thread.MessageID != "m148@x" || g.Evidence.Smart.MessageID != "m148@x" {
		t.Errorf("thread index = %+v", g.Evidence.Thread)
	}
	if x, err := s.Decision(ctx, "kanzlei", "u@x"); err != nil || x.MessageID != "u@x" {
		t.Errorf("decision = %+v, %v", x, err)
	}
}

// TestPartitionCount runs the store with a count other than the default: tenants of partitions
// beyond 16 write and read their emails and events there, and the count is recorded so that a
// store of another count refuses the data.
func TestPartitionCount(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := redisstore.New(rdb, 64)
	if err := s.CheckPartitions(ctx); err != nil {
		t.Fatalf("fresh Redis with 64: %v", err)
	}
	var tenants []string // tenants of partitions 16..63
	for i := 0; len(tenants) < 3; i++ {
		if name := fmt.Sprintf("t%d", i); redisx.Partition(name, 64) >= 16 {
			tenants = append(tenants, name)
		}
	}
	var ws []tracker.Write
	for i := range 30 {
		ws = append(ws, tracker.Write{Tenant: tenants[i%3], Email: tracked(fmt.Sprintf("m%d@x", i), t0.Add(time.Duration(i)*time.Second), nil), SmartKey: "k"})
	}
	res, err := s.WriteMany(ctx, ws)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Err != nil || !r.Created {
			t.Fatalf("write %d: created %v, %v", i, r.Created, r.Err)
		}
	}
	for _, tenant := range tenants {
		stream := s.EventsKeyForTest(tenant)
		if want := fmt.Sprintf("{tr%d}", redisx.Partition(tenant, 64)); !strings.Contains(stream, want) {
			t.Errorf("%s: events in %s, want partition %s", tenant, stream, want)
		}
		if n, _ := rdb.XLen(ctx, stream).Result(); n != 10 {
			t.Errorf("%s: %d events, want 10", tenant, n)
		}
	}
	if got := len(s.EventStreams()); got != 64 {
		t.Errorf("event streams = %d, want 64", got)
	}
	g, err := s.Gather(ctx, tenants[0], tracker.Query{MessageID: "q@x", ThreadID: "conv-1", SmartKey: "k"})
	if err != nil || g.Evidence.Thread == nil || g.Evidence.Thread.MessageID != "m27@x" {
		t.Errorf("thread index of %s = %+v, %v", tenants[0], g.Evidence.Thread, err)
	}
	var pe *redisx.PartitionsError
	if err := redisstore.New(rdb, 32).CheckPartitions(ctx); !errors.As(err, &pe) || pe.Recorded != 64 || pe.Configured != 32 {
		t.Errorf("a store of 32 on data of 64: %v, want a PartitionsError", err)
	}
}
