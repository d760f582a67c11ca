package redisstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
)

// grantBatcher coalesces concurrent send-grant reads into shared pipelines. Each read is three
// independent commands; under load, sending the reads of every waiting caller in one pipeline
// costs one write and one read syscall on each side instead of one pair per caller, which is
// most of what the send question costs. There is no timer and no background goroutine: a caller
// that finds fewer than maxFlushers flushes running becomes one and flushes whatever queued up,
// until the queue is empty; the others wait for their answer. An idle service therefore answers
// at once, and a busy one batches by itself.
type grantBatcher struct {
	rdb redis.UniversalClient
	// reqs recycles requests (and their done channels) between calls of the hot path.
	reqs sync.Pool

	mu       sync.Mutex
	queue    []*grantReq
	flushers int
}

// maxFlushers bounds concurrent pipelines: enough to keep Redis busy while one batch is on the
// wire, few enough that batches form.
const maxFlushers = 4

// maxBatch bounds one pipeline so a burst does not make one slow round trip.
const maxBatch = 256

// batchTimeout bounds a shared pipeline; it does not take any one caller's deadline, because a
// batch serves many callers.
const batchTimeout = 5 * time.Second

type grantReq struct {
	k          keys
	user, addr string
	g          mailbox.SendGrant
	err        error
	done       chan struct{}
}

func (b *grantBatcher) get(ctx context.Context, k keys, user, addr string) (mailbox.SendGrant, error) {
	r, _ := b.reqs.Get().(*grantReq)
	if r == nil {
		r = &grantReq{done: make(chan struct{}, 1)}
	}
	r.k, r.user, r.addr, r.g, r.err = k, user, addr, mailbox.SendGrant{}, nil

	b.mu.Lock()
	b.queue = append(b.queue, r)
	if b.flushers < maxFlushers {
		b.flushers++
		b.flushLocked()
	} else {
		b.mu.Unlock()
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		// The answer may still arrive; the request is not reused, the GC takes it.
		return mailbox.SendGrant{}, ctx.Err()
	}
	g, err := r.g, r.err
	b.reqs.Put(r)
	return g, err
}

// flushLocked runs pipelines until the queue is empty; called with mu held, returns without it.
func (b *grantBatcher) flushLocked() {
	for len(b.queue) > 0 {
		n := min(len(b.queue), maxBatch)
		batch := make([]*grantReq, n)
		copy(batch, b.queue)
		b.queue = b.queue[n:]
		b.mu.Unlock()
		b.exec(batch)
		b.mu.Lock()
	}
	b.queue = b.queue[:0]
	b.flushers--
	b.mu.Unlock()
}

func (b *grantBatcher) exec(batch []*grantReq) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	type cmds struct {
		user    *redis.SliceCmd
		summary *redis.StringCmd
		grant   *redis.StringCmd
	}
	cs := make([]cmds, len(batch))
	p := b.rdb.Pipeline()
	for i, r := range batch {
		cs[i] = cmds{
			user:    p.HMGet(ctx, r.k.user(r.user), "id", "display_name", "email"),
			summary: p.HGet(ctx, r.k.addrs(), r.addr),
			grant:   p.HGet(ctx, r.k.userGrants(r.user), r.addr),
		}
	}
	_, err := p.Exec(ctx)
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	for i, r := range batch {
		if err != nil {
			r.err = fmt.Errorf("read send grant: %w", err)
		} else {
			decodeGrant(cs[i].user.Val(), cs[i].summary.Val(), cs[i].grant.Val(), &r.g)
		}
		r.done <- struct{}{}
	}
}

func decodeGrant(user []any, summary, grant string, g *mailbox.SendGrant) {
	if len(user) == 3 && user[0] != nil {
		g.UserFound = true
		g.UserDisplayName, _ = user[1].(string)
		g.UserEmail, _ = user[2].(string)
	}
	if summary != "" {
		decodeAddrSummary(summary, g)
	}
	if grant != "" {
		g.Explicit = parseRights(grant)
	}
}
