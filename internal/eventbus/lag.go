package eventbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/gauges"
)

// Backlog is what waits in a relay's Redis streams: the entries not yet acknowledged by
// JetStream (the relay deletes an entry only then) and the time the oldest of them was written.
type Backlog struct {
	Entries int64
	// Oldest is when the oldest waiting entry was written (its stream id's milliseconds); zero
	// when nothing waits.
	Oldest time.Time
}

// Backlog reads the relay's backlog over all its streams with two O(1)/O(log n) commands per
// stream (XLEN, and XRANGE - + COUNT 1 for the oldest entry's id), pipelined. Metrics samplers
// call it; it never scans.
func (r *Relay) Backlog(ctx context.Context) (Backlog, error) {
	pipe := r.Client.Pipeline()
	lens := make([]*redis.IntCmd, len(r.Streams))
	heads := make([]*redis.XMessageSliceCmd, len(r.Streams))
	for i, s := range r.Streams {
		lens[i] = pipe.XLen(ctx, s)
		heads[i] = pipe.XRangeN(ctx, s, "-", "+", 1)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return Backlog{}, fmt.Errorf("relay backlog: %w", err)
	}
	var b Backlog
	for i := range r.Streams {
		b.Entries += lens[i].Val()
		msgs := heads[i].Val()
		if len(msgs) == 0 {
			continue
		}
		if t, ok := streamIDTime(msgs[0].ID); ok && (b.Oldest.IsZero() || t.Before(b.Oldest)) {
			b.Oldest = t
		}
	}
	return b, nil
}

// streamIDTime is the time in a Redis stream id "<ms>-<seq>".
func streamIDTime(id string) (time.Time, bool) {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(n), true
}

// Lag is how far a durable consumer is behind its stream, from the consumer's info.
type Lag struct {
	// Pending are messages of the stream the consumer has not been delivered yet.
	Pending uint64
	// AckPending are messages delivered and not yet acknowledged (in a handler, or failing and
	// waiting for redelivery).
	AckPending uint64
	// Redelivered are messages delivered more than once and not yet acknowledged.
	Redelivered int
}

// ConsumerLag reads a durable consumer's lag: one JetStream API request. A consumer not created
// yet is ErrConsumerNotFound (wrapped).
func ConsumerLag(ctx context.Context, js jetstream.JetStream, stream, durable string) (Lag, error) {
	c, err := js.Consumer(ctx, stream, durable)
	if err != nil {
		return Lag{}, fmt.Errorf("consumer %s/%s: %w", stream, durable, err)
	}
	info := c.CachedInfo() // fetched by Consumer just now
	return Lag{Pending: info.NumPending, AckPending: uint64(max(info.NumAckPending, 0)), Redelivered: info.NumRedelivered}, nil
}

// Durable names a durable consumer a service owns (creates and acknowledges for), whose lag that
// service exports.
type Durable struct{ Stream, Name string }

// LagGauges are a service's event lag gauges, read by a metrics sampler (gauges.Sampler):
//
//	postamt_relay_backlog_entries{service}                       entries waiting in the Redis streams
//	postamt_relay_oldest_entry_age_seconds{service}              age of the oldest of them (0: none)
//	postamt_consumer_pending_messages{service,stream,consumer}   not yet delivered to the consumer
//	postamt_consumer_ack_pending_messages{service,stream,consumer} delivered, not yet acknowledged
//	postamt_consumer_redelivered_messages{service,stream,consumer} unacknowledged and delivered again
//
// The labels are bounded by the code: one service, and the few durables it owns.
type LagGauges struct {
	relay    *Relay
	js       jetstream.JetStream
	durables []Durable
	now      func() time.Time

	backlog, age, pending, ackPending, redelivered *prometheus.Desc
}

// NewLagGauges describes the gauges of service's relay and durables; now nil means time.Now.
func NewLagGauges(service string, relay *Relay, js jetstream.JetStream, now func() time.Time, durables ...Durable) *LagGauges {
	if now == nil {
		now = time.Now
	}
	c := prometheus.Labels{"service": service}
	cl := []string{"stream", "consumer"}
	return &LagGauges{
		relay: relay, js: js, durables: durables, now: now,
		backlog: prometheus.NewDesc("postamt_relay_backlog_entries",
			"Events waiting in the service's Redis streams for the relay to publish them to JetStream.", nil, c),
		age: prometheus.NewDesc("postamt_relay_oldest_entry_age_seconds",
			"Age of the oldest event waiting for the relay; 0 when none waits.", nil, c),
		pending: prometheus.NewDesc("postamt_consumer_pending_messages",
			"Messages of the stream not yet delivered to the service's durable consumer.", cl, c),
		ackPending: prometheus.NewDesc("postamt_consumer_ack_pending_messages",
			"Messages delivered to the durable consumer and not yet acknowledged.", cl, c),
		redelivered: prometheus.NewDesc("postamt_consumer_redelivered_messages",
			"Unacknowledged messages delivered more than once (a handler failing on them).", cl, c),
	}
}

// Descs lists every gauge Sample emits.
func (g *LagGauges) Descs() []*prometheus.Desc {
	return []*prometheus.Desc{g.backlog, g.age, g.pending, g.ackPending, g.redelivered}
}

// Sample reads the relay's backlog (two commands per stream) and each durable's info (one
// JetStream request each). A durable not created yet is left out; other failures return an
// error after emitting what was read.
func (g *LagGauges) Sample(ctx context.Context, emit func(desc *prometheus.Desc, value float64, labels ...string)) error {
	var errList []error
	if g.relay != nil {
		b, err := g.relay.Backlog(ctx)
		if err != nil {
			errList = append(errList, err)
		} else {
			emit(g.backlog, float64(b.Entries))
			age := 0.0
			if !b.Oldest.IsZero() {
				age = max(g.now().Sub(b.Oldest).Seconds(), 0)
			}
			emit(g.age, age)
		}
	}
	for _, d := range g.durables {
		lag, err := ConsumerLag(ctx, g.js, d.Stream, d.Name)
		switch {
		case errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrStreamNotFound):
			continue
		case err != nil:
			errList = append(errList, err)
			continue
		}
		emit(g.pending, float64(lag.Pending), d.Stream, d.Name)
		emit(g.ackPending, float64(lag.AckPending), d.Stream, d.Name)
		emit(g.redelivered, float64(lag.Redelivered), d.Stream, d.Name)
	}
	return errors.Join(errList...)
}

// LagSampler samples a service's LagGauges every 15 s in every replica (each reads the same
// few O(1) values; queries take the max across pods). Register it with the service's registry
// and Run it beside the service.
func LagSampler(service string, relay *Relay, js jetstream.JetStream, logger *slog.Logger, durables ...Durable) *gauges.Sampler {
	g := NewLagGauges(service, relay, js, nil, durables...)
	return &gauges.Sampler{Name: service + "-events", Descs: g.Descs(), Sample: g.Sample, Logger: logger}
}
