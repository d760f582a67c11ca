// Package dispatch moves due mail from the ledger to the connectors: it claims due emails of a
// partition under a lease, sends each through its connector, and records what happened. It sleeps
// until the earliest due time of its partition and is woken earlier when mail is submitted for
// sooner: there is no polling interval.
package dispatch

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/wire"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// Clock is the dispatcher's time, injected so tests drive retries without sleeping.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// Connector is what the dispatcher needs of a connector.
type Connector struct {
	Sender  *smtp.Sender
	Policy  outbox.RetryPolicy
	Enabled bool
	// MaxMessageBytes is the relay's size limit; larger mail fails without being offered.
	MaxMessageBytes int64
}

// Dispatcher sends due mail.
type Dispatcher struct {
	Ledger *redisstore.Ledger
	// Connector looks a tenant's connector up by id; false means unknown (the mail fails
	// permanently: a connector deleted under queued mail is an admin's error to see).
	Connector func(tenant, id string) (Connector, bool)
	// Reload, when set, refreshes what Connector knows; it is called once before a lookup miss
	// counts, so a connector created a moment ago through another replica is found.
	Reload func(ctx context.Context) error
	Clock  Clock
	Logger *slog.Logger
	// Outcomes counts attempts by outcome, among them the RFC 1047 unknown ones; nil counts
	// nothing.
	Outcomes *prometheus.CounterVec
	// Batch is the number of emails claimed per round; 0 means 64.
	Batch int
	// Lease is how long a claim holds; mail of a crashed worker comes due again after it. 0 means
	// 2 minutes, above any SMTP submit timeout.
	Lease time.Duration
	// MaxIdle bounds a sleep even when nothing is due, as a safety net for a lost wake-up; 0 means
	// 5 seconds.
	MaxIdle time.Duration
	// Redis, when set, carries wake-ups from every replica's submits (redisstore.WakeChannel);
	// without it only Wake calls in this process cut a sleep short.
	Redis redis.UniversalClient

	once  sync.Once
	wakes []chan struct{}
}

func (d *Dispatcher) init() {
	d.once.Do(func() {
		if d.Batch == 0 {
			d.Batch = 64
		}
		if d.Lease == 0 {
			d.Lease = 2 * time.Minute
		}
		if d.MaxIdle == 0 {
			d.MaxIdle = 5 * time.Second
		}
		if d.Logger == nil {
			d.Logger = slog.New(slog.DiscardHandler)
		}
		d.wakes = make([]chan struct{}, redisstore.Partitions)
		for i := range d.wakes {
			d.wakes[i] = make(chan struct{}, 1)
		}
	})
}

// Wake tells the partition's loop that mail may be due sooner than it sleeps for.
func (d *Dispatcher) Wake(partition int) {
	d.init()
	select {
	case d.wakes[partition] <- struct{}{}:
	default:
	}
}

// Run dispatches every partition until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) error {
	d.init()
	var wg sync.WaitGroup
	if d.Redis != nil {
		sub := d.Redis.Subscribe(ctx, redisstore.WakeChannel)
		if _, err := sub.Receive(ctx); err != nil {
			_ = sub.Close()
			return fmt.Errorf("subscribe to wake-ups: %w", err)
		}
		wg.Go(func() {
			for m := range sub.Channel() {
				if p, ok := redisstore.WakePartition(m.Payload); ok {
					d.Wake(p)
				}
			}
		})
		// Closing the subscription ends the forwarding loop; wait for it after the partitions.
		defer wg.Wait()
		defer func() { _ = sub.Close() }()
	}
	var loops sync.WaitGroup
	for p := range redisstore.Partitions {
		loops.Go(func() { d.runPartition(ctx, p) })
	}
	loops.Wait()
	return nil
}

func (d *Dispatcher) runPartition(ctx context.Context, p int) {
	for ctx.Err() == nil {
		n, err := d.Step(ctx, p)
		if err != nil {
			d.Logger.Warn("dispatch round failed", "partition", p, "error", err)
		}
		if n == d.Batch && err == nil {
			continue // more may be due right now
		}
		wait := d.MaxIdle
		if next, ok, err := d.Ledger.Earliest(ctx, p); err == nil && ok {
			wait = min(max(next.Sub(d.Clock.Now()), 0), d.MaxIdle)
		}
		if wait == 0 && n == 0 {
			// Due but not claimable (held under another worker's lease): its score is the lease
			// end, so this only happens for a moment; yield briefly.
			wait = time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-d.wakes[p]:
		case <-d.Clock.After(wait):
		}
	}
}

// Step claims and sends one batch of partition p's due mail, returning how many were claimed.
func (d *Dispatcher) Step(ctx context.Context, p int) (int, error) {
	d.init()
	now := d.Clock.Now()
	claimed, err := d.Ledger.Claim(ctx, p, now, d.Batch, d.Lease)
	if err != nil {
		return 0, err
	}
	// What was claimed is finished even when ctx ends (shutdown): a send cut off halfway would
	// leave the mail waiting for its lease to run out.
	work := context.WithoutCancel(ctx)
	ids := make([]string, len(claimed))
	for i := range claimed {
		ids[i] = claimed[i].ID
	}
	bodies, err := d.Ledger.Bodies(work, ids)
	if err != nil {
		return len(claimed), err // the claims run out and the mail comes due again
	}
	// Every send runs at once (the connector's pool bounds the connections). Results are
	// recorded as they come, whatever is ready in one pipelined round trip: under load they
	// batch by themselves, and a slow send never holds back the record of a finished one (an
	// unrecorded send is one a crash would repeat).
	type result struct {
		a   redisstore.Applied
		err error
	}
	resc := make(chan result, len(claimed))
	var wg sync.WaitGroup
	for i := range claimed {
		wg.Go(func() {
			a, err := d.deliver(work, &claimed[i], bodies[i])
			resc <- result{a, err}
		})
	}
	go func() { wg.Wait(); close(resc) }()
	var first error
	pending := make([]redisstore.Applied, 0, len(claimed))
	add := func(r result) {
		if r.err != nil {
			first = cmp.Or(first, r.err)
			return
		}
		pending = append(pending, r.a)
	}
	for r := range resc {
		add(r)
	ready:
		for {
			select {
			case r, ok := <-resc:
				if !ok {
					break ready
				}
				add(r)
			default:
				break ready
			}
		}
		for _, err := range d.Ledger.ApplyMany(work, pending) {
			first = cmp.Or(first, err)
		}
		pending = pending[:0]
	}
	return len(claimed), first
}

// deliver sends one claimed email and returns the transition that records the attempt.
func (d *Dispatcher) deliver(ctx context.Context, e *redisstore.Email, body []byte) (redisstore.Applied, error) {
	c, ok := d.Connector(e.Tenant, e.Connector)
	if !ok && d.Reload != nil {
		if err := d.Reload(ctx); err != nil {
			return redisstore.Applied{}, fmt.Errorf("reload connectors: %w", err) // the claim runs out; the mail comes due again
		}
		c, ok = d.Connector(e.Tenant, e.Connector)
	}
	start := d.Clock.Now()
	var res smtp.Result
	switch {
	case !ok:
		res = smtp.Result{Outcome: outbox.OutcomePermanent, Message: fmt.Sprintf("connector %s does not exist", e.Connector)}
	case !c.Enabled:
		res = smtp.Result{Outcome: outbox.OutcomeConnectorDisabled, Message: fmt.Sprintf("connector %s is disabled; enable it and retry", e.Connector)}
	case c.MaxMessageBytes > 0 && int64(len(body)) > c.MaxMessageBytes:
		res = smtp.Result{Outcome: outbox.OutcomePermanent, Code: 552, Enhanced: "5.3.4",
			Message: fmt.Sprintf("the message is %d bytes; connector %s takes at most %d", len(body), e.Connector, c.MaxMessageBytes)}
	case body == nil:
		// The record is there without its body: nothing can be sent, ever. Fail it for a person
		// to see rather than retry forever.
		res = smtp.Result{Outcome: outbox.OutcomePermanent, Message: "the message body is missing from the store"}
	default:
		res = c.Sender.Send(ctx, e.From, e.Rcpts, body)
	}
	end := d.Clock.Now()
	if d.Outcomes != nil {
		d.Outcomes.WithLabelValues(outcomeLabel(res.Outcome)).Inc()
	}
	decision := c.Policy.Decide(res.Outcome, e.Attempts-e.RetryBase+1, e.Imported)
	change := redisstore.Change{
		Status: decision.Status, At: end, Fenced: true,
		CountAttempt: decision.ConsumesAttempt, Attempted: decision.ConsumesAttempt, MaxAttempts: c.Policy.MaxAttempts,
	}
	if res.Outcome != outbox.OutcomeSent {
		change.Error = res.Message
		if res.Code != 0 {
			change.Error = strings.TrimSpace(fmt.Sprintf("%d %s %s", res.Code, res.Enhanced, res.Message))
		}
		if decision.MayHaveBeenSent {
			change.Error = "the connection was lost after the message was handed over; it may have been sent: " + change.Error
		}
	}
	var attempt *outboxv1.Attempt
	if decision.ConsumesAttempt {
		attempt = &outboxv1.Attempt{
			Number: int32(e.Attempts + 1), StartTime: wire.Timestamp(start), EndTime: wire.Timestamp(end),
			ConnectorId: e.Connector, Outcome: attemptOutcome(res.Outcome), SmtpCode: int32(res.Code),
			EnhancedCode: res.Enhanced, Message: change.Error,
		}
		b, err := proto.Marshal(attempt)
		if err != nil {
			return redisstore.Applied{}, fmt.Errorf("encode attempt: %w", err)
		}
		change.Attempt = b
	}
	if decision.Status == outbox.StatusPendingRetry {
		change.Due = end.Add(decision.Delay)
	}
	prev := e.Status
	return redisstore.Applied{Email: e, Change: change, Event: func(next *redisstore.Email) redisstore.Event {
		return wire.Events{}.Changed(prev, next, attempt)
	}}, nil
}

func outcomeLabel(o outbox.Outcome) string {
	switch o {
	case outbox.OutcomeSent:
		return "sent"
	case outbox.OutcomeTemporary:
		return "temporary"
	case outbox.OutcomePermanent:
		return "permanent"
	case outbox.OutcomeUnknown:
		return "unknown"
	case outbox.OutcomeConnectorDisabled:
		return "connector_disabled"
	}
	return "other"
}

func attemptOutcome(o outbox.Outcome) outboxv1.AttemptOutcome {
	switch o {
	case outbox.OutcomeSent:
		return outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_SENT
	case outbox.OutcomeTemporary:
		return outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_TEMPORARY_FAILURE
	case outbox.OutcomePermanent:
		return outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_PERMANENT_FAILURE
	case outbox.OutcomeUnknown:
		return outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_UNKNOWN
	}
	return outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_UNSPECIFIED
}
