package redisstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

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
		if n, _ := rdb.XLen(ctx, redisstore.EventsKeyForTest(tenant)).Result(); n != 75 {
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
