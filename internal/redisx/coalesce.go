package redisx

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Coalescer runs the Redis commands of concurrent callers in shared pipelines. A short command
// costs little inside Redis; what it costs under load is a write and a read system call on each
// side, per caller. Sent together, the commands of every caller waiting at that moment share
// one pair. There is no timer and no background goroutine: a caller that finds fewer than
// maxFlushers pipelines on the wire becomes a flusher and sends whatever has queued, until the
// queue is empty; the others wait for their replies. An idle service therefore answers at once,
// and a busy one batches by itself.
//
// Each caller reads its own commands' results and errors when Do returns: one caller's error
// reply (a script refusing, a wrong type) is not another's. A pipeline that fails as a whole
// (the connection) fails every command in it.
type Coalescer struct {
	rdb redis.UniversalClient
	// calls recycles the per-call state (and its done channel) of the hot path.
	calls sync.Pool

	mu       sync.Mutex
	queue    []*coalesced
	flushers int
}

// NewCoalescer returns a Coalescer sending on rdb.
func NewCoalescer(rdb redis.UniversalClient) *Coalescer { return &Coalescer{rdb: rdb} }

// maxFlushers bounds concurrent pipelines: enough to keep Redis busy while one batch is on the
// wire, few enough that batches form.
const maxFlushers = 4

// maxBatch bounds the callers of one pipeline so a burst does not make one slow round trip.
const maxBatch = 256

// batchTimeout bounds a shared pipeline. It does not take any one caller's deadline, because a
// batch serves many callers; a caller whose context ends stops waiting (Do).
const batchTimeout = 5 * time.Second

type coalesced struct {
	fill func(redis.Pipeliner)
	done chan struct{}
}

// Do adds the commands fill queues to a shared pipeline and returns when their replies are in;
// fill runs on another goroutine and must only queue commands (keeping the returned *Cmd values
// for the caller to read after Do). When ctx ends first Do returns its error; the commands may
// still be sent.
func (c *Coalescer) Do(ctx context.Context, fill func(redis.Pipeliner)) error {
	r, _ := c.calls.Get().(*coalesced)
	if r == nil {
		r = &coalesced{done: make(chan struct{}, 1)}
	}
	r.fill = fill

	c.mu.Lock()
	c.queue = append(c.queue, r)
	if c.flushers < maxFlushers {
		c.flushers++
		c.flushLocked()
	} else {
		c.mu.Unlock()
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		// The pipeline still signals r.done, so r is not reused; the GC takes it.
		return ctx.Err()
	}
	r.fill = nil
	c.calls.Put(r)
	return nil
}

// flushLocked runs pipelines until the queue is empty; called with mu held, returns without it.
func (c *Coalescer) flushLocked() {
	for len(c.queue) > 0 {
		n := min(len(c.queue), maxBatch)
		batch := make([]*coalesced, n)
		copy(batch, c.queue)
		c.queue = c.queue[n:]
		c.mu.Unlock()
		c.exec(batch)
		c.mu.Lock()
	}
	c.queue = c.queue[:0]
	c.flushers--
	c.mu.Unlock()
}

//nolint:contextcheck // a pipeline carries many callers' commands, so none's context may end it; it has its own timeout
func (c *Coalescer) exec(batch []*coalesced) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	p := c.rdb.Pipeline()
	for _, r := range batch {
		r.fill(p)
	}
	// Exec's error is the first failed command's; every command carries its own, which is
	// what its caller reads.
	_, _ = p.Exec(ctx)
	for _, r := range batch {
		r.done <- struct{}{}
	}
}
