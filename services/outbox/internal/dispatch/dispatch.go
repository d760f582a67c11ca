// Package dispatch moves due mail from the ledger to the connectors: it claims due emails of a
// partition under a lease, sends each through its connector, and records what happened. It sleeps
// until the earliest due time of its partition and is woken earlier when mail is submitted for
// sooner: there is no polling interval.
package dispatch

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

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
}

// Dispatcher sends due mail.
type Dispatcher struct {
	Ledger *redisstore.Ledger
	// Connector looks a connector up by id; false means unknown (the mail fails permanently).
	Connector func(id string) (Connector, bool)
	// Event builds the status-change event of a transition.
	Event  func(e *redisstore.Email, d outbox.Decision) redisstore.Event
	Clock  Clock
	Logger *slog.Logger
	// Batch is the number of emails claimed per round; 0 means 64.
	Batch int
	// Lease is how long a claim holds; mail of a crashed worker comes due again after it. 0 means
	// 2 minutes, above any SMTP submit timeout.
	Lease time.Duration
	// MaxIdle bounds a sleep even when nothing is due, as a safety net for a lost wake-up; 0 means
	// 5 seconds.
	MaxIdle time.Duration

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
	for p := range redisstore.Partitions {
		wg.Go(func() { d.runPartition(ctx, p) })
	}
	wg.Wait()
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
	var wg sync.WaitGroup
	errc := make(chan error, len(claimed))
	for i := range claimed {
		e := &claimed[i]
		wg.Go(func() {
			if err := d.deliver(ctx, e); err != nil {
				errc <- err
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		return len(claimed), err
	}
	return len(claimed), nil
}

func (d *Dispatcher) deliver(ctx context.Context, e *redisstore.Email) error {
	c, ok := d.Connector(e.Connector)
	var res smtp.Result
	switch {
	case !ok:
		res = smtp.Result{Outcome: outbox.OutcomePermanent, Message: fmt.Sprintf("connector %s does not exist", e.Connector)}
	case !c.Enabled:
		res = smtp.Result{Outcome: outbox.OutcomeConnectorDisabled, Message: fmt.Sprintf("connector %s is disabled; enable it and retry", e.Connector)}
	default:
		body, err := d.Ledger.Body(ctx, e.ID)
		if err != nil {
			return err
		}
		res = c.Sender.Send(ctx, e.From, e.Rcpts, body)
	}
	decision := c.Policy.Decide(res.Outcome, e.Attempts+1, e.Imported)
	lastErr := ""
	if res.Outcome != outbox.OutcomeSent {
		lastErr = res.Message
		if res.Code != 0 {
			lastErr = fmt.Sprintf("%d %s %s", res.Code, res.Enhanced, res.Message)
		}
	}
	_, err := d.Ledger.Complete(ctx, e, redisstore.Result{
		Decision: decision, At: d.Clock.Now(), LastError: lastErr,
		Entry: fmt.Sprintf("%d|%d|%s", res.Outcome, res.Code, lastErr),
	}, d.Event(e, decision))
	return err
}
