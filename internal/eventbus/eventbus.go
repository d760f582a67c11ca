// Package eventbus carries the suite's facts from Redis to NATS JetStream and on to consumers.
//
// # The transactional outbox
//
// A service writes a state change and the event announcing it in one atomic Redis step, the
// event as an entry of a Redis stream in the service's own keyspace. No event exists without its
// state and no state without its event. The Relay then publishes the stream entries to
// JetStream with Nats-Msg-Id set to the event id (<entity id>:<version>), waits for JetStream's
// acknowledgement, and only then acknowledges and deletes the entries. An entry published twice
// (a relay dies between publish and XACK) is dropped by the stream's duplicate window, and
// consumers apply idempotently anyway.
//
// # Writing an event from a Lua script
//
// Prepend LuaEmit to the service's script, pass the six values Envelope returns as the script's
// last ARGV, and call postamt_emit with the stream key and them, in order:
//
//	local function ... (LuaEmit)
//	-- KEYS[1] the record, KEYS[2] the partition's event stream
//	-- ARGV[1] the record, ARGV[2..7] Envelope(ctx, id, subject, tenant, msg)
//	if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('EXISTS') end
//	redis.call('SET', KEYS[1], ARGV[1])
//	return postamt_emit(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
//
// Rules such a script keeps:
//   - KEYS declares every key it touches, the stream key included.
//   - For Redis Cluster the stream key shares the hash tag of the entity keys, so services use
//     partitioned stream keys such as pm:mailbox:{p3}:events, one per partition of entities, and
//     give all of them to the Relay.
//   - Check everything that can fail before the first write and emit last: Redis does not roll
//     back the writes a script made before an error.
//
// Code using MULTI/EXEC instead of a script XADDs the pairs Fields returns in the transaction.
package eventbus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/protobuf/proto"
)

// Stream entry fields. LuaEmit and Fields write exactly these; the Relay reads them.
const (
	FieldID          = "id"
	FieldSubject     = "subject"
	FieldTenant      = "tenant"
	FieldData        = "data"
	FieldTraceparent = "traceparent"
	FieldTracestate  = "tracestate"
)

// Header names set on published messages, for consumers in any language.
const (
	// HeaderTenant carries the tenant the event belongs to, so consumers can route or filter
	// without decoding the payload.
	HeaderTenant = "Postamt-Tenant"
	// HeaderTraceparent and HeaderTracestate are the W3C trace context headers, lower case as
	// the W3C spells them; nats.Header is case-sensitive, so the case matters to non-Go readers.
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
)

// LuaEmit defines postamt_emit(stream, id, subject, tenant, data, traceparent, tracestate) for
// scripts that write state and its event in one atomic step; see the package documentation. It
// XADDs one entry with an auto-generated id and returns that id. There is deliberately no MAXLEN:
// trimming could silently drop events the relay has not published yet; the relay deletes entries
// once JetStream has them.
const LuaEmit = `
local function postamt_emit(stream, id, subject, tenant, data, traceparent, tracestate)
  return redis.call('XADD', stream, '*', 'id', id, 'subject', subject, 'tenant', tenant,
    'data', data, 'traceparent', traceparent or '', 'tracestate', tracestate or '')
end
`

// ErrInvalidEvent reports an event that cannot be written: an empty id or subject, or a message
// that does not marshal. It is a programming error, never retried.
var ErrInvalidEvent = errors.New("eventbus: invalid event")

// Envelope returns the ARGV values postamt_emit takes after the stream key, in order: id,
// subject, tenant, the marshalled msg, and the W3C traceparent and tracestate of the span in ctx
// (empty without one), so the trace continues in the relay and in every consumer although the
// event waits in Redis in between. id is <entity id>:<version> and becomes the Nats-Msg-Id that
// JetStream deduplicates on; subject is normally Subject(msg).
func Envelope(ctx context.Context, id, subject, tenant string, msg proto.Message) ([]any, error) {
	if id == "" || subject == "" {
		return nil, fmt.Errorf("%w: id %q, subject %q: both are required", ErrInvalidEvent, id, subject)
	}
	data, err := proto.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("%w: marshal %s: %w", ErrInvalidEvent, id, err)
	}
	tc := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, tc)
	return []any{id, subject, tenant, data, tc[HeaderTraceparent], tc[HeaderTracestate]}, nil
}

// Fields returns the same event as Envelope as field/value pairs, for code that XADDs the event
// in a MULTI/EXEC transaction instead of a script.
func Fields(ctx context.Context, id, subject, tenant string, msg proto.Message) ([]any, error) {
	argv, err := Envelope(ctx, id, subject, tenant, msg)
	if err != nil {
		return nil, err
	}
	names := [...]string{FieldID, FieldSubject, FieldTenant, FieldData, FieldTraceparent, FieldTracestate}
	out := make([]any, 0, 2*len(names))
	for i, n := range names {
		out = append(out, n, argv[i])
	}
	return out, nil
}

// Subject is the subject an event is published on: the full name of its protobuf message (e.g.
// postamt.mailbox.v1.MembershipChanged), so a stream's subjects are its proto package plus ">".
func Subject(msg proto.Message) string {
	return string(msg.ProtoReflect().Descriptor().FullName())
}

// HeaderCarrier lets OpenTelemetry propagators read and write nats.Header. Keys are kept lower
// case (traceparent, tracestate), as the W3C names them: nats.Header is case-sensitive, and
// carriers built on http.Header would write Traceparent, which consumers outside Go do not find.
type HeaderCarrier nats.Header

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the first value of key, looked up in lower case.
func (c HeaderCarrier) Get(key string) string {
	if v := c[strings.ToLower(key)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set replaces the values of key, stored in lower case.
func (c HeaderCarrier) Set(key, value string) { c[strings.ToLower(key)] = []string{value} }

// Keys lists the header names present.
func (c HeaderCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// StreamSpec describes a service's JetStream stream. Zero values are the documented defaults.
type StreamSpec struct {
	// Name is the stream name, e.g. POSTAMT_MAILBOX.
	Name string
	// Subjects are the subjects stored, e.g. postamt.mailbox.v1.>.
	Subjects []string
	// Duplicates is the Nats-Msg-Id dedupe window; 0 means 10 minutes, longer than any relay
	// retry or takeover. An entry republished after a longer NATS outage can arrive twice, which
	// idempotent consumers absorb.
	Duplicates time.Duration
	// MaxAge bounds how long events are kept; 0 means 7 days, time enough for a consumer that
	// was down to catch up.
	MaxAge time.Duration
	// Replicas is the number of copies in a NATS cluster; 0 means 1 for a new stream and leaves
	// an existing stream's count as the operator set it.
	Replicas int
}

// EnsureStream creates the stream, or brings an existing one to spec, with file storage, so
// every replica of every service that writes or reads it may call it at start-up. A stream that
// already matches is left alone: no update request (concurrent updates of one stream while
// consumers are created on it are what an embedded nats-server 2.15 races on), and an operator's
// replica count stands unless spec names one.
func EnsureStream(ctx context.Context, js jetstream.JetStream, spec StreamSpec) error {
	if spec.Name == "" || len(spec.Subjects) == 0 {
		return fmt.Errorf("ensure stream %q: a name and subjects are required", spec.Name)
	}
	if spec.Duplicates == 0 {
		spec.Duplicates = 10 * time.Minute
	}
	if spec.MaxAge == 0 {
		spec.MaxAge = 7 * 24 * time.Hour
	}
	st, err := js.Stream(ctx, spec.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		err = createStream(ctx, js, jetstream.StreamConfig{
			Name:       spec.Name,
			Subjects:   spec.Subjects,
			Storage:    jetstream.FileStorage,
			Retention:  jetstream.LimitsPolicy,
			Duplicates: spec.Duplicates,
			MaxAge:     spec.MaxAge,
			Replicas:   max(spec.Replicas, 1),
		})
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("ensure stream %s: %w", spec.Name, err)
		}
		st, err = js.Stream(ctx, spec.Name) // another replica created it meanwhile
	}
	if err != nil {
		return fmt.Errorf("ensure stream %s: %w", spec.Name, err)
	}
	cfg := st.CachedInfo().Config
	if slices.Equal(cfg.Subjects, spec.Subjects) && cfg.Duplicates == spec.Duplicates && cfg.MaxAge == spec.MaxAge &&
		(spec.Replicas == 0 || cfg.Replicas == spec.Replicas) {
		return nil
	}
	cfg.Subjects, cfg.Duplicates, cfg.MaxAge = spec.Subjects, spec.Duplicates, spec.MaxAge
	if spec.Replicas != 0 {
		cfg.Replicas = spec.Replicas
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("ensure stream %s: %w", spec.Name, err)
	}
	return nil
}

// errCodeStreamStoreFailed is JetStream's "error creating store for stream" (JSStreamStoreFailedF;
// nats.go names no constant for it).
const errCodeStreamStoreFailed jetstream.ErrorCode = 10049

// storeFailedRetries and storeFailedPause bound how often, and how far apart, createStream tries
// again after errCodeStreamStoreFailed: the server's cleanup runs within milliseconds.
const (
	storeFailedRetries = 5
	storeFailedPause   = 20 * time.Millisecond
)

// createStream creates the stream, trying again when the server failed to create its store. A
// nats-server (2.15) that has just deleted a stream removes the account's then-empty streams
// directory from a goroutine of its own, which races with a new stream's MkdirAll: the create
// fails with "could not create storage directory … no such file or directory" though nothing is
// wrong (a stream an operator deleted and a service re-creates at once). Any other error, or
// the failure outlasting the retries, is returned.
func createStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	for try := 0; ; try++ {
		_, err := js.CreateStream(ctx, cfg)
		var apiErr *jetstream.APIError
		if err == nil || try == storeFailedRetries || !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeStreamStoreFailed {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(storeFailedPause):
		}
	}
}
