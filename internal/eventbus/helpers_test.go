package eventbus_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

const (
	testStream = "POSTAMT_TEST"
	subject    = "postamt.test.v1.Changed"
	streamKey  = "pm:test:{p0}:events"
	group      = "relay"
)

// writeScript is what a service store does: the record and its event in one atomic step.
// KEYS[1] the record, KEYS[2] the partition's event stream (same hash tag).
// ARGV[1] the record's value, ARGV[2..7] the event's Envelope.
var writeScript = redis.NewScript(eventbus.LuaEmit + `
redis.call('SET', KEYS[1], ARGV[1])
return postamt_emit(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
`)

// recordKey is the key of entity id in the partition of stream key "pm:test:{pN}:events".
func recordKey(stream, id string) string { return stream[:len(stream)-len("events")] + "rec:" + id }

// write stores value under id and emits its event on stream, as a service would.
func write(t *testing.T, ctx context.Context, rdb redis.Scripter, stream, id, value string) {
	t.Helper()
	argv, err := eventbus.Envelope(ctx, id, subject, "t1", wrapperspb.String(value))
	if err != nil {
		t.Fatal(err)
	}
	if err := writeScript.Run(ctx, rdb, []string{recordKey(stream, id), stream}, append([]any{value}, argv...)...).Err(); err != nil {
		t.Fatalf("write %s: %v", id, err)
	}
}

type harness struct {
	redis *redistest.Server
	rdb   *redis.Client
	nats  *natstest.Server
	js    jetstream.JetStream
}

func newHarness(t *testing.T, opts ...redistest.Option) *harness {
	t.Helper()
	h := &harness{redis: redistest.Start(t, opts...), nats: natstest.Start(t)}
	h.rdb = h.redis.Client(t)
	h.js = h.nats.JetStream(t)
	spec := eventbus.StreamSpec{Name: testStream, Subjects: []string{"postamt.test.v1.>"}}
	if err := eventbus.EnsureStream(context.Background(), h.js, spec); err != nil {
		t.Fatal(err)
	}
	return h
}

// relay runs r until the test ends or the returned stop is called.
func startRelay(t *testing.T, r *eventbus.Relay) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("relay %s: %v", r.Consumer, err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// relay is a relay of the harness's stream with test-sized settings, logging to the test.
func (h *harness) relay(t *testing.T, name string, claimIdle time.Duration, streams ...string) *eventbus.Relay {
	if len(streams) == 0 {
		streams = []string{streamKey}
	}
	return &eventbus.Relay{
		Client: h.rdb, JS: h.js, Streams: streams, Group: group, Consumer: name,
		BatchSize: 16, Block: 200 * time.Millisecond, ClaimIdle: claimIdle,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
}

// received is one handled message.
type received struct {
	msg eventbus.Message
	ctx context.Context
}

// collector records what a consumer handler receives.
type collector struct {
	mu  sync.Mutex
	got []received
}

func (c *collector) handle(ctx context.Context, m eventbus.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.got = append(c.got, received{msg: m, ctx: ctx})
	return nil
}

func (c *collector) all() []received {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.got)
}

func (c *collector) ids() []string {
	var out []string
	for _, r := range c.all() {
		out = append(out, r.msg.ID)
	}
	return out
}

// consume runs eventbus.Consume on the test stream until the test ends.
func consume(t *testing.T, js jetstream.JetStream, spec eventbus.ConsumerSpec, h eventbus.Handler) {
	t.Helper()
	if spec.Stream == "" {
		spec.Stream = testStream
	}
	if spec.Durable == "" {
		spec.Durable = "c1"
	}
	if spec.AckWait == 0 {
		spec.AckWait = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eventbus.Consume(ctx, js, spec, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("consume: %v", err)
		}
	})
}

// ids returns prefix:00 .. prefix:n-1.
func ids(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s:%02d", prefix, i))
	}
	return out
}

// storedMsgs is the number of messages in the test's JetStream stream.
func storedMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	st, err := js.Stream(context.Background(), testStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// crashRelay leaves stream as a relay that died would: it holds the lease for ttl and has read
// every entry (pending under consumer "dead"); with published, it also got them into JetStream
// before dying, i.e. it died between publish and XACK.
func (h *harness) crashRelay(t *testing.T, stream string, published bool, ttl time.Duration) {
	t.Helper()
	ctx := context.Background()
	if err := h.rdb.XGroupCreateMkStream(ctx, stream, group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	res, err := h.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: "dead", Streams: []string{stream, ">"}, Count: 100}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if published {
		for _, m := range res[0].Messages {
			msg := &nats.Msg{Subject: m.Values[eventbus.FieldSubject].(string), Data: []byte(m.Values[eventbus.FieldData].(string)), Header: nats.Header{}}
			msg.Header.Set(jetstream.MsgIDHeader, m.Values[eventbus.FieldID].(string))
			if _, err := h.js.PublishMsg(ctx, msg); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := h.rdb.Set(ctx, eventbus.LeaseKey(stream), "dead/0", ttl).Err(); err != nil {
		t.Fatal(err)
	}
}

// waitDrained waits until the relay deleted every entry of the streams.
func waitDrained(t *testing.T, rdb redis.Cmdable, streams ...string) {
	t.Helper()
	poll.Eventually(t, "the relay to empty the streams", func() bool {
		for _, s := range streams {
			if n, err := rdb.XLen(context.Background(), s).Result(); err != nil || n != 0 {
				return false
			}
		}
		return true
	})
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// publish puts a message with id straight into JetStream, for consumer tests.
func publish(t *testing.T, js jetstream.JetStream, id string) {
	t.Helper()
	msg := &nats.Msg{Subject: subject, Data: mustMarshal(t, wrapperspb.String(id)), Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}
