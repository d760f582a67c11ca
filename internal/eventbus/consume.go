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
	"go.opentelemetry.io/otel/trace"

	"github.com/postamt/postamt/internal/errs"
)

// Message is an event as a consumer handler sees it.
type Message struct {
	Subject string
	// ID is the Nats-Msg-Id, <entity id>:<version>.
	ID     string
	Tenant string
	Data   []byte
	// Delivered counts deliveries, 1 the first time.
	Delivered uint64
}

// ConsumerSpec describes a durable consumer.
type ConsumerSpec struct {
	Stream         string
	Durable        string
	FilterSubjects []string
	// AckWait is how long a delivery may take before JetStream redelivers; 0 means 30s.
	AckWait time.Duration
	// MaxDeliver bounds deliveries of one message; 0 means unlimited (a failing message is
	// retried with backoff until it succeeds or is terminated as invalid).
	MaxDeliver int
	Logger     *slog.Logger
}

// Handler applies one event. It must be idempotent: a message can arrive more than once. An
// errs.KindInvalid error terminates the message (it can never succeed); any other error has it
// redelivered after a backoff.
type Handler func(ctx context.Context, m Message) error

// Consume runs a durable pull consumer until ctx ends, handling messages one at a time in stream
// order. The consumer is created or updated idempotently, so every replica may call it.
func Consume(ctx context.Context, js jetstream.JetStream, spec ConsumerSpec, h Handler) error {
	if spec.AckWait == 0 {
		spec.AckWait = 30 * time.Second
	}
	log := spec.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxDeliver := spec.MaxDeliver
	if maxDeliver == 0 {
		maxDeliver = -1
	}
	var cons jetstream.Consumer
	for {
		var err error
		cons, err = js.CreateOrUpdateConsumer(ctx, spec.Stream, jetstream.ConsumerConfig{
			Durable: spec.Durable, FilterSubjects: spec.FilterSubjects, AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: spec.AckWait, MaxDeliver: maxDeliver, DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		if err == nil {
			break
		}
		log.Warn("consumer: create failed; retrying", "durable", spec.Durable, "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("consume %s: %w", spec.Durable, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	tracer := otel.Tracer("github.com/postamt/postamt/internal/eventbus")
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			log.Warn("consumer: next failed", "durable", spec.Durable, "error", err)
			continue
		}
		handle(ctx, tracer, log, spec, msg, h)
	}
}

func handle(ctx context.Context, tracer trace.Tracer, log *slog.Logger, spec ConsumerSpec, msg jetstream.Msg, h Handler) {
	hdr := msg.Headers()
	m := Message{Subject: msg.Subject(), Data: msg.Data()}
	if hdr != nil {
		m.ID = hdr.Get(jetstream.MsgIDHeader)
		m.Tenant = hdr.Get(HeaderTenant)
		ctx = propagator.Extract(ctx, HeaderCarrier(hdr))
	}
	if md, err := msg.Metadata(); err == nil {
		m.Delivered = md.NumDelivered
	}
	ctx, span := tracer.Start(ctx, "consume "+m.Subject, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.message.id", m.ID), attribute.String("messaging.consumer.group.name", spec.Durable)))
	defer span.End()
	err := h(ctx, m)
	switch {
	case err == nil:
		if aerr := msg.Ack(); aerr != nil {
			log.Warn("consumer: ack failed; the message will come again", "id", m.ID, "error", aerr)
		}
	case errs.KindOf(err) == errs.KindInvalid:
		span.SetStatus(codes.Error, err.Error())
		log.Error("consumer: terminating a message that can never be applied", "durable", spec.Durable, "id", m.ID, "error", err)
		_ = msg.Term()
	default:
		span.SetStatus(codes.Error, err.Error())
		delay := min(time.Duration(1<<min(m.Delivered, 10))*50*time.Millisecond, 30*time.Second)
		log.Warn("consumer: handler failed; redelivering", "durable", spec.Durable, "id", m.ID, "delivered", m.Delivered, "retry_in", delay, "error", err)
		_ = msg.NakWithDelay(delay)
	}
}
