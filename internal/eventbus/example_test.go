package eventbus_test

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/postamt/postamt/internal/eventbus"
)

// renameScript is a service's write: the record and the event announcing it, atomically.
//
//	KEYS[1] the mailbox record     pm:mb:{pN}:mailbox:<id>
//	KEYS[2] the partition's events pm:mb:{pN}:events (same hash tag: one Cluster slot)
//	ARGV[1] the new name, ARGV[2] the expected version
//	ARGV[3..8] eventbus.Envelope(...)
//
// It returns the new version, or an error reply CONFLICT before writing anything.
var renameScript = redis.NewScript(eventbus.LuaEmit + `
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[2]) then return redis.error_reply('CONFLICT') end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'version', v + 1)
postamt_emit(KEYS[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
return v + 1
`)

const partitions = 16

// partition is the hash tag of an entity's partition.
func partition(id string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return fmt.Sprintf("{p%d}", h.Sum32()%partitions)
}

// Example shows the outbox pattern end to end: a store writes state and event in one script, a
// relay publishes every partition's stream, and another service consumes the events.
func Example() {
	ctx := context.Background()
	var (
		rdb *redis.Client           // the service's Redis
		js  jetstream.JetStream     // from jetstream.New(nc, jetstream.WithPublishAsyncTimeout(...))
		log = slog.Default()        //
		msg = wrapperspb.String("") // the event, normally a postamt.<svc>.v1 message
	)
	if rdb == nil || js == nil { //nolint:govet // nilness: the placeholders above are nil; the example only compiles
		return // the example only compiles
	}

	// Write: the record and its event, atomically. The event id carries the new version.
	id, version := "mb-42", 7
	tag := partition(id)
	argv, err := eventbus.Envelope(ctx, fmt.Sprintf("%s:%d", id, version+1), eventbus.Subject(msg), "tenant-1", msg)
	if err != nil {
		log.Error("event", "error", err)
		return
	}
	keys := []string{"pm:mb:" + tag + ":mailbox:" + id, "pm:mb:" + tag + ":events"}
	if err := renameScript.Run(ctx, rdb, keys, append([]any{"Info", version}, argv...)...).Err(); err != nil {
		log.Error("rename", "error", err)
		return
	}

	// Publish: one relay per service replica over every partition's stream.
	_ = eventbus.EnsureStream(ctx, js, eventbus.StreamSpec{Name: "POSTAMT_MAILBOX", Subjects: []string{"postamt.mailbox.v1.>"}})
	streams := make([]string, partitions)
	for i := range streams {
		streams[i] = fmt.Sprintf("pm:mb:{p%d}:events", i)
	}
	relay := &eventbus.Relay{Client: rdb, JS: js, Streams: streams, Group: "relay", Logger: log}
	go func() { _ = relay.Run(ctx) }()

	// Consume, in another service: idempotent by the event id.
	_ = eventbus.Consume(ctx, js, eventbus.ConsumerSpec{
		Stream: "POSTAMT_MAILBOX", Durable: "outbox-mailbox-cache",
		FilterSubjects: []string{"postamt.mailbox.v1.MailboxChanged"},
	}, func(ctx context.Context, m eventbus.Message) error {
		log.InfoContext(ctx, "mailbox changed", "id", m.ID, "tenant", m.Tenant)
		return nil
	})
}
