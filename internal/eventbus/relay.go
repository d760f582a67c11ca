package eventbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

// Relay publishes the entries of Redis streams to JetStream: in order per stream, at least once,
// deleting an entry only after JetStream acknowledged it. Several relays may run on the same
// streams (one consumer group, one consumer name each); a relay that dies leaves its entries
// pending, and another claims them once they were idle for ClaimIdle.
type Relay struct {
	Client redis.UniversalClient
	JS     jetstream.JetStream
	// Streams are the Redis stream keys to publish.
	Streams []string
	// Group is the consumer group shared by every relay of a service; Consumer names this relay
	// (a pod name) and must be unique among running relays.
	Group    string
	Consumer string
	// BatchSize bounds the entries read and published per round; 0 means 256.
	BatchSize int
	// Block is how long one read waits for new entries; 0 means 2s. New entries wake it at once.
	Block time.Duration
	// ClaimIdle is how long an entry may stay pending before another relay takes it; 0 means 30s.
	ClaimIdle time.Duration
	Logger    *slog.Logger

	published, reclaimed, failures atomic.Int64
}

// Stats reports what the relay did, for metrics and tests.
func (r *Relay) Stats() (published, reclaimed, failures int64) {
	return r.published.Load(), r.reclaimed.Load(), r.failures.Load()
}

func (r *Relay) defaults() {
	if r.BatchSize == 0 {
		r.BatchSize = 256
	}
	if r.Block == 0 {
		r.Block = 2 * time.Second
	}
	if r.ClaimIdle == 0 {
		r.ClaimIdle = 30 * time.Second
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
}

// Run publishes until ctx ends. It reads every stream in one blocking XREADGROUP, so one relay
// holds one Redis connection however many streams it serves. (With Redis Cluster, run one Relay
// per group of streams that share a node.) Errors are retried with backoff; Run returns nil when
// ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	r.defaults()
	if len(r.Streams) == 0 {
		return errors.New("relay: no streams")
	}
	backoff := newBackoff()
	for ctx.Err() == nil {
		if err := r.ensureGroups(ctx); err != nil {
			r.fail(ctx, "create consumer groups", err, backoff)
			continue
		}
		break
	}
	// Entries this consumer name read before a restart come first: no need to wait ClaimIdle.
	pendingOwn := true
	lastClaim := time.Time{}
	for ctx.Err() == nil {
		if time.Since(lastClaim) >= r.ClaimIdle/2 {
			if err := r.reclaim(ctx); err != nil {
				r.fail(ctx, "reclaim", err, backoff)
				continue
			}
			lastClaim = time.Now()
		}
		start := ">"
		if pendingOwn {
			start = "0"
		}
		streams := make([]string, 0, 2*len(r.Streams))
		streams = append(streams, r.Streams...)
		for range r.Streams {
			streams = append(streams, start)
		}
		block := r.Block
		if remaining := r.ClaimIdle/2 - time.Since(lastClaim); remaining < block {
			block = max(remaining, time.Millisecond)
		}
		if pendingOwn {
			block = -1 // no blocking for the own-pending read
		}
		res, err := r.Client.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: r.Group, Consumer: r.Consumer, Streams: streams, Count: int64(r.BatchSize), Block: block,
		}).Result()
		if errors.Is(err, redis.Nil) {
			pendingOwn = false
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.fail(ctx, "read streams", err, backoff)
			continue
		}
		empty := true
		for _, s := range res {
			if len(s.Messages) == 0 {
				continue
			}
			empty = false
			if err := r.publish(ctx, s.Stream, s.Messages); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				r.fail(ctx, "publish", err, backoff)
				// The entries stay pending under this consumer: read them again from "0".
				pendingOwn = true
				break
			}
		}
		if empty && pendingOwn {
			pendingOwn = false
		}
		backoff.reset()
	}
	return nil
}

func (r *Relay) fail(ctx context.Context, what string, err error, b *backoff) {
	r.failures.Add(1)
	d := b.next()
	r.Logger.Warn("relay: "+what+" failed; retrying", "error", err, "retry_in", d)
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func (r *Relay) ensureGroups(ctx context.Context) error {
	for _, s := range r.Streams {
		// From "0": entries written before the group existed are published too.
		err := r.Client.XGroupCreateMkStream(ctx, s, r.Group, "0").Err()
		if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			return fmt.Errorf("XGROUP CREATE %s: %w", s, err)
		}
	}
	return nil
}

// reclaim takes over entries another relay left pending for ClaimIdle, and publishes them.
func (r *Relay) reclaim(ctx context.Context) error {
	for _, s := range r.Streams {
		start := "0-0"
		for {
			msgs, next, err := r.Client.XAutoClaim(ctx, &redis.XAutoClaimArgs{
				Stream: s, Group: r.Group, Consumer: r.Consumer, MinIdle: r.ClaimIdle, Start: start, Count: int64(r.BatchSize),
			}).Result()
			if err != nil {
				return fmt.Errorf("XAUTOCLAIM %s: %w", s, err)
			}
			if len(msgs) > 0 {
				r.reclaimed.Add(int64(len(msgs)))
				if err := r.publish(ctx, s, msgs); err != nil {
					return err
				}
			}
			if next == "0-0" || next == "" {
				break
			}
			start = next
		}
	}
	return nil
}

// publish sends a batch asynchronously (order kept on the wire), waits for every PubAck, then
// acknowledges and deletes the entries in one pipeline. Any failure leaves all of them pending;
// republishing the ones already stored is harmless (same Nats-Msg-Id).
func (r *Relay) publish(ctx context.Context, stream string, msgs []redis.XMessage) error {
	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	ids := make([]string, 0, len(msgs))
	for _, m := range msgs {
		nm, err := toNATS(m)
		if err != nil {
			// A malformed entry can never be published; drop it loudly rather than block the stream.
			r.Logger.Error("relay: dropping malformed stream entry", "stream", stream, "entry", m.ID, "error", err)
			ids = append(ids, m.ID)
			continue
		}
		f, err := r.JS.PublishMsgAsync(nm)
		if err != nil {
			return fmt.Errorf("publish %s: %w", nm.Header.Get(jetstream.MsgIDHeader), err)
		}
		futures = append(futures, f)
		ids = append(ids, m.ID)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("publish %s: %w", f.Msg().Header.Get(jetstream.MsgIDHeader), err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	_, err := r.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.XAck(ctx, stream, r.Group, ids...)
		p.XDel(ctx, stream, ids...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("ack %d entries of %s: %w", len(ids), stream, err)
	}
	r.published.Add(int64(len(futures)))
	return nil
}

func toNATS(m redis.XMessage) (*nats.Msg, error) {
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	id, subject := str(FieldID), str(FieldSubject)
	if id == "" || subject == "" {
		return nil, errors.New("entry lacks id or subject")
	}
	h := nats.Header{}
	h.Set(jetstream.MsgIDHeader, id)
	if t := str(FieldTenant); t != "" {
		h.Set(HeaderTenant, t)
	}
	if tp := str(FieldTraceparent); tp != "" {
		h["traceparent"] = []string{tp}
		if ts := str(FieldTracestate); ts != "" {
			h["tracestate"] = []string{ts}
		}
	}
	return &nats.Msg{Subject: subject, Data: []byte(str(FieldData)), Header: h}, nil
}

// backoff doubles from 50ms to 5s.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{} }

func (b *backoff) next() time.Duration {
	if b.d == 0 {
		b.d = 50 * time.Millisecond
	} else {
		b.d = min(2*b.d, 5*time.Second)
	}
	return b.d
}

func (b *backoff) reset() { b.d = 0 }
