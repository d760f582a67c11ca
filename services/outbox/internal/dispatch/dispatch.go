// Package dispatch moves due mail from the ledger to the connectors. Each connector of a tenant
// is a lane with the relay's concurrency (its pool size): a lane claims only what it can start
// soon (its free connections plus a small claim-ahead), under a lease it renews for as long as it
// holds the mail, and starts a conversation only while it can vouch for the claim. Results are
// recorded fenced, and kept and recorded later when Redis is away, never sent again. A lane whose
// relay is slow or hangs holds up nothing but itself. Loops per partition sleep until the
// earliest due time of their partition and are woken when an earlier one appears: there is no
// polling interval. docs/outbox-design.md, "Dispatch", has the reasons.
package dispatch

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/services/outbox/internal/connector"
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
	// Limits are the relay's rations for the connector as a whole and SenderLimits per sender
	// address (the envelope's From): a conversation starts only once the budgets shared by every
	// replica allow it (redisstore.Take); until then the mail waits QUEUED, no attempt used.
	Limits, SenderLimits connector.Limits
}

// budgets are the Redis budgets a send through c from from draws on; none without limits.
func (c Connector) budgets(tenant, id, from string) []redisstore.Budget {
	var out []redisstore.Budget
	if w := windows(c.Limits); len(w) > 0 {
		out = append(out, redisstore.Budget{Tenant: tenant, Key: "c:" + id, Windows: w})
	}
	if w := windows(c.SenderLimits); len(w) > 0 {
		// Per address, not per connector: providers count a mailbox's sends however they reach it.
		out = append(out, redisstore.Budget{Tenant: tenant, Key: "s:" + strings.ToLower(from), Windows: w})
	}
	return out
}

// windows turns a relay's published limits into the store's windows.
func windows(l connector.Limits) []redisstore.Window {
	if l.IsZero() {
		return nil
	}
	var out []redisstore.Window
	add := func(w redisstore.Window) {
		if w.Limit > 0 {
			out = append(out, w)
		}
	}
	add(redisstore.Window{Length: time.Second, Limit: l.MessagesPerSecond})
	add(redisstore.Window{Length: time.Minute, Limit: l.MessagesPerMinute})
	add(redisstore.Window{Length: time.Minute, Limit: l.RecipientsPerMinute, Recipients: true})
	if l.CalendarDay {
		add(redisstore.Window{Day: true, Zone: l.Location(), Limit: l.RecipientsPerDay, Recipients: true})
	} else {
		add(redisstore.Window{Length: 24 * time.Hour, Limit: l.RecipientsPerDay, Recipients: true})
	}
	return out
}

// pacedKey is one sender address and priority within one lane: mail of a higher priority
// refused later is not paced behind a lower priority's backlog, so the claim at the sender's
// next free moment still takes it first.
type pacedKey struct {
	lane redisstore.Lane
	from string
	prio int
}

// maxPaced bounds Dispatcher.paced: past it, entries whose time has passed are dropped, and if
// none has, the oldest pacing is forgotten (its sender's mail comes due at the refusal's time,
// as without pacing).
const maxPaced = 10_000

// senderPace returns when an email of from refused by its sender's limit comes due again: the
// refusal's time for the first, then one pace later for each further one refused meanwhile.
func (d *Dispatcher) senderPace(lane redisstore.Lane, from string, prio int, r redisstore.Refusal) time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.Clock.Now()
	if d.paced == nil {
		d.paced = make(map[pacedKey]time.Time)
	}
	if len(d.paced) >= maxPaced {
		for k, t := range d.paced {
			if t.Before(now) {
				delete(d.paced, k)
			}
		}
		if len(d.paced) >= maxPaced {
			clear(d.paced)
		}
	}
	k := pacedKey{lane, from, prio}
	at := r.RetryAt
	if next, ok := d.paced[k]; ok && next.After(at) {
		at = next
	}
	d.paced[k] = at.Add(max(r.Pace, time.Millisecond))
	return at
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
	// Metrics counts attempts by connector and outcome, among them the unknown ones (RFC 1047,
	// and mail taken over from a worker whose lease ran out), and times the SMTP conversations;
	// nil counts nothing.
	Metrics *Metrics
	// LogRecipients adds the envelope's recipient addresses to the line of each delivery
	// attempt (AttemptMessage); off, the line counts them and masks them in the relay's reply.
	LogRecipients bool
	// Events counts what the dispatcher did besides attempts, by event: "reclaimed" (mail taken
	// over after a lease ran out), "lease_lost" (a held claim found claimed again),
	// "handed_back" (claims given back without an attempt), "record_retried" (results kept while Redis
	// was away), "unrecorded" (results dropped because the claim was lost); nil counts nothing.
	Events *prometheus.CounterVec
	// Batch bounds the emails one lane claims in one round; 0 means 64.
	Batch int
	// Lease is how long a claim holds without renewal. Held mail is renewed every Lease/4, so a
	// crashed replica's mail is due again at most Lease after the crash. 0 means 10 seconds.
	Lease time.Duration
	// ClaimAhead is how much a lane claims beyond its free connections, as a multiple of its
	// pool size, so a connection that frees up finds its next email waiting; 0 claims only for
	// free connections.
	ClaimAhead float64
	// MaxIdle bounds a sleep even when nothing is due, as a safety net for a lost wake-up; 0 means
	// 5 seconds.
	MaxIdle time.Duration
	// StopTimeout bounds how long Run waits, once ctx ends, for conversations writing their
	// message or awaiting the relay's answer (the others are stopped at once); then they are
	// stopped (before their final "." they are handed back, after it they end as the relay's
	// answer or unknown). Their results then get 10 seconds more to be recorded. 0 means
	// 60 seconds.
	StopTimeout time.Duration
	// Claimed, when set, is told the ids of every batch a lane claims (now SENDING), for live
	// watchers; it must not block.
	Claimed func(tenant string, ids []string)
	// Redis, when set, carries wake-ups from every replica's submits (redisstore.WakeChannel);
	// without it only Wake calls in this process cut a sleep short.
	Redis redis.UniversalClient

	once  sync.Once
	wakes []chan struct{}
	// allPartitions lists every partition of the Ledger, for reading a lane's heads.
	allPartitions []int

	mu    sync.Mutex
	lanes map[redisstore.Lane]*lane
	held  map[*claim]struct{}
	// throttles counts each lane's throttling refusals in a row, for its back-off; a sent email
	// ends the row. Kept here rather than in the lane, which an idle connector's is dropped with.
	throttles map[redisstore.Lane]int
	// paced is, per sender over its limit in a lane, when the next of its refused emails comes
	// due: each one refused is handed back a pace later than the one before, so a backlog behind
	// a sender's limit is claimed about once, not once per window (senderPace).
	paced map[pacedKey]time.Time

	// redisDown is set while Redis cannot be reached (a claim, renewal or record failed) and
	// cleared by the next success: no conversation starts meanwhile.
	redisDown atomic.Bool
	rec       *recorder
	sends     sync.WaitGroup // conversations in progress
	stopping  atomic.Bool
}

func (d *Dispatcher) init() {
	d.once.Do(func() {
		if d.Batch == 0 {
			d.Batch = 64
		}
		if d.Lease == 0 {
			d.Lease = 10 * time.Second
		}
		if d.MaxIdle == 0 {
			d.MaxIdle = 5 * time.Second
		}
		if d.StopTimeout == 0 {
			d.StopTimeout = time.Minute
		}
		if d.Logger == nil {
			d.Logger = slog.New(slog.DiscardHandler)
		}
		n := d.Ledger.Partitions()
		d.allPartitions = make([]int, n)
		for p := range n {
			d.allPartitions[p] = p
		}
		d.wakes = make([]chan struct{}, n)
		for i := range d.wakes {
			d.wakes[i] = make(chan struct{}, 1)
		}
		d.lanes = make(map[redisstore.Lane]*lane)
		d.held = make(map[*claim]struct{})
		d.rec = newRecorder(d)
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

func (d *Dispatcher) count(event string, n int) {
	if d.Events != nil && n > 0 {
		d.Events.WithLabelValues(event).Add(float64(n))
	}
}

// Run dispatches every partition until ctx ends, then stops in order: no new claims; claims not
// started are handed back at once, and so are conversations that have not begun to write their
// message (they are stopped: the relay has nothing to deliver); conversations writing their
// message or awaiting the relay's answer get StopTimeout to end; their results are recorded;
// leases are renewed until then.
func (d *Dispatcher) Run(ctx context.Context) error {
	d.init()
	base := context.WithoutCancel(ctx)
	// The recorder and the lease keeper outlive ctx: they serve the conversations that finish
	// during the stop.
	keepCtx, stopKeep := context.WithCancel(base)
	defer stopKeep()
	var keep sync.WaitGroup
	keep.Go(func() { d.rec.run(keepCtx) })
	keep.Go(func() { d.renewLoop(keepCtx) })

	var wg sync.WaitGroup
	if d.Redis != nil {
		sub := d.Redis.Subscribe(ctx, redisstore.WakeChannel)
		if _, err := sub.Receive(ctx); err != nil {
			_ = sub.Close()
			stopKeep()
			keep.Wait()
			return fmt.Errorf("subscribe to wake-ups: %w", err)
		}
		wg.Go(func() {
			for m := range sub.Channel() {
				if p, ok := d.Ledger.WakePartition(m.Payload); ok {
					d.Wake(p)
				}
			}
		})
		defer wg.Wait()
		defer func() { _ = sub.Close() }()
	}
	var loops sync.WaitGroup
	for p := range d.Ledger.Partitions() {
		loops.Go(func() { d.runPartition(ctx, p) })
	}
	loops.Wait()
	d.stop(base)
	stopKeep()
	keep.Wait()
	return nil
}

// recordFlushTimeout bounds how long a stopping dispatcher waits for Redis to take the results
// of its last conversations.
const recordFlushTimeout = 10 * time.Second

// stop runs once the partition loops have ended: lanes stop claiming and hand back what they
// have not started, conversations in progress end, and the recorder writes what they produced.
func (d *Dispatcher) stop(ctx context.Context) {
	d.stopping.Store(true)
	d.mu.Lock()
	lanes := make([]*lane, 0, len(d.lanes))
	for _, l := range d.lanes {
		lanes = append(lanes, l)
	}
	d.mu.Unlock()
	handed, inProgress := 0, 0
	for _, l := range lanes {
		l.quit()
	}
	for _, l := range lanes {
		<-l.done
		h, n := l.drain()
		handed += h
		inProgress += n
	}
	// A conversation that has not begun its message is stopped rather than awaited: a relay that
	// hangs in the handshake would hold the stop for its command timeout, and the mail goes from
	// another replica at once (no attempt counted; the relay discards what it has).
	early := d.cancelSends(func(c *claim) bool { return !c.writing.Load() })
	d.Logger.Info("dispatcher stopping", "in_progress", inProgress, "stopped_before_message", early, "handed_back", handed)
	ended := make(chan struct{})
	go func() { d.sends.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-d.Clock.After(d.StopTimeout):
		d.Logger.Warn("stopping conversations still in progress", "after", d.StopTimeout)
		d.cancelSends(func(*claim) bool { return true })
		<-ended
	}
	// Whatever the conversations produced is recorded before the process goes; a record Redis
	// does not take within the bound is dropped, and the mail comes due again after its lease
	// (counted as unknown by whoever takes it over).
	if n := d.rec.flush(ctx, recordFlushTimeout); n > 0 {
		d.Logger.Error("results not recorded at stop; their mail comes due again after the lease", "count", n)
		d.count("unrecorded", n)
	}
}

// cancelSends stops the conversations in progress that which selects, and says how many.
func (d *Dispatcher) cancelSends(which func(*claim) bool) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for c := range d.held {
		if c.cancel != nil && which(c) {
			c.cancel()
			n++
		}
	}
	return n
}

func (d *Dispatcher) runPartition(ctx context.Context, p int) {
	for ctx.Err() == nil {
		now := d.Clock.Now()
		wait := d.MaxIdle
		due, next, ok, err := d.Ledger.Ready(ctx, p, now, 512)
		if err != nil {
			if ctx.Err() == nil {
				d.Logger.Warn("read ready connectors", "partition", p, "error", err)
			}
			wait = 200 * time.Millisecond
		} else {
			for _, ln := range due {
				d.lane(ln).markReady(p)
			}
			if ok {
				wait = min(max(next.Sub(d.Clock.Now()), 0), d.MaxIdle)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-d.wakes[p]:
		case <-d.Clock.After(wait):
		}
	}
}

// lane returns the running lane of ln, starting it on first use.
func (d *Dispatcher) lane(ln redisstore.Lane) *lane {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, ok := d.lanes[ln]
	if !ok {
		l = newLane(d, ln)
		d.lanes[ln] = l
		go l.run()
	}
	return l
}

// hold registers a claim with the lease keeper; release removes it once its outcome is recorded
// or its lease is gone.
func (d *Dispatcher) hold(c *claim) {
	d.mu.Lock()
	d.held[c] = struct{}{}
	d.mu.Unlock()
}

func (d *Dispatcher) release(c *claim) {
	d.mu.Lock()
	delete(d.held, c)
	d.mu.Unlock()
}

// margin is the lease a claim must have left for a conversation to start or to go on to the
// message: a renewal runs every Lease/4, so with Redis reachable a claim always has more.
func (d *Dispatcher) margin() time.Duration { return d.Lease / 4 }

// vouch reports why the claim cannot be vouched for now, or nil: the lease must hold for the
// margin, no renewal may have found it claimed again, and Redis must be reachable (a result
// that cannot be recorded is kept, but no new conversation starts).
func (d *Dispatcher) vouch(c *claim) error {
	switch {
	case c.lost.Load():
		return errLeaseLost
	case d.redisDown.Load():
		return errRedisDown
	case time.UnixMilli(c.leaseEnd.Load()).Sub(d.Clock.Now()) < d.margin():
		return errLeaseShort
	}
	return nil
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
	case outbox.OutcomeThrottled:
		return "throttled"
	case outbox.OutcomeQuotaExhausted:
		return "quota_exhausted"
	}
	return "other"
}

// Drain claims every email due at the clock's now, lane by lane, sends each and records the
// outcome before it returns the number claimed. It is Run's work done in the caller's goroutine,
// for tests that step an injected clock; it must not run beside Run.
func (d *Dispatcher) Drain(ctx context.Context) (int, error) {
	d.init()
	lanes := make(map[redisstore.Lane]*lane)
	for p := range d.Ledger.Partitions() {
		due, _, _, err := d.Ledger.Ready(ctx, p, d.Clock.Now(), 512)
		if err != nil {
			return 0, err
		}
		for _, ln := range due {
			l, ok := lanes[ln]
			if !ok {
				l = newLane(d, ln)
				lanes[ln] = l
			}
			l.ready.add(p)
		}
	}
	total := 0
	for _, l := range lanes {
		for {
			c, ok, err := l.lookup(ctx)
			if err != nil {
				return total, err
			}
			l.capacity = concurrency(c, ok)
			n, parts, gens := l.want()
			if len(parts) == 0 {
				break
			}
			got, _, err := l.claim(ctx, parts, gens, max(n, 1))
			if err != nil {
				return total, err
			}
			total += got
			for l.queue.Len() > 0 {
				c := heap.Pop(&l.queue).(*claim)
				c.queued = false
				l.deliver(ctx, c)
			}
			for d.rec.once(ctx) {
			}
			if n := len(d.rec.items); n > 0 {
				return total, fmt.Errorf("%d results not recorded", n)
			}
			if l.held() {
				break // the relay's limit: what is left waits for a later Drain
			}
		}
	}
	return total, nil
}
