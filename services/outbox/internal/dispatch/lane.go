package dispatch

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/redisx"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/connector"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// Why a conversation does not start, or stops before the message.
var (
	errLeaseLost = errors.New("the claim was taken over by another worker")
	//lint:ignore ST1005 Redis is a name
	errRedisDown  = errors.New("Redis is unreachable, so the claim cannot be renewed or the result recorded")
	errLeaseShort = errors.New("the claim's lease is about to run out")
)

// partitionSet is a set of partitions, one bit each: a lane's marks, kept small and cheap to
// walk for any partition count.
type partitionSet []uint64

func newPartitionSet(n int) partitionSet { return make(partitionSet, (n+63)/64) }

func (s partitionSet) add(p int)      { s[p/64] |= 1 << (p % 64) }
func (s partitionSet) remove(p int)   { s[p/64] &^= 1 << (p % 64) }
func (s partitionSet) has(p int) bool { return s[p/64]&(1<<(p%64)) != 0 }

// list appends the partitions in the set to out, in ascending order.
func (s partitionSet) list(out []int) []int {
	for i, w := range s {
		for ; w != 0; w &= w - 1 {
			out = append(out, i*64+bits.TrailingZeros64(w))
		}
	}
	return out
}

// disabledConcurrency is how many emails a lane moves at once when its connector is disabled or
// unknown: no relay is involved, so its pool does not bound it.
const disabledConcurrency = 64

// claim is one email a lane holds: claimed, queued or in conversation, or waiting for its
// outcome to be recorded.
type claim struct {
	e    redisstore.Email
	lane *lane
	seq  uint64
	// leaseEnd is the lease's end in Unix milliseconds, as the last successful claim or renewal
	// set it in Redis.
	leaseEnd atomic.Int64
	// lost is set when a renewal found the email claimed again: nothing more may be sent.
	lost atomic.Bool
	// unconfirmed is set when the claim's result was written but no replica confirmed it
	// (redisx.ErrNotReplicated): a renewal that finds the email out of SENDING then means the
	// result stood, not that another worker took it.
	unconfirmed atomic.Bool
	// cancel stops the conversation in progress (nil before it starts); under Dispatcher.mu.
	cancel context.CancelFunc
	// writing is set once the conversation begins to write the message (smtp.Guard): a stopping
	// dispatcher lets it finish, and stops the others at once.
	writing atomic.Bool
	queued  bool // in the lane's queue; under lane.mu
}

// lane is one connector of one tenant in this replica: its due mail across all partitions, its
// concurrency, and the claims it holds. Partition loops mark the partitions where it has due
// mail; the lane claims from them, by priority across partitions, as much as its free
// connections and its claim-ahead allow.
type lane struct {
	d   *Dispatcher
	key redisstore.Lane
	// obs are the connector's metric observers, resolved once (Metrics.lane).
	obs *laneMetrics

	mu sync.Mutex
	// ready has bit p set while partition p may have due mail of the lane; gen[p] counts the
	// partition loop's marks, so a lane that found partition p drained clears the bit only if no
	// mark came in since it looked.
	ready    partitionSet
	gen      []uint64
	queue    claimQueue
	inflight int
	capacity int
	seq      uint64

	// heldUntil is when the relay's limits let the lane send again (zero: not held); waking is
	// set while a wake-up at heldUntil is scheduled. Under mu.
	heldUntil time.Time
	waking    bool

	kick  chan struct{}
	quitc chan struct{}
	quits sync.Once
	done  chan struct{}
}

// newLane starts with every partition marked: its first claim round looks at all of them, so
// the first emails it sends are the highest priority ones wherever they are, not those of the
// partition whose loop happened to see the lane first.
func newLane(d *Dispatcher, key redisstore.Lane) *lane {
	n := d.Ledger.Partitions()
	l := &lane{d: d, key: key, obs: d.Metrics.lane(key), capacity: 1, ready: newPartitionSet(n), gen: make([]uint64, n),
		kick: make(chan struct{}, 1), quitc: make(chan struct{}), done: make(chan struct{})}
	for p := range n {
		l.ready.add(p)
	}
	return l
}

// markReady notes that partition p has mail of the lane due now.
func (l *lane) markReady(p int) {
	l.mu.Lock()
	l.ready.add(p)
	l.gen[p]++
	l.mu.Unlock()
	l.poke()
}

func (l *lane) poke() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

func (l *lane) quit() { l.quits.Do(func() { close(l.quitc) }) }

func (l *lane) quitting() bool {
	select {
	case <-l.quitc:
		return true
	default:
		return false
	}
}

// run claims whenever the lane has ready partitions and room, until quit.
//
//nolint:contextcheck // a lane outlives Run's ctx (Run stops in order: no new claims, then quit)
func (l *lane) run() {
	defer close(l.done)
	for {
		select {
		case <-l.quitc:
			return
		case <-l.kick:
		}
		l.fill(context.Background())
	}
}

// sleep waits d or until quit; false means quit.
func (l *lane) sleep(d time.Duration) bool {
	select {
	case <-l.quitc:
		return false
	case <-l.d.Clock.After(d):
		return true
	}
}

// lookup returns the lane's connector, reloading the registry once on a miss.
func (l *lane) lookup(ctx context.Context) (Connector, bool, error) {
	c, ok := l.d.Connector(l.key.Tenant, l.key.Connector)
	if !ok && l.d.Reload != nil {
		if err := l.d.Reload(ctx); err != nil {
			return Connector{}, false, fmt.Errorf("reload connectors: %w", err)
		}
		c, ok = l.d.Connector(l.key.Tenant, l.key.Connector)
	}
	return c, ok, nil
}

func concurrency(c Connector, ok bool) int {
	if !ok || !c.Enabled || c.Sender == nil {
		return disabledConcurrency
	}
	return max(c.Sender.PoolSize(), 1)
}

// want is how many more emails the lane may claim now, and the partitions to claim from.
func (l *lane) want() (int, []int, []uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	limit := l.capacity + int(math.Ceil(l.d.ClaimAhead*float64(l.capacity)))
	room := limit - l.inflight - l.queue.Len()
	if l.queue.Len() > 0 && room < (limit+1)/2 {
		// Mail is still waiting for a connection: refill in batches of half the lane, not one
		// claim round per email sent.
		room = 0
	}
	n := min(room, l.d.Batch)
	return n, l.ready.list(nil), slices.Clone(l.gen)
}

// fill claims until the lane is full or has nothing due, and starts what it may.
func (l *lane) fill(ctx context.Context) {
	backoff := 20 * time.Millisecond
	for !l.quitting() && !l.d.stopping.Load() {
		c, ok, err := l.lookup(ctx)
		if err != nil {
			l.d.Logger.Warn("look up connector", "tenant", l.key.Tenant, "connector", l.key.Connector, "error", err)
			if !l.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		l.mu.Lock()
		l.capacity = concurrency(c, ok)
		l.mu.Unlock()
		if l.held() {
			return // the wake-up at the limit's end pokes the lane
		}
		l.start()
		if l.d.redisDown.Load() || l.d.rec.behind() {
			return // the renewal loop or the recorder pokes the lane when Redis is back
		}
		n, parts, gens := l.want()
		if n <= 0 || len(parts) == 0 {
			return
		}
		got, looked, err := l.claim(ctx, parts, gens, n)
		if err != nil {
			l.d.redisDown.Store(true)
			l.d.Logger.Warn("claim due mail", "tenant", l.key.Tenant, "connector", l.key.Connector, "error", err)
			if !l.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 20 * time.Millisecond
		l.start()
		if got == 0 && looked > 0 {
			// Another replica took what this one read: read again after a moment.
			if !l.sleep(time.Millisecond) {
				return
			}
		}
	}
}

// claim runs one claim round over parts for up to n emails. It returns how many were claimed
// and how many due emails were looked at.
func (l *lane) claim(ctx context.Context, parts []int, gens []uint64, n int) (int, int, error) {
	d := l.d
	now := d.Clock.Now()
	// The heads are read in every partition, not only the marked ones: partition loops wake on
	// their own timers, so when mail of several partitions comes due in the same millisecond
	// the first loop's mark would otherwise make the lane claim that partition's low priority
	// mail before another loop marks its high priority mail. Reading a partition's empty indexes
	// costs Redis next to nothing.
	cands, err := d.Ledger.Heads(ctx, l.key, d.allPartitions, now, n)
	if err != nil {
		return 0, 0, err
	}
	looked := len(cands)
	// The claim runs in the partitions it takes mail from, and in the marked ones where nothing
	// was due, whose ready score it corrects; a partition with due mail left untaken stays marked.
	np := d.Ledger.Partitions()
	seen, in := newPartitionSet(np), newPartitionSet(np)
	for _, c := range cands {
		seen.add(c.Partition)
	}
	cands = cands[:min(len(cands), n)]
	for _, c := range cands {
		in.add(c.Partition)
	}
	for _, p := range parts {
		if !seen.has(p) {
			in.add(p)
		}
	}
	claimIn := in.list(make([]int, 0, len(parts)))
	res, err := d.Ledger.ClaimLane(ctx, l.key, claimIn, cands, now, d.Lease)
	if errors.Is(err, redisx.ErrNotReplicated) {
		// The master took the claim but no replica confirmed it: a failover could roll it back
		// and another replica send the same mail. Nothing of it is sent from here; it goes back
		// as it was (fenced, through the recorder, once Redis confirms writes again).
		// Mail taken over from a lost holder stays leased: when its lease runs out it is taken
		// over again, with the note that its first holder may have sent it.
		for i := range res.Emails {
			if res.Emails[i].Before != outbox.StatusSending {
				d.handBack(&claim{e: res.Emails[i], lane: l}, "the claim was not confirmed by a Redis replica")
			}
		}
		return 0, looked, err
	}
	if err != nil {
		return 0, looked, err
	}
	// Partitions the claim found drained for this lane: their bit goes, unless a partition
	// loop marked them again meanwhile; their loops learn the lane's next due time.
	l.mu.Lock()
	for p, next := range res.Next {
		if (next.IsZero() || next.After(now)) && l.gen[p] == gens[p] {
			l.ready.remove(p)
			if !next.IsZero() {
				defer d.Wake(p)
			}
		}
	}
	l.mu.Unlock()
	end := now.Add(d.Lease).UnixMilli()
	maxAttempts := 0
	if conn, ok, err := l.lookup(ctx); err == nil && ok {
		maxAttempts = conn.Policy.MaxAttempts
		if !conn.Enabled && len(res.Emails) > 0 && d.Reload != nil {
			// Mail of a disabled connector is due: it may have been enabled a moment ago through
			// another replica, which queued this mail again after the change. The registry
			// refreshes every second on its own; reading now keeps this mail from going back to
			// CONNECTOR_DISABLED.
			if err := d.Reload(ctx); err != nil {
				d.Logger.Warn("reload connectors", "error", err)
			}
			// A connector enabled again has its pool's concurrency, not a disabled one's: more
			// conversations than connections would wait for the pool in no particular order.
			conn, ok := d.Connector(l.key.Tenant, l.key.Connector)
			l.mu.Lock()
			l.capacity = concurrency(conn, ok)
			l.mu.Unlock()
		}
	}
	if d.Claimed != nil && len(res.Emails) > 0 {
		ids := make([]string, len(res.Emails))
		for i := range res.Emails {
			ids[i] = res.Emails[i].ID
		}
		d.Claimed(l.key.Tenant, ids)
	}
	claims := make([]*claim, 0, len(res.Emails))
	var notes []redisstore.Applied
	var noted []*claim
	for i := range res.Emails {
		c := &claim{e: res.Emails[i], lane: l}
		c.leaseEnd.Store(end)
		if c.e.Before == outbox.StatusSending {
			// Held (renewed) only once its note is recorded: recording it writes c.e, which the
			// renewal loop reads. The note takes one round trip, well inside the fresh lease.
			a, err := d.reclaimNote(c, now, maxAttempts)
			if err != nil {
				d.Logger.Error("record a taken-over attempt", "email", c.e.ID, "error", err)
				continue
			}
			notes, noted = append(notes, a), append(noted, c)
			continue
		}
		d.hold(c)
		claims = append(claims, c)
	}
	if len(notes) > 0 {
		// The attempt the lost worker may have made is on record before this one starts, so every
		// copy that reaches the relay is counted.
		for i, err := range d.Ledger.ApplyMany(ctx, notes) {
			if err != nil {
				d.Logger.Warn("record a taken-over attempt; its lease runs out and it is taken over again", "email", noted[i].e.ID, "error", err)
				continue
			}
			d.hold(noted[i])
			d.count("reclaimed", 1)
			l.obs.attempt(outbox.OutcomeUnknown)
			claims = append(claims, noted[i])
		}
	}
	l.mu.Lock()
	for _, c := range claims {
		l.seq++
		c.seq = l.seq
		c.queued = true
		heap.Push(&l.queue, c)
	}
	l.mu.Unlock()
	return len(res.Emails), looked, nil
}

// reclaimNote is the attempt recorded when a claim takes over mail whose holder's lease ran out:
// that worker may have delivered it, so its attempt is on record as unknown before this worker
// sends it again.
func (d *Dispatcher) reclaimNote(c *claim, now time.Time, maxAttempts int) (redisstore.Applied, error) {
	msg := "the worker that held this email stopped before recording its attempt (its lease ran out); it may have been sent, and is sent again"
	attempt := &outboxv1.Attempt{
		Number: int32(c.e.Attempts + 1), EndTime: wire.Timestamp(now),
		ConnectorId: c.e.Connector, Outcome: outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_UNKNOWN, Message: msg,
		Manual: c.e.Trigger != "", TriggeredByUserId: c.e.Trigger,
	}
	b, err := proto.Marshal(attempt)
	if err != nil {
		return redisstore.Applied{}, fmt.Errorf("encode attempt: %w", err)
	}
	prev := c.e.Status
	return redisstore.Applied{Email: &c.e, Change: redisstore.Change{
		Status: outbox.StatusSending, Due: c.e.Due, At: now, Fenced: true, Attempt: b,
		CountAttempt: true, Attempted: true, MaxAttempts: maxAttempts, Error: msg,
	}, Event: func(next *redisstore.Email) redisstore.Event { return wire.Events{}.Changed(prev, next, attempt) }}, nil
}

// hold keeps the lane from claiming until t, when the relay's limits allow the next send, and
// schedules a poke for then. A longer wait is recorded in Redis with why, for GetConnector.
func (l *lane) hold(ctx context.Context, t time.Time, why string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.After(l.heldUntil) {
		l.heldUntil = t
		go func() {
			// Recorded even if the conversation's context ends now: the wait is the lane's.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			if err := l.d.Ledger.Hold(ctx, l.key.Tenant, l.key.Connector, t, why); err != nil {
				l.d.Logger.Warn("record a connector's wait", "tenant", l.key.Tenant, "connector", l.key.Connector, "error", err)
			}
		}()
	}
	if !l.waking {
		l.waking = true
		time.AfterFunc(l.heldUntil.Sub(l.d.Clock.Now()), l.wake)
	}
}

// wake pokes the lane once its hold has passed, or waits again when the hold was extended.
func (l *lane) wake() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d := l.heldUntil.Sub(l.d.Clock.Now()); d > 0 && !l.quitting() {
		time.AfterFunc(d, l.wake)
		return
	}
	l.heldUntil, l.waking = time.Time{}, false
	l.poke()
}

// held reports whether the relay's limits hold the lane now.
func (l *lane) held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.heldUntil.IsZero() && l.d.Clock.Now().Before(l.heldUntil)
}

// admit asks the relay's budgets for c's send. It returns a result that ends the email without
// a conversation (it can never fit), or handed true when c was handed back to wait for the
// limit (the lane holds until then) or for Redis; false, nil to send now.
func (l *lane) admit(ctx context.Context, conn Connector, c *claim) (res *smtp.Result, handed bool) {
	d := l.d
	e := &c.e
	budgets := conn.budgets(l.key.Tenant, l.key.Connector, e.From)
	if len(budgets) == 0 {
		return nil, false
	}
	granted, refused, err := d.Ledger.Take(ctx, budgets, []int{len(e.Rcpts)}, d.Clock.Now())
	switch {
	case errors.Is(err, redisstore.ErrNeverFits):
		return &smtp.Result{Outcome: outbox.OutcomePermanent, Message: fmt.Sprintf(
			"the email has %d recipients, more than connector %s's relay limits allow at once; split it or raise the limit", len(e.Rcpts), e.Connector)}, false
	case err != nil:
		d.keepOrHandBack(c, err)
		return nil, true
	case granted == 0:
		d.count("limited", 1)
		why := "waiting for the relay's limit until " + refused.RetryAt.Format(time.RFC3339)
		if strings.HasPrefix(budgets[refused.Budget].Key, "s:") {
			// One sender's limit: the rest of the connector's mail goes on; this one comes due
			// again when its sender may send (a little later in its priority than it was), the
			// sender's other refused mail a pace apart behind it.
			at := d.senderPace(l.key, e.From, prio(e.Priority), refused)
			d.handBackAt(c, at, "waiting for the sender's relay limit until "+at.Format(time.RFC3339))
			return nil, true
		}
		// The connector's own limit holds all of its mail: the lane claims nothing until then,
		// and the email keeps its place.
		l.hold(ctx, refused.RetryAt, "the relay's limits set on the connector")
		d.handBack(c, why)
		return nil, true
	}
	return nil, false
}

// start begins conversations for queued claims while connections are free, highest priority
// first.
func (l *lane) start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.inflight < l.capacity && l.queue.Len() > 0 && !l.d.stopping.Load() && !l.d.redisDown.Load() {
		c := heap.Pop(&l.queue).(*claim)
		c.queued = false
		l.inflight++
		l.d.sends.Add(1)
		go l.send(c)
	}
}

// send runs one claim's conversation and hands its outcome to the recorder.
//
//nolint:contextcheck // a conversation outlives Run's ctx: a stopping dispatcher gives it StopTimeout
func (l *lane) send(c *claim) {
	defer l.d.sends.Done()
	l.deliver(context.Background(), c)
	l.mu.Lock()
	l.inflight--
	l.mu.Unlock()
	l.start()
	l.poke()
}

// drop removes a claim from the queue whose lease was lost; false when it has started.
func (l *lane) drop(c *claim) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !c.queued {
		return false
	}
	for i, q := range l.queue {
		if q == c {
			heap.Remove(&l.queue, i)
			c.queued = false
			return true
		}
	}
	return false
}

// drain hands back every queued claim (the lane has quit) and reports how many, and how many
// conversations are still in progress.
func (l *lane) drain() (handed, inProgress int) {
	l.mu.Lock()
	queued := make([]*claim, 0, l.queue.Len())
	for l.queue.Len() > 0 {
		c := heap.Pop(&l.queue).(*claim)
		c.queued = false
		queued = append(queued, c)
	}
	inProgress = l.inflight
	l.mu.Unlock()
	for _, c := range queued {
		l.d.handBack(c, "the replica is stopping")
	}
	return len(queued), inProgress
}

// handBack gives an unstarted claim back as it was before the claim, with no attempt and no
// event, so any replica can send it at once.
func (d *Dispatcher) handBack(c *claim, why string) { d.handBackAt(c, c.e.BeforeDue, why) }

// handBackAt is handBack with the email due at due (zero: now) rather than as before.
func (d *Dispatcher) handBackAt(c *claim, due time.Time, why string) {
	status := c.e.Before
	if status == outbox.StatusSending || !(status == outbox.StatusQueued || status == outbox.StatusScheduled || status == outbox.StatusPendingRetry) {
		status = outbox.StatusQueued
	}
	if due.IsZero() {
		due = d.Clock.Now()
	}
	d.count("handed_back", 1)
	d.Logger.Debug("claim handed back", "email", c.e.ID, "reason", why)
	d.rec.add(c, redisstore.Applied{Email: &c.e, Change: redisstore.Change{Status: status, Due: due, At: d.Clock.Now(), Fenced: true}})
}

// deliver runs one conversation for c (or decides without one) and gives the result, or the
// claim handed back, to the recorder.
func (l *lane) deliver(ctx context.Context, c *claim) {
	d := l.d
	conn, ok, err := l.lookup(ctx)
	if err != nil {
		d.handBack(c, err.Error())
		return
	}
	if err := d.vouch(c); err != nil {
		d.keepOrHandBack(c, err)
		return
	}
	sendCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.mu.Lock()
	c.cancel = cancel
	d.mu.Unlock()
	e, body := &c.e, c.e.Body
	start := d.Clock.Now()
	var res smtp.Result
	switch {
	case !ok:
		res = smtp.Result{Outcome: outbox.OutcomePermanent, Message: fmt.Sprintf("connector %s does not exist", e.Connector)}
	case !conn.Enabled:
		res = smtp.Result{Outcome: outbox.OutcomeConnectorDisabled, Message: fmt.Sprintf("connector %s is disabled; enable it and retry", e.Connector)}
	case conn.MaxMessageBytes > 0 && int64(len(body)) > conn.MaxMessageBytes:
		res = smtp.Result{Outcome: outbox.OutcomePermanent, Code: 552, Enhanced: "5.3.4",
			Message: fmt.Sprintf("the message is %d bytes; connector %s takes at most %d", len(body), e.Connector, conn.MaxMessageBytes)}
	case body == nil:
		// The record is there without its body: nothing can be sent, ever. Fail it for a person
		// to see rather than retry forever.
		res = smtp.Result{Outcome: outbox.OutcomePermanent, Message: "the message body is missing from the store"}
	default:
		limited, handed := l.admit(ctx, conn, c)
		if handed {
			d.mu.Lock()
			c.cancel = nil
			d.mu.Unlock()
			return
		}
		if limited != nil {
			res = *limited
			break
		}
		res = conn.Sender.SendGuarded(sendCtx, e.From, e.Rcpts, body, func(message bool) error {
			if err := d.vouch(c); err != nil {
				return err
			}
			if message {
				c.writing.Store(true)
			}
			return nil
		})
		if res.Outcome != outbox.OutcomeNotSent {
			began := start
			if !res.Started.IsZero() {
				began = res.Started
			}
			l.obs.conversed(d.Clock.Now().Sub(began).Seconds())
		}
	}
	d.mu.Lock()
	c.cancel = nil
	d.mu.Unlock()
	if res.Outcome == outbox.OutcomeNotSent {
		d.keepOrHandBack(c, errors.New(res.Message))
		return
	}
	if !res.Started.IsZero() {
		start = res.Started
	}
	res.Outcome = throttled(res)
	end := d.Clock.Now()
	a, err := d.result(c, conn.Policy, res, start, end)
	switch {
	case err != nil:
	case res.Outcome == outbox.OutcomeThrottled || res.Outcome == outbox.OutcomeQuotaExhausted:
		// The email waits as long as the connector: until the back-off or the quota's reset.
		a.Change.Due = l.backOff(ctx, res, conn, end)
	case res.Outcome == outbox.OutcomeSent:
		d.mu.Lock()
		delete(d.throttles, l.key)
		d.mu.Unlock()
	}
	if err != nil {
		d.Logger.Error("encode a result", "email", e.ID, "error", err)
		d.release(c)
		return
	}
	d.rec.add(c, a)
}

// keepOrHandBack deals with a claim that was not sent: a lost one is dropped (its new holder
// sends it); any other is handed back, which the recorder writes once Redis takes it.
func (d *Dispatcher) keepOrHandBack(c *claim, why error) {
	if c.lost.Load() {
		d.release(c)
		return
	}
	d.handBack(c, why.Error())
}

// result is the transition that records an attempt that ended with res.
func (d *Dispatcher) result(c *claim, policy outbox.RetryPolicy, res smtp.Result, start, end time.Time) (redisstore.Applied, error) {
	e := &c.e
	c.lane.obs.attempt(res.Outcome)
	decision := policy.Decide(res.Outcome, e.Attempts-e.RetryBase+1, e.Imported)
	d.logAttempt(e, res, decision, start, end)
	change := redisstore.Change{
		Status: decision.Status, At: end, Fenced: true,
		CountAttempt: decision.ConsumesAttempt, Attempted: decision.ConsumesAttempt, MaxAttempts: policy.MaxAttempts,
		MayHaveBeenSent: decision.MayHaveBeenSent,
	}
	if res.Outcome != outbox.OutcomeSent {
		change.Error = res.Message
		switch {
		case res.Code != 0:
			change.Error = strings.TrimSpace(fmt.Sprintf("%d %s %s", res.Code, res.Enhanced, res.Message))
		case res.Enhanced != "":
			change.Error = res.Enhanced + " " + res.Message // our own refusal with its RFC 3463 code (5.6.7)
		}
		if decision.MayHaveBeenSent {
			change.Error = "the connection was lost after the message was handed over; it may have been sent: " + change.Error
		}
	}
	message := change.Error
	if res.Outcome == outbox.OutcomeSent {
		// The relay's answer stays with the attempt ("250 2.0.0 Ok: queued as 6159CC01B4"), so
		// support can find the mail in the relay's log; the email shows no last error any more.
		message = res.Message
		change.ClearError = true
	}
	var attempt *outboxv1.Attempt
	throttle := res.Outcome == outbox.OutcomeThrottled || res.Outcome == outbox.OutcomeQuotaExhausted
	if throttle {
		// In the history, named, but not counted: number is the attempt still to come.
		change.Attempted = true
	}
	if decision.ConsumesAttempt || throttle {
		attempt = &outboxv1.Attempt{
			Number: int32(e.Attempts + 1), StartTime: wire.Timestamp(start), EndTime: wire.Timestamp(end),
			ConnectorId: e.Connector, Outcome: attemptOutcome(res.Outcome), SmtpCode: int32(res.Code),
			EnhancedCode: res.Enhanced, Message: message, Manual: e.Trigger != "", TriggeredByUserId: e.Trigger,
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
	case outbox.OutcomeThrottled:
		return outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_THROTTLED
	case outbox.OutcomeQuotaExhausted:
		return outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_QUOTA_EXHAUSTED
	}
	return outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_UNSPECIFIED
}

// throttled turns a refusal that is about the pace of sending into OutcomeThrottled or
// OutcomeQuotaExhausted (smtp.ClassifyThrottle), any other result unchanged.
func throttled(res smtp.Result) outbox.Outcome {
	if res.Outcome != outbox.OutcomeTemporary && res.Outcome != outbox.OutcomePermanent || res.Code == 0 {
		return res.Outcome
	}
	switch smtp.ClassifyThrottle(res.Code, res.Enhanced, res.Message) {
	case smtp.RateLimited, smtp.ConcurrencyLimited:
		return outbox.OutcomeThrottled
	case smtp.QuotaExhausted:
		return outbox.OutcomeQuotaExhausted
	}
	return res.Outcome
}

// Back-off after throttling refusals: the first waits throttleFirst, each following one in a
// row twice as long, up to throttleMax; a sent email ends the row. A used-up quota waits for the
// next calendar midnight of the connector's limits' zone where one is set, else quotaRecheck,
// since a rolling quota comes back bit by bit.
const (
	throttleFirst = 30 * time.Second
	throttleMax   = 15 * time.Minute
	quotaRecheck  = time.Hour
)

// backOff holds the lane after a throttling refusal at now and returns when it may send again.
// Each replica backs off on its own first refusal: no Redis call on the hot path for
// connectors that are never throttled.
func (l *lane) backOff(ctx context.Context, res smtp.Result, conn Connector, now time.Time) time.Time {
	var until time.Time
	if res.Outcome == outbox.OutcomeQuotaExhausted {
		until = now.Add(quotaRecheck)
		for _, lim := range []connector.Limits{conn.SenderLimits, conn.Limits} {
			if lim.CalendarDay {
				local := now.In(lim.Location())
				y, m, d := local.Date()
				until = time.Date(y, m, d+1, 0, 0, 0, 0, lim.Location())
				break
			}
		}
	} else {
		d := l.d
		d.mu.Lock()
		if d.throttles == nil {
			d.throttles = make(map[redisstore.Lane]int)
		}
		d.throttles[l.key]++
		n := d.throttles[l.key]
		d.mu.Unlock()
		until = now.Add(min(throttleFirst<<min(n-1, 10), throttleMax))
	}
	reply := strings.TrimSpace(fmt.Sprintf("%d %s %s", res.Code, res.Enhanced, res.Message))
	if res.Outcome == outbox.OutcomeQuotaExhausted {
		l.hold(ctx, until, "the relay's daily quota is used up: "+reply)
	} else {
		l.hold(ctx, until, "the relay asked to slow down: "+reply)
	}
	l.d.count("throttled", 1)
	return until
}

// claimQueue orders a lane's queued claims: mail taken over from a lapsed lease first (it has
// waited longest), then high before normal before low priority, then by due time, then by claim
// order.
type claimQueue []*claim

func (q claimQueue) Len() int { return len(q) }
func (q claimQueue) Less(i, j int) bool {
	a, b := q[i], q[j]
	if ta, tb := a.e.Before == outbox.StatusSending, b.e.Before == outbox.StatusSending; ta != tb {
		return ta
	}
	if pa, pb := prio(a.e.Priority), prio(b.e.Priority); pa != pb {
		return pa < pb
	}
	if !a.e.BeforeDue.Equal(b.e.BeforeDue) {
		return a.e.BeforeDue.Before(b.e.BeforeDue)
	}
	return a.seq < b.seq
}
func (q claimQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *claimQueue) Push(x any)   { *q = append(*q, x.(*claim)) }
func (q *claimQueue) Pop() any {
	old := *q
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	return c
}

func prio(p int) int {
	if p == 0 {
		return 2
	}
	return p
}
