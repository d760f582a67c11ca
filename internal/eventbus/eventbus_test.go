package eventbus_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

const (
	streamKey = "pm:test:{p0}:events"
	subject   = "postamt.test.v1.Changed"
)

// writeScript is what a service store does: the record and its event in one atomic step.
// KEYS[1] record, KEYS[2] event stream; ARGV[1] value, ARGV[2..7] the event fields.
var writeScript = redis.NewScript(eventbus.LuaEmit + `
redis.call('SET', KEYS[1], ARGV[1])
return postamt_emit(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
`)

func write(t *testing.T, ctx context.Context, rdb *redis.Client, id, value string) {
	t.Helper()
	fields, err := eventbus.Fields(ctx, id, subject, "t1", wrapperspb.String(value))
	if err != nil {
		t.Fatal(err)
	}
	argv := []any{value}
	for i := 1; i < len(fields); i += 2 {
		argv = append(argv, fields[i])
	}
	if err := writeScript.Run(ctx, rdb, []string{"pm:test:{p0}:rec:" + id, streamKey}, argv...).Err(); err != nil {
		t.Fatal(err)
	}
}

type harness struct {
	rdb *redis.Client
	ns  *natstest.Server
	js  jetstream.JetStream
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{rdb: redistest.Start(t).Client(t), ns: natstest.Start(t)}
	h.js = h.ns.JetStream(t)
	if err := eventbus.EnsureStream(context.Background(), h.js, eventbus.StreamSpec{Name: "POSTAMT_TEST", Subjects: []string{"postamt.test.v1.>"}}); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) relay(t *testing.T, name string, claimIdle time.Duration) *eventbus.Relay {
	t.Helper()
	r := &eventbus.Relay{
		Client: h.rdb, JS: h.js, Streams: []string{streamKey}, Group: "relay", Consumer: name,
		BatchSize: 16, Block: 100 * time.Millisecond, ClaimIdle: claimIdle,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay %s: %v", name, err)
		}
	})
	return r
}

// collector consumes the test stream and records what arrives.
type collector struct {
	mu   sync.Mutex
	ids  []string
	vals []string
	ctxs []context.Context
}

func (c *collector) handler(_ *testing.T) eventbus.Handler {
	return func(ctx context.Context, m eventbus.Message) error {
		var v wrapperspb.StringValue
		if err := protoUnmarshal(m.Data, &v); err != nil {
			return err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.ids = append(c.ids, m.ID)
		c.vals = append(c.vals, v.GetValue())
		c.ctxs = append(c.ctxs, ctx)
		return nil
	}
}

func (c *collector) snapshot() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.ids...)
}

func consume(t *testing.T, js jetstream.JetStream, durable string, h eventbus.Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- eventbus.Consume(ctx, js, eventbus.ConsumerSpec{Stream: "POSTAMT_TEST", Durable: durable, AckWait: 2 * time.Second}, h)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("consume: %v", err)
		}
	})
}

func TestRelayPublishesAtomicWritesInOrder(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	for i := range 5 {
		write(t, ctx, h.rdb, fmt.Sprintf("e:%d", i), fmt.Sprintf("v%d", i))
	}
	h.relay(t, "r1", time.Minute)
	var c collector
	consume(t, h.js, "c1", c.handler(t))
	for i := 5; i < 10; i++ {
		write(t, ctx, h.rdb, fmt.Sprintf("e:%d", i), fmt.Sprintf("v%d", i))
	}
	poll.Eventually(t, "10 events", func() bool { return len(c.snapshot()) == 10 })
	if got, want := fmt.Sprint(c.snapshot()), "[e:0 e:1 e:2 e:3 e:4 e:5 e:6 e:7 e:8 e:9]"; got != want {
		t.Errorf("ids = %s, want %s", got, want)
	}
	if got := fmt.Sprint(c.vals); got != "[v0 v1 v2 v3 v4 v5 v6 v7 v8 v9]" {
		t.Errorf("values = %s", got)
	}
	poll.Eventually(t, "the stream to be emptied", func() bool { return h.rdb.XLen(ctx, streamKey).Val() == 0 })
}

// TestCrashedRelayIsTakenOver: a relay read an entry, published it and died before XACK. Another
// relay claims the entry once it is idle, publishes it again, and JetStream drops the duplicate by
// its Nats-Msg-Id: the consumer sees it once.
func TestCrashedRelayIsTakenOver(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	write(t, ctx, h.rdb, "e:1", "v1")
	if err := h.rdb.XGroupCreateMkStream(ctx, streamKey, "relay", "0").Err(); err != nil {
		t.Fatal(err)
	}
	res, err := h.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "relay", Consumer: "dead", Streams: []string{streamKey, ">"}, Count: 10}).Result()
	if err != nil || len(res[0].Messages) != 1 {
		t.Fatalf("dead relay's read: %v %v", res, err)
	}
	msg := &nats.Msg{Subject: subject, Data: mustMarshal(t, wrapperspb.String("v1")), Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, "e:1")
	if _, err := h.js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}

	r := h.relay(t, "alive", 50*time.Millisecond)
	poll.Eventually(t, "the entry to be reclaimed and acknowledged", func() bool { return h.rdb.XLen(ctx, streamKey).Val() == 0 })
	if _, reclaimed, _ := r.Stats(); reclaimed != 1 {
		t.Errorf("reclaimed = %d, want 1", reclaimed)
	}
	write(t, ctx, h.rdb, "e:2", "v2")
	var c collector
	consume(t, h.js, "c1", c.handler(t))
	poll.Eventually(t, "e:2", func() bool { ids := c.snapshot(); return len(ids) > 0 && ids[len(ids)-1] == "e:2" })
	if got := fmt.Sprint(c.snapshot()); got != "[e:1 e:2]" {
		t.Errorf("delivered = %s, want [e:1 e:2] (e:1 once)", got)
	}
}

// TestRelaySurvivesJetStreamRestart: NATS goes away mid-stream; the relay keeps retrying and
// nothing is lost, duplicated or reordered.
func TestRelaySurvivesJetStreamRestart(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.relay(t, "r1", time.Minute)
	for i := range 20 {
		write(t, ctx, h.rdb, fmt.Sprintf("e:%02d", i), "v")
	}
	h.ns.Restart(t)
	for i := 20; i < 40; i++ {
		write(t, ctx, h.rdb, fmt.Sprintf("e:%02d", i), "v")
	}
	poll.Eventually(t, "the stream to drain", func() bool { return h.rdb.XLen(ctx, streamKey).Val() == 0 })
	var c collector
	consume(t, h.js, "c1", c.handler(t))
	poll.Eventually(t, "40 events", func() bool { return len(c.snapshot()) >= 40 })
	var want []string
	for i := range 40 {
		want = append(want, fmt.Sprintf("e:%02d", i))
	}
	if got := c.snapshot(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delivered = %v, want %v", got, want)
	}
}

func TestTraceContextCrossesRedisAndNATS(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	h := newHarness(t)
	ctx, span := tp.Tracer("test").Start(context.Background(), "request")
	write(t, ctx, h.rdb, "e:1", "v1")
	span.End()
	h.relay(t, "r1", time.Minute)
	var c collector
	consume(t, h.js, "c1", c.handler(t))
	poll.Eventually(t, "the event", func() bool { return len(c.snapshot()) == 1 })
	c.mu.Lock()
	got := trace.SpanContextFromContext(c.ctxs[0])
	c.mu.Unlock()
	if got.TraceID() != span.SpanContext().TraceID() {
		t.Errorf("consumer trace id = %s, want the writer's %s", got.TraceID(), span.SpanContext().TraceID())
	}
}

func TestConsumerRetriesAndTerminates(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	var mu sync.Mutex
	calls := map[string]int{}
	var done []string
	consume(t, h.js, "c1", func(_ context.Context, m eventbus.Message) error {
		mu.Lock()
		defer mu.Unlock()
		calls[m.ID]++
		switch {
		case m.ID == "flaky" && calls[m.ID] == 1:
			return errors.New("temporarily broken")
		case m.ID == "poison":
			return errs.Invalid("data", "can never be applied")
		}
		done = append(done, m.ID)
		return nil
	})
	for _, id := range []string{"flaky", "poison", "last"} {
		msg := &nats.Msg{Subject: subject, Data: mustMarshal(t, wrapperspb.String(id)), Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, id)
		if _, err := h.js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	poll.Eventually(t, "flaky and last applied", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(done) == 2
	})
	// Give a would-be redelivery of the poison message a chance to show up behind a fresh one.
	msg := &nats.Msg{Subject: subject, Data: mustMarshal(t, wrapperspb.String("sentinel")), Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, "sentinel")
	if _, err := h.js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, "sentinel applied", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(done) == 3
	})
	mu.Lock()
	defer mu.Unlock()
	if calls["flaky"] != 2 || calls["poison"] != 1 {
		t.Errorf("calls = %v, want flaky twice and poison once", calls)
	}
}
