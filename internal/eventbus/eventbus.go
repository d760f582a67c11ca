// Package eventbus carries the suite's facts from Redis to NATS JetStream and on to consumers.
//
// The transactional outbox: a service writes a state change and the event announcing it in one
// atomic Redis step (a Lua script or MULTI/EXEC), the event as an entry of a Redis stream. The
// Relay publishes stream entries to JetStream with Nats-Msg-Id set to the event id
// (<entity id>:<version>), waits for JetStream's acknowledgement, then acknowledges and deletes
// the entry. So no event exists without its state and no state without its event; an entry
// published twice (a relay crash between publish and XACK) is dropped by JetStream's duplicate
// window, and consumers apply idempotently anyway.
package eventbus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/protobuf/proto"
)

// Stream entry fields. A service's Lua script or MULTI writes exactly these.
const (
	FieldID          = "id"
	FieldSubject     = "subject"
	FieldTenant      = "tenant"
	FieldData        = "data"
	FieldTraceparent = "traceparent"
	FieldTracestate  = "tracestate"
)

// Header names set on published messages. Trace headers are lower case on purpose: nats.Header is
// case-sensitive, and W3C names are lower case for every non-Go consumer.
const (
	HeaderTenant = "Postamt-Tenant"
)

// LuaEmit is a Lua function for scripts that write state and their event in one step. Prepend it
// to the script and call postamt_emit(KEYS[n], ARGV...) with the stream key declared in KEYS (for
// Redis Cluster it shares the hash tag of the entity's keys). The arguments are the values Fields
// returns, in order. No MAXLEN: unpublished events are never trimmed.
const LuaEmit = `
local function postamt_emit(stream, id, subject, tenant, data, traceparent, tracestate)
  return redis.call('XADD', stream, '*', 'id', id, 'subject', subject, 'tenant', tenant,
    'data', data, 'traceparent', traceparent, 'tracestate', tracestate)
end
`

// propagator is the W3C trace context format carried through Redis and NATS.
var propagator = propagation.TraceContext{}

// Fields returns the stream entry of an event, ready for XADD (as field/value pairs) or, taking
// every second value, as ARGV for LuaEmit. The trace context of ctx goes along so the trace
// continues in the relay and the consumers.
func Fields(ctx context.Context, id, subject, tenant string, msg proto.Message) ([]any, error) {
	data, err := proto.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("marshal event %s: %w", id, err)
	}
	tc := propagation.MapCarrier{}
	propagator.Inject(ctx, tc)
	return []any{
		FieldID, id, FieldSubject, subject, FieldTenant, tenant, FieldData, data,
		FieldTraceparent, tc["traceparent"], FieldTracestate, tc["tracestate"],
	}, nil
}

// HeaderCarrier adapts nats.Header to OpenTelemetry propagation without changing the case of
// keys, unlike http.Header-based carriers.
type HeaderCarrier nats.Header

// Get implements propagation.TextMapCarrier.
func (c HeaderCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set implements propagation.TextMapCarrier.
func (c HeaderCarrier) Set(key, value string) { c[key] = []string{value} }

// Keys implements propagation.TextMapCarrier.
func (c HeaderCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// StreamSpec describes a service's JetStream stream.
type StreamSpec struct {
	Name     string
	Subjects []string
	// Duplicates is the Nats-Msg-Id dedupe window; 0 means 10 minutes, longer than any relay
	// retry.
	Duplicates time.Duration
	// MaxAge bounds how long events are kept; 0 means 7 days.
	MaxAge time.Duration
}

// EnsureStream creates the stream or updates it to spec; safe to call from every replica at start.
func EnsureStream(ctx context.Context, js jetstream.JetStream, spec StreamSpec) error {
	if spec.Duplicates == 0 {
		spec.Duplicates = 10 * time.Minute
	}
	if spec.MaxAge == 0 {
		spec.MaxAge = 7 * 24 * time.Hour
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       spec.Name,
		Subjects:   spec.Subjects,
		Storage:    jetstream.FileStorage,
		Retention:  jetstream.LimitsPolicy,
		Duplicates: spec.Duplicates,
		MaxAge:     spec.MaxAge,
	})
	if err != nil {
		return fmt.Errorf("ensure stream %s: %w", spec.Name, err)
	}
	return nil
}
