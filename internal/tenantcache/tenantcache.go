// Package tenantcache keeps other services' answers about a tenant's directory (who a user is,
// what they may send, a mailbox's sync kind: facts mailbox owns) close to the services that ask
// on every request. A tenant's answers are dropped as soon as mailbox publishes any event of that
// tenant (Follow reads mailbox's JetStream stream), and in any case after the TTL, which bounds
// staleness while NATS is unreachable. A change therefore reaches the asking service within the
// relay's latency, not at once.
package tenantcache

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postamt/postamt/internal/eventbus"
)

// DefaultMaxEntries bounds a cache when New is given 0: when full it starts again empty (the next
// reads refill what is used).
const DefaultMaxEntries = 200_000

// Cache holds values by tenant and key.
type Cache[V any] struct {
	ttl time.Duration
	max int
	now func() time.Time
	// followed: values are served only while Follow is subscribed (NewFollowed).
	followed bool
	live     atomic.Bool

	mu      sync.Mutex
	tenants map[string]map[string]item[V]
	size    int
	// epoch counts Clears; gens counts each tenant's invalidations since the last Clear. A value
	// fetched under an older generation is not kept (PutAt).
	epoch uint64
	gens  map[string]uint64
}

// Gen is a tenant's generation: what a caller saw before it fetched a value, so PutAt can tell
// whether an event of the tenant arrived while the fetch ran.
type Gen struct {
	epoch, n uint64
	ok       bool
}

type item[V any] struct {
	v       V
	expires time.Time
}

// New returns a cache whose values live at most ttl (0 disables it: every Get misses). maxEntries
// 0 means DefaultMaxEntries; now nil means time.Now.
func New[V any](ttl time.Duration, maxEntries int, now func() time.Time) *Cache[V] {
	if maxEntries <= 0 {
		maxEntries = DefaultMaxEntries
	}
	if now == nil {
		now = time.Now
	}
	return &Cache[V]{ttl: ttl, max: maxEntries, now: now, tenants: make(map[string]map[string]item[V]), gens: make(map[string]uint64)}
}

// NewFollowed returns a cache (as New) that serves values only while Follow is subscribed to the
// events: before the subscription is made and after it fails, Get misses and nothing is kept. An
// event published while nobody listened therefore never leaves a stale answer behind for the TTL
// (a right granted in mailbox a moment after the service started).
func NewFollowed[V any](ttl time.Duration, maxEntries int, now func() time.Time) *Cache[V] {
	c := New[V](ttl, maxEntries, now)
	c.followed = true
	return c
}

// serving reports whether the cache may answer and keep values now.
func (c *Cache[V]) serving() bool { return !c.followed || c.live.Load() }

// Get returns the value of a tenant's key unless it is missing or expired.
func (c *Cache[V]) Get(tenant, key string) (V, bool) {
	if !c.serving() {
		var zero V
		return zero, false
	}
	now := c.now()
	c.mu.Lock()
	it, ok := c.tenants[tenant][key]
	c.mu.Unlock()
	if !ok || !now.Before(it.expires) {
		var zero V
		return zero, false
	}
	return it.v, true
}

// Gen returns tenant's generation now; take it before fetching a value to keep with PutAt.
func (c *Cache[V]) Gen(tenant string) Gen {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Gen{epoch: c.epoch, n: c.gens[tenant], ok: c.serving()}
}

// PutAt keeps v for the TTL from now, unless the tenant's generation moved past g (an event of
// the tenant, or a Clear, came in while v was fetched: v may predate it) or the cache is not
// serving.
func (c *Cache[V]) PutAt(tenant, key string, v V, g Gen) {
	c.PutAtFrom(tenant, key, v, g, c.now())
}

// PutAtFrom is PutAt with the TTL counted from `from`, the moment the fetch of v began (on the
// cache's clock), instead of from now: a value read before a change then never outlives the
// TTL after that change, however long the fetch took. Caches that promise a staleness bound use
// it.
func (c *Cache[V]) PutAtFrom(tenant, key string, v V, g Gen, from time.Time) {
	if c.ttl <= 0 || !g.ok {
		return
	}
	expires := from.Add(c.ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	if g.epoch != c.epoch || g.n != c.gens[tenant] || !c.serving() {
		return
	}
	c.putLocked(tenant, key, v, expires)
}

// Put keeps v for the TTL from now. A value fetched before an event may outlive it: callers that
// fetch take a Gen first and use PutAt.
func (c *Cache[V]) Put(tenant, key string, v V) {
	if c.ttl <= 0 || !c.serving() {
		return
	}
	expires := c.now().Add(c.ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(tenant, key, v, expires)
}

func (c *Cache[V]) putLocked(tenant, key string, v V, expires time.Time) {
	if c.size >= c.max {
		clear(c.tenants)
		c.size = 0
	}
	m := c.tenants[tenant]
	if m == nil {
		m = make(map[string]item[V])
		c.tenants[tenant] = m
	}
	if _, ok := m[key]; !ok {
		c.size++
	}
	m[key] = item[V]{v: v, expires: expires}
}

// Invalidate drops every value of a tenant.
func (c *Cache[V]) Invalidate(tenant string) {
	c.mu.Lock()
	c.size -= len(c.tenants[tenant])
	delete(c.tenants, tenant)
	c.gens[tenant]++
	c.mu.Unlock()
}

// Clear drops everything.
func (c *Cache[V]) Clear() {
	c.mu.Lock()
	clear(c.tenants)
	clear(c.gens)
	c.size = 0
	c.epoch++
	c.mu.Unlock()
}

// Len is how many values the cache holds, expired ones included.
func (c *Cache[V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// Follow drops a tenant's values whenever stream carries an event of that tenant (the
// eventbus.HeaderTenant header), until ctx ends. It starts at new events; after an error it
// clears everything (events may have been missed) and follows again a second later. A cache of
// NewFollowed serves only while the subscription stands.
func (c *Cache[V]) Follow(ctx context.Context, js jetstream.JetStream, stream string, logger *slog.Logger) error {
	for {
		err := c.follow(ctx, js, stream)
		c.live.Store(false)
		if ctx.Err() != nil {
			return nil //nolint:nilerr // ctx ended the follow: its error is the shutdown, not a failure
		}
		if c.followed {
			logger.Warn("cache: following events failed; answers are fetched every time meanwhile", "stream", stream, "error", err)
		} else {
			logger.Warn("cache: following events failed; answers expire by TTL meanwhile", "stream", stream, "error", err)
		}
		c.Clear()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func (c *Cache[V]) follow(ctx context.Context, js jetstream.JetStream, stream string) error {
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return fmt.Errorf("consume %s: %w", stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consume %s: %w", stream, err)
	}
	// Subscribed from here on: a cache of NewFollowed kept nothing before, so nothing it serves
	// predates an event nobody received.
	c.live.Store(true)
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	for {
		m, err := it.Next()
		if err != nil {
			return fmt.Errorf("consume %s: %w", stream, err)
		}
		c.Invalidate(m.Headers().Get(eventbus.HeaderTenant))
	}
}
