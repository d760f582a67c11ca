package dispatch

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// renewLoop extends the leases of every claim this replica holds (queued, in conversation, or
// waiting for its record) every Lease/4, so a lease never lapses while its mail is being sent;
// a claim found taken over is marked lost, which stops its conversation before the message
// if it has not gone yet, and drops it from its lane's queue.
//
// While Redis is away it tries every 100 ms, and the first renewal that succeeds after an outage
// (or a ping, when nothing is held) ends the outage: the held claims' leases are fresh again
// before any lane claims, so a replica never takes over its own mail.
func (d *Dispatcher) renewLoop(ctx context.Context) {
	every := d.Lease / 4
	for {
		wait := every
		if d.redisDown.Load() {
			wait = min(every, 100*time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return
		case <-d.Clock.After(wait):
		}
		d.renew(ctx, every)
	}
}

// redisBack ends an outage: the recorder writes what it kept, and the lanes claim again.
func (d *Dispatcher) redisBack() {
	if !d.redisDown.Swap(false) {
		return
	}
	d.Logger.Info("Redis answers again")
	d.rec.poke()
	d.pokeLanes()
}

func (d *Dispatcher) pokeLanes() {
	d.mu.Lock()
	lanes := make([]*lane, 0, len(d.lanes))
	for _, l := range d.lanes {
		lanes = append(lanes, l)
	}
	d.mu.Unlock()
	for _, l := range lanes {
		l.poke()
	}
}

// renew extends the leases that were last set more than one renewal period ago.
func (d *Dispatcher) renew(ctx context.Context, every time.Duration) {
	now := d.Clock.Now()
	d.mu.Lock()
	var cs []*claim
	for c := range d.held {
		if !c.lost.Load() && time.UnixMilli(c.leaseEnd.Load()).Sub(now) < d.Lease-every/2 {
			cs = append(cs, c)
		}
	}
	d.mu.Unlock()
	if len(cs) == 0 {
		if d.redisDown.Load() {
			if err := d.Ledger.Ping(ctx); err == nil {
				d.redisBack()
			}
		}
		return
	}
	es := make([]*redisstore.Email, len(cs))
	for i, c := range cs {
		es[i] = &c.e
	}
	until := now.Add(d.Lease)
	ok, err := d.Ledger.Renew(ctx, es, until)
	if err != nil {
		if !d.redisDown.Swap(true) {
			d.Logger.Warn("renew leases: no new conversation starts until Redis answers", "held", len(cs), "error", err)
		}
		return
	}
	d.redisBack()
	for i, c := range cs {
		if ok[i] {
			c.leaseEnd.Store(until.UnixMilli())
			continue
		}
		d.mu.Lock()
		_, still := d.held[c]
		if still && c.cancel != nil {
			c.cancel()
		}
		d.mu.Unlock()
		if !still || c.unconfirmed.Load() {
			continue // recorded meanwhile, or its unconfirmed result stood: the recorder settles it
		}
		c.lost.Store(true)
		d.count("lease_lost", 1)
		d.Logger.Warn("a held email was claimed again; it is not sent from here", "email", c.e.ID)
		if c.lane.drop(c) {
			d.release(c)
		}
	}
}

// outage reports whether err says Redis cannot serve now (errs.Outage) rather than that the
// command was wrong.
func outage(err error) bool {
	_, ok := errs.Outage(err)
	return ok
}

// recorder writes results and hand-backs in order, in pipelined batches. What Redis does not
// take because it cannot be reached is kept and written when it answers again, under the same
// fence: a result is never lost to an outage and its mail never sent again because of one.
type recorder struct {
	d      *Dispatcher
	mu     sync.Mutex
	items  []recItem
	busy   bool // a batch is being written
	failed bool // the last batch found Redis away; cleared when one is written whole
	signal chan struct{}
	idle   chan struct{} // closed and replaced when the recorder has nothing left
}

type recItem struct {
	c *claim
	a redisstore.Applied
	// unconfirmed: a write of this item was made but no replica confirmed it, so a later
	// ErrFenced may mean it stood.
	unconfirmed bool
}

func newRecorder(d *Dispatcher) *recorder {
	return &recorder{d: d, signal: make(chan struct{}, 1), idle: make(chan struct{})}
}

func (r *recorder) add(c *claim, a redisstore.Applied) {
	r.mu.Lock()
	r.items = append(r.items, recItem{c: c, a: a})
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) poke() {
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// behind reports whether results wait for Redis: lanes claim nothing new until they are written,
// so what was sent is on record before anything is taken over.
func (r *recorder) behind() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

// maxRecordBatch bounds one pipelined write of results.
const maxRecordBatch = 256

func (r *recorder) run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for {
		if r.once(ctx) {
			backoff = 50 * time.Millisecond
			continue
		}
		r.mu.Lock()
		pending := len(r.items)
		r.mu.Unlock()
		var retry <-chan time.Time // nil: wait for new items
		if pending > 0 {
			retry = r.d.Clock.After(backoff)
			backoff = min(2*backoff, 2*time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-r.signal:
		case <-retry:
		}
	}
}

// once writes one batch; it reports whether all of it was written (false also when there was
// nothing to write).
func (r *recorder) once(ctx context.Context) bool {
	r.mu.Lock()
	n := min(len(r.items), maxRecordBatch)
	if n == 0 {
		if !r.busy {
			close(r.idle)
			r.idle = make(chan struct{})
		}
		r.mu.Unlock()
		return false
	}
	batch := make([]recItem, n)
	copy(batch, r.items)
	r.items = r.items[n:]
	r.busy = true
	r.mu.Unlock()

	as := make([]redisstore.Applied, n)
	for i, it := range batch {
		// Apply writes the email's new state into Applied.Email; the claim's own copy stays as
		// it was, since the renewal loop reads it until the claim is released (and a result kept
		// through an outage is written again from the state it was claimed in).
		e := *it.a.Email
		as[i] = it.a
		as[i].Email = &e
	}
	var kept []recItem
	for i, err := range r.d.Ledger.ApplyMany(ctx, as) {
		it := batch[i]
		var rerr redis.Error
		switch {
		case err == nil:
			r.d.release(it.c)
		case errors.Is(err, redisstore.ErrFenced) && it.unconfirmed:
			// An earlier write of this result was made but not confirmed by a replica
			// (redisx.ErrNotReplicated): it stood, or the email was taken over meanwhile.
			r.d.release(it.c)
			r.d.Logger.Info("result of an unconfirmed write already recorded, or the email taken over", "email", it.c.e.ID, "status", it.a.Status.String())
		case errors.Is(err, redisstore.ErrFenced):
			// Another worker took the email over after this claim's lease ran out; it has
			// recorded the attempt this one may have made as unknown.
			r.d.release(it.c)
			r.d.count("unrecorded", 1)
			r.d.Logger.Warn("result not recorded: the email was claimed again", "email", it.c.e.ID, "status", it.a.Status.String())
		case errors.As(err, &rerr) && !outage(err):
			// Redis answered, with an error no retry mends (a bug): the lease runs out and the
			// email is taken over, counted as unknown. Replies that say Redis cannot serve now
			// (TRYAGAIN while a Cluster slot migrates, LOADING, READONLY after a failover,
			// CLUSTERDOWN) are kept and written again, like a connection that failed.
			r.d.release(it.c)
			r.d.count("unrecorded", 1)
			r.d.Logger.Error("result not recorded", "email", it.c.e.ID, "error", err)
		default:
			// Not written, or written but not confirmed by a replica: written again, under the
			// same fence, once Redis takes it.
			if errors.Is(err, redisx.ErrNotReplicated) {
				it.unconfirmed = true
				it.c.unconfirmed.Store(true)
			}
			kept = append(kept, it)
		}
	}
	r.mu.Lock()
	r.busy = false
	wasFailing := r.failed
	r.failed = len(kept) > 0
	if len(kept) > 0 {
		r.items = append(kept, r.items...)
	}
	r.mu.Unlock()
	if len(kept) > 0 {
		if !r.d.redisDown.Swap(true) {
			r.d.Logger.Warn("results kept until Redis answers; no new conversation starts meanwhile", "kept", len(kept))
		}
		r.d.count("record_retried", len(kept))
		return false
	}
	if wasFailing {
		r.d.pokeLanes()
	}
	return true
}

// flush waits up to timeout for every pending item to be written and returns how many were not.
func (r *recorder) flush(ctx context.Context, timeout time.Duration) int {
	deadline := r.d.Clock.After(timeout)
	for {
		r.mu.Lock()
		n, idle := len(r.items), r.idle
		busy := r.busy
		r.mu.Unlock()
		if n == 0 && !busy {
			return 0
		}
		select {
		case r.signal <- struct{}{}:
		default:
		}
		select {
		case <-idle:
		case <-deadline:
			r.mu.Lock()
			defer r.mu.Unlock()
			return len(r.items)
		case <-ctx.Done():
			r.mu.Lock()
			defer r.mu.Unlock()
			return len(r.items)
		}
	}
}
