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

	mu      sync.Mutex
	tenants map[string]map[string]item[V]
	size    int
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
	return &Cache[V]{ttl: ttl, max: maxEntries, now: now, tenants: make(map[string]map[string]item[V])}
}

// Get returns the value of a tenant's key unless it is missing or expired.
func (c *Cache[V]) Get(tenant, key string) (V, bool) {
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

// Put keeps v for the TTL from now.
func (c *Cache[V]) Put(tenant, key string, v V) {
	if c.ttl <= 0 {
		return
	}
	expires := c.now().Add(c.ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
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
	c.mu.Unlock()
}

// Clear drops everything.
func (c *Cache[V]) Clear() {
	c.mu.Lock()
	clear(c.tenants)
	c.size = 0
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
// clears everything (events may have been missed) and follows again a second later.
func (c *Cache[V]) Follow(ctx context.Context, js jetstream.JetStream, stream string, logger *slog.Logger) error {
	for {
		err := c.follow(ctx, js, stream)
		if ctx.Err() != nil {
			return nil
		}
		logger.Warn("cache: following events failed; answers expire by TTL meanwhile", "stream", stream, "error", err)
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
