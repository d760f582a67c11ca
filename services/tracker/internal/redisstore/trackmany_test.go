package redisstore_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// TestWriteManyWritesWhatTrackWrites: trackManyScript takes its arguments in a compact form
// (shared values once, flags in the key count, the Message-ID, event id and record-index member
// derived in Lua); what it stores must be exactly what trackScript (Track, one email per call)
// stores, key for key and field for field of every event, whatever the email: with or without
// thread, smart key, records (a record both regarding and linked), trace context; sent before
// 1970 or after 2286; several tenants of one partition taking turns in one call; a Message-ID
// written twice.
func TestWriteManyWritesWhatTrackWrites(t *testing.T) {
	ctx := context.Background()
	// Three tenants of one partition, so that one call holds all of them.
	var tenants []string
	for i := 0; len(tenants) < 3; i++ {
		if name := fmt.Sprintf("t%d", i); redisx.Partition(name, redisx.DefaultPartitions) == 5 {
			tenants = append(tenants, name)
		}
	}
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	state, _ := trace.ParseTraceState("vendor=x,other=y")
	traced := trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	tracedState := trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceState: state}))
	erika := tracker.RecordRef{ID: "c-1", Kind: tracker.KindContact}
	acme := tracker.RecordRef{ID: "a-7", Kind: tracker.KindAccount}
	var ws []tracker.Write
	for i := range 24 {
		sent := t0.Add(time.Duration(i%5) * time.Hour) // some threads see older mail after newer
		switch i {
		case 5:
			sent = time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)
		case 6:
			sent = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)
		}
		var regarding *tracker.RecordRef
		var links []tracker.Link
		if i%3 != 0 {
			regarding = &acme
		}
		if i%4 != 0 {
			links = append(links, tracker.Link{Address: "erika@kunde.example", Role: tracker.RoleTo, Record: erika},
				tracker.Link{Address: "info@acme.example", Role: tracker.RoleCc, Record: acme})
		}
		e := tracked(fmt.Sprintf("<m%d.x@kanzlei.example>", i%20), sent, regarding, links...)
		if i%2 == 0 {
			e.ThreadID = fmt.Sprintf("conv-%d", i%3)
		} else {
			e.ThreadID = ""
		}
		smart := ""
		if i%5 != 0 {
			smart = fmt.Sprintf("sk%d", i%2)
		}
		wctx := []context.Context{nil, traced, tracedState}[i%3]
		ws = append(ws, tracker.Write{Ctx: wctx, Tenant: tenants[((i%20)/2)%3], Email: e, SmartKey: smart})
	}

	one, rdbOne := newStore(t)
	many, rdbMany := newStore(t)
	var createdOne []bool
	for _, w := range ws {
		wctx := w.Ctx
		if wctx == nil {
			wctx = ctx
		}
		ok, _, err := one.Track(wctx, w.Tenant, w.Email, w.SmartKey)
		if err != nil {
			t.Fatal(err)
		}
		createdOne = append(createdOne, ok)
	}
	res, err := many.WriteMany(ctx, ws)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Err != nil || r.Created != createdOne[i] {
			t.Errorf("write %d: created %v, %v; Track created %v", i, r.Created, r.Err, createdOne[i])
		}
	}
	if !slices.Contains(createdOne, false) {
		t.Fatal("no Message-ID was written twice")
	}
	a, b := dump(t, rdbOne), dump(t, rdbMany)
	if len(a) == 0 {
		t.Fatal("nothing written")
	}
	for k, v := range a {
		if b[k] != v {
			t.Errorf("%s:\n Track:     %s\n WriteMany: %s", k, v, b[k])
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			t.Errorf("%s written by WriteMany only", k)
		}
	}
	if !strings.Contains(fmt.Sprint(a), "traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") ||
		!strings.Contains(fmt.Sprint(a), "tracestate=vendor=x,other=y") {
		t.Error("the trace context is not in the events")
	}
}

// dump returns every key's value; stream entries without their ids.
func dump(t *testing.T, rdb *redis.Client) map[string]string {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range keys {
		typ, _ := rdb.Type(ctx, k).Result()
		switch typ {
		case "string":
			out[k] = rdb.Get(ctx, k).Val()
		case "zset":
			out[k] = fmt.Sprint(rdb.ZRangeWithScores(ctx, k, 0, -1).Val())
		case "stream":
			var entries []string
			for _, m := range rdb.XRange(ctx, k, "-", "+").Val() {
				var fields []string
				for f, v := range m.Values {
					fields = append(fields, fmt.Sprintf("%s=%v", f, v))
				}
				slices.Sort(fields)
				entries = append(entries, strings.Join(fields, " "))
			}
			out[k] = strings.Join(entries, "\n")
		default:
			t.Fatalf("%s: unexpected type %s", k, typ)
		}
	}
	return out
}
