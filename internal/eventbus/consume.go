package eventbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/postamt/postamt/internal/errs"
)

// Message is an event as a consumer handler sees it.
type Message struct {
	// Subject is the event's protobuf full name, e.g. postamt.outbox.v1.EmailSent.
	Subject string
	// ID is the Nats-Msg-Id, <entity id>:<version>: the key to apply an event once.
	ID string
	// Tenant is the tenant the event belongs to.
	Tenant string
	// Data is the marshalled protobuf message.
	Data []byte
	// Delivered counts deliveries, 1 the first time.
	Delivered uint64
}

// ConsumerSpec describes a durable consumer. Zero values are the documented defaults.
type ConsumerSpec struct {
	// Stream is the JetStream stream consumed, e.g. POSTAMT_OUTBOX.
	Stream string
	// Durable names the consumer; every replica of a service uses the same name and shares the
	// work.
	Durable string
	// FilterSubjects selects the events; empty means all of the stream.
	FilterSubjects []string
	// AckWait is how long a handler may run before JetStream delivers the message again; 0
	// means 30s.
	AckWait time.Duration
	// MaxDeliver bounds the deliveries of one message; 0 means unlimited (a failing message is
	// retried until it succeeds or fails as invalid).
	MaxDeliver int
	// Backoff are the delays before redelivering a message whose handler failed, by delivery
	// count (the last one repeats); nil means 100ms doubling up to 30s.
	Backoff []time.Duration
	// Logger receives handler failures; nil discards them.
	Logger *slog.Logger
	// TracerProvider starts the consumer spans; nil means otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
}

// Handler applies one event. It must be idempotent: an event can arrive more than once (a
// redelivery after a timeout, a relay takeover after more than the duplicate window), so it
// checks the event's ID or version against what it applied before. A nil error acknowledges
// the message. An error of kind errs.KindInvalid terminates it (it can never succeed, and is
// logged); any other error has it delivered again after the Backoff delay.
type Handler func(ctx context.Context, m Message) error

// Consume runs a durable pull consumer with explicit acknowledgement until ctx ends, handling
// messages one at a time in stream order, and returns nil then. The consumer is created or
// updated idempotently, so every replica may call Consume; while the stream does not exist yet,
// Consume waits for it. The handler's ctx carries a consumer span whose parent is the trace
// context of the code that wrote the event.
func Consume(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, h Handler) error {
	if spec.Stream == "" || spec.Durable == "" || h == nil {
		return errors.New("consume: Stream, Durable and a handler are required")
	}
	if spec.AckWait == 0 {
		spec.AckWait = 30 * time.Second
	}
	if spec.MaxDeliver == 0 {
		spec.MaxDeliver = -1
	}
	if spec.Logger == nil {
		spec.Logger = slog.New(slog.DiscardHandler)
	}
	if spec.TracerProvider == nil {
		spec.TracerProvider = otel.GetTracerProvider()
	}
	c := &consumer{
		spec:   spec,
		log:    spec.Logger.With("stream", spec.Stream, "durable", spec.Durable),
		tracer: spec.TracerProvider.Tracer("github.com/postamt/postamt/internal/eventbus"),
		h:      h,
	}
	var b backoff
	for ctx.Err() == nil {
		err := c.run(ctx, js)
		if ctx.Err() != nil {
			break
		}
		d := b.next()
		c.log.Warn("consumer: stopped; starting again", "error", err, "retry_in", d)
		wait(ctx, d)
	}
	return nil //nolint:nilerr // only ctx ends the loop: a run's error then is the shutdown, not a failure
}

type consumer struct {
	spec   ConsumerSpec
	log    *slog.Logger
	tracer trace.Tracer
	h      Handler
}

// run creates the consumer and handles messages until ctx ends or the consumer must be created
// again (it was deleted, or its stream was).
func (c *consumer) run(ctx context.Context, js jetstream.JetStream) error {
	cons, err := js.CreateOrUpdateConsumer(ctx, c.spec.Stream, jetstream.ConsumerConfig{
		Durable:        c.spec.Durable,
		FilterSubjects: c.spec.FilterSubjects,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        c.spec.AckWait,
		MaxDeliver:     c.spec.MaxDeliver,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("create consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		switch {
		case err == nil:
			c.handle(ctx, msg)
		case ctx.Err() != nil, errors.Is(err, jetstream.ErrMsgIteratorClosed):
			return err
		case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound),
			errors.Is(err, jetstream.ErrStreamNotFound):
			return err
		default:
			// Missed heartbeats while the server restarts and the like: the iterator recovers.
			c.log.Debug("consumer: transient error", "error", err)
		}
	}
}

func (c *consumer) handle(ctx context.Context, msg jetstream.Msg) {
	m := Message{Subject: msg.Subject(), Data: msg.Data()}
	if hdr := msg.Headers(); hdr != nil {
		m.ID = hdr.Get(jetstream.MsgIDHeader)
		m.Tenant = hdr.Get(HeaderTenant)
		ctx = propagation.TraceContext{}.Extract(ctx, HeaderCarrier(hdr))
	}
	if md, err := msg.Metadata(); err == nil {
		m.Delivered = md.NumDelivered
	}
	ctx, span := c.tracer.Start(ctx, "process "+m.Subject,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", m.Subject),
			attribute.String("messaging.message.id", m.ID),
			attribute.String("messaging.consumer.group.name", c.spec.Durable),
			attribute.Int64("messaging.nats.delivered", int64(m.Delivered)),
		))
	defer span.End()

	err := c.call(ctx, m)
	log := c.log.With("id", m.ID, "subject", m.Subject, "delivered", m.Delivered)
	switch {
	case err == nil:
		if aerr := msg.Ack(); aerr != nil {
			log.Warn("consumer: ack failed; the message will come again", "error", aerr)
		}
		return
	case ctx.Err() != nil:
		// Shutting down: let another replica have it at once.
		_ = msg.Nak()
		return
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	if errs.KindOf(err) == errs.KindInvalid {
		log.Error("consumer: terminating a message that can never be applied", "error", err)
		if terr := msg.Term(); terr != nil {
			log.Warn("consumer: term failed", "error", terr)
		}
		return
	}
	delay := c.delay(m.Delivered)
	if c.spec.MaxDeliver > 0 && m.Delivered >= uint64(c.spec.MaxDeliver) {
		log.Error("consumer: handler failed on the last delivery; giving the message up", "error", err)
	} else {
		log.Warn("consumer: handler failed; delivering again", "retry_in", delay, "error", err)
	}
	if nerr := msg.NakWithDelay(delay); nerr != nil {
		log.Warn("consumer: nak failed; the message comes again after AckWait", "error", nerr)
	}
}

// call runs the handler, turning a panic into an error so one bad event cannot stop the service.
func (c *consumer) call(ctx context.Context, m Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler panic: %v", p)
		}
	}()
	return c.h(ctx, m)
}

// delay is the wait before delivery number delivered+1.
func (c *consumer) delay(delivered uint64) time.Duration {
	if n := len(c.spec.Backoff); n > 0 {
		i := int(min(max(delivered, 1)-1, uint64(n-1)))
		return c.spec.Backoff[i]
	}
	d := 100 * time.Millisecond << min(max(delivered, 1)-1, 9)
	return min(d, 30*time.Second)
}
