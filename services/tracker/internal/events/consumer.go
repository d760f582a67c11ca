package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// BatchIngester is the part of the tracker service the batch consumer needs: the three steps of
// tracker.Service.IngestBatch, which the consumer overlaps across batches.
type BatchIngester interface {
	GatherBatch(ctx context.Context, batch []tracker.Sent, visible uint64) *tracker.Gathering
	DecideBatch(ctx context.Context, g *tracker.Gathering, p *tracker.Pending, seq uint64) *tracker.Decided
	WriteBatch(ctx context.Context, d *tracker.Decided) ([]error, bool)
}

// DefaultMaxBatch is how many EmailSent events SentConsumer evaluates together at most.
const DefaultMaxBatch = 512

// SentConsumer consumes the outbox's EmailSent events into the ingest path in batches: it takes
// whatever JetStream has delivered (at least one event, at most MaxBatch), evaluates the batch
// with tracker.Service.IngestBatch (a few Redis round trips for the whole batch instead of two
// per event) and then acknowledges each event. A batch is as large as the backlog allows: one
// event when the stream is quiet, so latency does not grow, MaxBatch when it is behind.
//
// It is the durable pull consumer eventbus.Consume would run (same name, filter and settings,
// so it takes over an existing one), with the same guarantees: events are evaluated in stream
// order (IngestBatch has the outcome of one-at-a-time evaluation), acknowledged only after their
// decision is written, an undecodable or invalid event is terminated, and any other failure
// has the event delivered again after a backoff. Redelivery is harmless: ingest is idempotent
// by (tenant, Message-ID). Each event gets its consumer span, whose parent is the trace of the
// code that wrote it; its EmailTracked event continues that trace.
type SentConsumer struct {
	// JS is where the outbox's stream is.
	JS jetstream.JetStream
	// Svc evaluates the batches (tracker.Service).
	Svc BatchIngester
	// MaxBatch bounds a batch; 0 means DefaultMaxBatch.
	MaxBatch int
	// AckWait is how long a batch may take before JetStream delivers its events again; 0 means
	// 30s.
	AckWait time.Duration
	// Logger receives failures; nil discards them.
	Logger *slog.Logger
	// TracerProvider starts the consumer spans; nil means otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
}

// Run consumes until ctx ends and returns nil then. The consumer is created or updated
// idempotently, so every replica may run it; while the stream does not exist yet, it waits.
func (c *SentConsumer) Run(ctx context.Context) error {
	if c.JS == nil || c.Svc == nil {
		return errors.New("sent consumer: JS and Svc are required")
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.AckWait <= 0 {
		c.AckWait = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	log := c.Logger.With("stream", OutboxStreamName, "durable", SentDurable)
	tracer := c.TracerProvider.Tracer("github.com/postamt/postamt/services/tracker/internal/events")
	retry := time.Duration(0)
	for ctx.Err() == nil {
		err := c.run(ctx, log, tracer)
		if ctx.Err() != nil {
			break
		}
		retry = min(max(2*retry, 100*time.Millisecond), 30*time.Second)
		log.Warn("sent consumer: stopped; starting again", "error", err, "retry_in", retry)
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	return nil //nolint:nilerr // only ctx ends the loop: a run's error then is the shutdown, not a failure
}

// run creates the consumer and handles batches until ctx ends or the consumer must be created
// again (it was deleted, or its stream was).
func (c *SentConsumer) run(ctx context.Context, log *slog.Logger, tracer trace.Tracer) error {
	cons, err := c.JS.CreateOrUpdateConsumer(ctx, OutboxStreamName, jetstream.ConsumerConfig{
		Durable:        SentDurable,
		FilterSubjects: []string{EmailSentSubject},
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        c.AckWait,
		MaxDeliver:     -1,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		// Three batches are in the steps, one waits, one is being filled.
		MaxAckPending: 8 * c.MaxBatch,
	})
	if err != nil {
		return fmt.Errorf("create consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * c.MaxBatch))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()

	// The iterator blocks; a goroutine feeds a channel so that a batch is the first event
	// waited for plus whatever else is already there.
	msgs := make(chan jetstream.Msg, c.MaxBatch)
	done := make(chan error, 1)
	go func() {
		defer close(msgs)
		for {
			m, err := it.Next()
			switch {
			case err == nil:
				msgs <- m
				continue
			case ctx.Err() != nil, errors.Is(err, jetstream.ErrMsgIteratorClosed),
				errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound),
				errors.Is(err, jetstream.ErrStreamNotFound):
				done <- err
				return
			default:
				// Missed heartbeats while the server restarts and the like: the iterator recovers.
				log.Debug("sent consumer: transient error", "error", err)
			}
		}
	}()
	batches := make(chan []jetstream.Msg)
	go func() {
		defer close(batches)
		for {
			m, ok := <-msgs
			if !ok {
				return
			}
			batch := make([]jetstream.Msg, 1, c.MaxBatch)
			batch[0] = m
		fill:
			for len(batch) < c.MaxBatch {
				select {
				case m, ok := <-msgs:
					if !ok {
						break fill
					}
					batch = append(batch, m)
				default:
					break fill
				}
			}
			batches <- batch
		}
	}()
	c.pipeline(ctx, log, tracer, batches)
	return <-done
}

// The consumer overlaps three steps of consecutive batches, each step handling the batches one
// at a time in stream order: gathering (decode the events, read their evidence in one round
// trip), deciding (in order, carrying over what earlier batches track in a tracker.Pending) and
// writing (one round trip, then the acknowledgements). While batch n is written, batch n+1 is
// decided and batch n+2 gathered, so the Redis round trips of one batch overlap the CPU work of
// the others. Batch n+1's gather may not see batch n's writes; the Pending entries of batches
// whose writes were not complete before a gather are applied to its evidence, so the decisions
// are those of one-at-a-time ingestion in stream order. When a batch's writes fail, the batches
// decided after it are not written either (they were decided assuming those writes): they are
// delivered again, and deciding restarts with an empty Pending.

// batch is a batch of events on its way through the steps.
type batch struct {
	items []item
	sent  []tracker.Sent
	at    []int // items[at[j]] is sent[j]
	g     *tracker.Gathering
	d     *tracker.Decided
	seq   uint64
	epoch uint64
}

// fail fails every event of the batch that was ingested (not those that failed to decode).
func (b *batch) fail(err error) {
	for _, i := range b.at {
		if b.items[i].err == nil {
			b.items[i].err = err
		}
	}
}

// errRedecide fails the events of a batch decided after a batch whose writes failed.
var errRedecide = errs.Unavailable("an earlier batch could not be written; the event is evaluated again", time.Second, nil)

// recovered turns a panic of a step into a failure of the batch, so one bad event cannot stop
// the service.
func recovered(b *batch, onPanic func()) {
	if p := recover(); p != nil {
		b.fail(fmt.Errorf("ingest panic: %v", p))
		if onPanic != nil {
			onPanic()
		}
	}
}

func (c *SentConsumer) pipeline(ctx context.Context, log *slog.Logger, tracer trace.Tracer, msgBatches <-chan []jetstream.Msg) {
	var (
		written atomic.Uint64 // the last batch whose writes completed
		failed  atomic.Uint64 // the last epoch whose writes failed (epochs start at 1)
	)
	toDecide := make(chan *batch, 1)
	toWrite := make(chan *batch, 1)
	go func() {
		defer close(toDecide)
		for msgs := range msgBatches {
			b := c.decode(ctx, tracer, msgs)
			if len(b.sent) > 0 {
				func() {
					defer recovered(b, nil)
					b.g = c.Svc.GatherBatch(ctx, b.sent, written.Load())
				}()
			}
			toDecide <- b
		}
	}()
	go func() {
		defer close(toWrite)
		pending := tracker.NewPending()
		var seq uint64
		epoch := uint64(1)
		for b := range toDecide {
			if f := failed.Load(); f >= epoch {
				pending.Reset()
				epoch = f + 1
			}
			seq++
			b.seq, b.epoch = seq, epoch
			if b.g != nil {
				func() {
					defer recovered(b, func() { b.d = nil; failed.Store(b.epoch) })
					b.d = c.Svc.DecideBatch(ctx, b.g, pending, seq)
				}()
			}
			toWrite <- b
		}
	}()
	for b := range toWrite {
		switch {
		case b.d == nil:
		case failed.Load() >= b.epoch:
			b.fail(errRedecide)
		default:
			func() {
				defer recovered(b, func() { failed.Store(b.epoch) })
				errList, writeFailed := c.Svc.WriteBatch(ctx, b.d)
				for j, err := range errList {
					if err != nil {
						b.items[b.at[j]].err = fmt.Errorf("ingest EmailSent <%s>: %w", b.sent[j].Message.MessageID, err)
					}
				}
				if writeFailed {
					failed.Store(b.epoch)
				}
			}()
			written.Store(b.seq)
		}
		for i := range b.items {
			c.settle(ctx, log, &b.items[i])
		}
	}
}

// decode decodes a batch's events and starts their spans.
func (c *SentConsumer) decode(ctx context.Context, tracer trace.Tracer, msgs []jetstream.Msg) *batch {
	b := &batch{items: make([]item, len(msgs)), at: make([]int, 0, len(msgs)), sent: make([]tracker.Sent, 0, len(msgs))}
	for i, msg := range msgs {
		it := &b.items[i]
		it.msg, it.ctx = msg, ctx
		if hdr := msg.Headers(); hdr != nil {
			it.id = hdr.Get(jetstream.MsgIDHeader)
			it.ctx = propagation.TraceContext{}.Extract(ctx, eventbus.HeaderCarrier(hdr)) //nolint:fatcontext // each item's own context, derived from ctx, not from the last item's
		}
		it.ctx, it.span = tracer.Start(it.ctx, "process "+msg.Subject(),
			trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(
				attribute.String("messaging.system", "nats"),
				attribute.String("messaging.operation.type", "process"),
				attribute.String("messaging.destination.name", msg.Subject()),
				attribute.String("messaging.message.id", it.id),
				attribute.String("messaging.consumer.group.name", SentDurable),
				attribute.Int("messaging.batch.message_count", len(msgs)),
			))
		tenant, m, err := DecodeSent(msg.Data())
		if err != nil {
			it.err = err
			continue
		}
		b.sent = append(b.sent, tracker.Sent{Ctx: it.ctx, Tenant: tenant, Message: m})
		b.at = append(b.at, i)
	}
	return b
}

// item is one event of a batch.
type item struct {
	msg  jetstream.Msg
	ctx  context.Context
	span trace.Span
	id   string
	err  error
}

// settle acknowledges, terminates or redelivers one event and ends its span.
func (c *SentConsumer) settle(ctx context.Context, log *slog.Logger, it *item) {
	defer it.span.End()
	if it.err == nil {
		if err := it.msg.Ack(); err != nil {
			log.Warn("sent consumer: ack failed; the event will come again", "id", it.id, "error", err)
		}
		return
	}
	if ctx.Err() != nil {
		// Shutting down: let another replica have it at once.
		_ = it.msg.Nak()
		return
	}
	var delivered uint64
	if md, err := it.msg.Metadata(); err == nil {
		delivered = md.NumDelivered
	}
	log = log.With("id", it.id, "delivered", delivered)
	it.span.RecordError(it.err)
	it.span.SetStatus(codes.Error, it.err.Error())
	if errs.KindOf(it.err) == errs.KindInvalid {
		log.Error("sent consumer: terminating an event that can never be applied", "error", it.err)
		if err := it.msg.Term(); err != nil {
			log.Warn("sent consumer: term failed", "error", err)
		}
		return
	}
	delay := min(100*time.Millisecond<<min(max(delivered, 1)-1, 9), 30*time.Second)
	log.Warn("sent consumer: ingest failed; delivering again", "retry_in", delay, "error", it.err)
	if err := it.msg.NakWithDelay(delay); err != nil {
		log.Warn("sent consumer: nak failed; the event comes again after AckWait", "error", err)
	}
}

// DecodeSent reads an EmailSent event into its tenant and the message the rules evaluate; an
// undecodable or invalid event is errs.Invalid (terminated, never retried).
func DecodeSent(data []byte) (string, *tracker.Message, error) {
	var ev outboxv1.EmailSent
	if err := proto.Unmarshal(data, &ev); err != nil {
		return "", nil, errs.Invalid("data", "not an EmailSent message: "+err.Error())
	}
	if ev.GetTenantId() == "" {
		return "", nil, errs.Invalid("tenant_id", "is required")
	}
	m, err := SentMessage(&ev)
	if err != nil {
		return "", nil, fmt.Errorf("EmailSent %s: %w", ev.GetEmailId(), err)
	}
	return ev.GetTenantId(), m, nil
}
