package redisx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNotReplicated is the error of a write that the master took but fewer replicas than asked
// (WithReplicaAcks) confirmed in time. The write may survive or not: a caller treats it like a
// reply lost on the network — the change may have happened — and retries what is safe to retry
// (a submit under its idempotency key; a result under its fence). errs maps it to UNAVAILABLE.
var ErrNotReplicated = errors.New("the write was not confirmed by Redis replicas in time")

// notReplicated is ErrNotReplicated with the numbers, and an outage for the edge (errs.Outage).
type notReplicated struct {
	got, want int
	within    time.Duration
	cause     error
}

// Error says how many replicas confirmed, of how many, within what, and why not.
func (e *notReplicated) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%v: %d of %d replicas confirmed within %s: %v", ErrNotReplicated, e.got, e.want, e.within, e.cause)
	}
	return fmt.Sprintf("%v: %d of %d replicas confirmed within %s", ErrNotReplicated, e.got, e.want, e.within)
}

// Is makes errors.Is(err, ErrNotReplicated) hold. The cause (the barrier's own error) is kept
// in the message only: a Redis reply unwrapped from here would read as a bug of the caller's
// command to code that sorts errors by their type.
func (e *notReplicated) Is(target error) bool { return target == ErrNotReplicated }

// Outage names the dependency that is not there: errs.Outage maps the error to UNAVAILABLE.
func (e *notReplicated) Outage() string { return "redis" }

// Acks makes "Redis took it" mean "a replica has it too". Redis replicates asynchronously: a
// write a master acknowledged and then lost in a crash is gone after its replica is promoted, and
// for the outbox that means an accepted email that vanishes, or a claim that rolls back so a
// second replica sends the same email. With Acks, every write command — a script, a pipeline, a
// transaction — returns only after n replicas of the master that ran it have confirmed the
// master's replication offset at that moment (WAIT), or returns ErrNotReplicated.
//
// How. WAIT counts the replicas that acknowledged the offset of the calling connection's last
// write, but a pooled client runs the next command on any connection. So the confirmation is a
// barrier: on the same master, one short write (SET of a key with the caller's hash tag, which
// puts it in a slot that master serves) and then WAIT on that connection. The barrier's offset is
// past every write that completed before it, so its confirmation covers them all. Concurrent
// callers share one barrier per master (group commit): a caller joins the next barrier, which
// starts as soon as the one on the wire returns. The cost is one round trip plus the replicas'
// acknowledgement per write, shared by every write of the same moment.
//
// The hook sits on each node client (every node of a Cluster, the current master's client under
// Sentinel), so it sees writes after the Cluster client has routed them, including MOVED and ASK
// retries and WATCH transactions. Reads (a fixed list of read-only commands, and EVAL_RO) wait
// for nothing.
type Acks struct {
	n      int
	within time.Duration
}

// MaxReplicaAckTimeout bounds WithReplicaAcks' timeout: the confirmation's WAIT is read within a
// pipeline, whose read timeout is go-redis's default of 3s.
const MaxReplicaAckTimeout = 2 * time.Second

// newAcks returns nil (no confirmation) unless n > 0.
func newAcks(n int, within time.Duration) *Acks {
	if n <= 0 {
		return nil
	}
	if within <= 0 {
		within = time.Second
	}
	within = min(within, MaxReplicaAckTimeout)
	return &Acks{n: n, within: within}
}

// attach installs the confirmation on a node client; a nil Acks installs nothing.
func (a *Acks) attach(c *redis.Client) {
	if a == nil {
		return
	}
	c.AddHook(&ackHook{acks: a, node: c})
}

// barrierKey marks commands the hook must not confirm: the barrier's own, and those of a caller
// that asked for none (WithoutReplicaAcks).
type barrierKey struct{}

// WithoutReplicaAcks returns a context whose writes do not wait for replicas, for bookkeeping a
// failover may roll back at no cost: the event relay's reads, leases and acknowledgements (an
// entry published again is dropped by JetStream's duplicate window). Everything else waits.
func WithoutReplicaAcks(ctx context.Context) context.Context {
	return context.WithValue(ctx, barrierKey{}, true)
}

// ackHook confirms the writes of one node client.
type ackHook struct {
	acks *Acks
	node *redis.Client

	mu      sync.Mutex
	next    *ackBatch // callers waiting for the barrier after the one on the wire
	running bool      // a barrier is on the wire
}

// ackBatch is the callers one barrier confirms.
type ackBatch struct {
	keys []string // a key of each caller, for the barrier's hash tag
	done chan struct{}
	err  error
}

// DialHook leaves dialling alone: only commands are confirmed.
func (h *ackHook) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook confirms a single write command after Redis answered it, and reports an
// unconfirmed one as ErrNotReplicated on the command itself.
func (h *ackHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err != nil || ctx.Value(barrierKey{}) != nil || !isWrite(cmd) {
			return err
		}
		if err := h.confirm(ctx, keyOf(cmd), false); err != nil {
			cmd.SetErr(err)
			return err
		}
		return nil
	}
}

// ProcessPipelineHook confirms a pipeline's or transaction's writes with one barrier after the
// node answered them, and sets ErrNotReplicated on each of them when it fails (their callers
// read their own commands' errors).
func (h *ackHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if ctx.Value(barrierKey{}) != nil {
			return err
		}
		var writes []redis.Cmder
		key, asking := "", false
		for _, c := range cmds {
			if c.Name() == "asking" {
				asking = true
				continue
			}
			if c.Err() == nil && isWrite(c) {
				writes = append(writes, c)
				if key == "" {
					key = keyOf(c)
				}
			}
		}
		if len(writes) == 0 {
			return err
		}
		if cerr := h.confirm(ctx, key, asking); cerr != nil {
			for _, c := range writes {
				c.SetErr(cerr)
			}
			if err == nil {
				err = cerr
			}
		}
		return err
	}
}

// confirm returns once a barrier that started after the caller's write has been confirmed. A
// write that reached a slot being imported (asking) gets a barrier of its own, sent with ASKING
// like the write.
func (h *ackHook) confirm(ctx context.Context, key string, asking bool) error {
	if asking {
		return h.barrier([]string{key}, true)
	}
	h.mu.Lock()
	b := h.next
	if b == nil {
		b = &ackBatch{done: make(chan struct{})}
		h.next = b
	}
	b.keys = append(b.keys, key)
	if !h.running {
		h.running = true
		go h.run()
	}
	h.mu.Unlock()
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return &notReplicated{want: h.acks.n, within: h.acks.within, cause: ctx.Err()}
	}
}

// run sends barriers while callers wait for one.
func (h *ackHook) run() {
	for {
		h.mu.Lock()
		b := h.next
		h.next = nil
		if b == nil {
			h.running = false
			h.mu.Unlock()
			return
		}
		h.mu.Unlock()
		b.err = h.barrier(b.keys, false)
		close(b.done)
	}
}

// barrier writes a marker in the slot of one of keys on this node and waits for the replicas. A
// slot that moved away meanwhile answers MOVED or ASK; the next key is tried, since a barrier in
// any slot of this master covers all its writes.
//
//nolint:contextcheck // a barrier serves every waiter of its batch, so no caller's context may end it; it has its own timeout
func (h *ackHook) barrier(keys []string, asking bool) error {
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), barrierKey{}, true), h.acks.within+2*time.Second)
	defer cancel()
	var err error
	tried := make(map[string]bool, 2)
	for _, k := range keys {
		tag := hashTag(k)
		if tried[tag] {
			continue
		}
		tried[tag] = true
		var wait *redis.IntCmd
		_, err = h.node.Pipelined(ctx, func(p redis.Pipeliner) error {
			if asking {
				_ = p.Process(ctx, redis.NewCmd(ctx, "asking"))
			}
			p.Set(ctx, "postamt:ack:"+tag, 1, time.Minute)
			// WAIT's reply comes within the pipeline's read timeout (go-redis's ReadTimeout, 3s by
			// default), which is why the wait is capped (MaxReplicaAckTimeout).
			wait = redis.NewIntCmd(ctx, "wait", h.acks.n, h.acks.within.Milliseconds())
			return p.Process(ctx, wait)
		})
		if err != nil && (redis.HasErrorPrefix(err, "MOVED") || redis.HasErrorPrefix(err, "ASK")) {
			continue
		}
		if err != nil {
			return &notReplicated{want: h.acks.n, within: h.acks.within, cause: err}
		}
		if got := int(wait.Val()); got < h.acks.n {
			return &notReplicated{got: got, want: h.acks.n, within: h.acks.within}
		}
		return nil
	}
	return &notReplicated{want: h.acks.n, within: h.acks.within, cause: err}
}

// hashTag is the part of key Redis Cluster hashes, braces included, so a key built from it lands
// in the same slot: "{ob3}" for "postamt:ob:{ob3}:e:x"; a key without a tag is wrapped whole.
func hashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i : i+j+2]
		}
	}
	return "{" + key + "}"
}

// keyOf is the first key a command names, for the barrier's slot; "" when it names none.
func keyOf(cmd redis.Cmder) string {
	args := cmd.Args()
	switch cmd.Name() {
	case "eval", "evalsha", "fcall":
		if len(args) > 3 {
			if n, err := strconv.Atoi(fmt.Sprint(args[2])); err == nil && n > 0 {
				return fmt.Sprint(args[3])
			}
		}
		return ""
	}
	if len(args) > 1 {
		return fmt.Sprint(args[1])
	}
	return ""
}

// isWrite reports whether cmd may change data. Unknown commands count as writes: confirming a
// read costs a round trip, missing a write costs an email.
func isWrite(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "get", "mget", "getrange", "strlen", "exists", "type", "ttl", "pttl", "expiretime", "pexpiretime",
		"hget", "hmget", "hgetall", "hkeys", "hvals", "hlen", "hexists", "hstrlen", "hscan", "hrandfield",
		"smembers", "sismember", "smismember", "scard", "sscan", "srandmember", "sinter", "sunion", "sdiff", "sintercard",
		"zrange", "zrangebyscore", "zrangebylex", "zrevrange", "zrevrangebyscore", "zrevrangebylex", "zscore",
		"zmscore", "zcard", "zcount", "zlexcount", "zrank", "zrevrank", "zscan", "zrandmember",
		"lrange", "llen", "lindex", "lpos",
		"xrange", "xrevrange", "xlen", "xinfo", "xpending", "xread", "xreadgroup",
		"scan", "keys", "dbsize", "randomkey", "object", "memory", "dump", "bitcount", "bitpos", "getbit",
		"eval_ro", "evalsha_ro", "fcall_ro",
		"ping", "echo", "info", "time", "hello", "auth", "select", "client", "cluster", "command", "config",
		"readonly", "readwrite", "asking", "wait", "script", "role", "lastsave", "slowlog", "latency",
		"multi", "discard", "watch", "unwatch", "subscribe", "psubscribe", "ssubscribe", "unsubscribe",
		"punsubscribe", "sunsubscribe", "publish", "spublish", "pubsub", "sentinel", "quit":
		return false
	}
	return true
}
