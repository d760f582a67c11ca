// Package directory asks the mailbox service who a user is: whether the user exists in the
// tenant, and the practice and directory usernames that decide whether live sync applies. It
// calls mailbox over gRPC with the calendar's service credentials, acting within the request's
// tenant.
//
// Answers are cached, because every entry change and every agent connect asks. A tenant's
// answers are dropped as soon as mailbox publishes any event of that tenant (Follow reads
// mailbox's stream; UserChanged carries username changes), and in any case after the TTL, which
// bounds staleness while NATS is unreachable. The model is outbox's directory client.
package directory

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
)

// maxEntries bounds the cache; when full it starts again empty.
const maxEntries = 200_000

// retryAfter is what an Unavailable answer suggests when mailbox cannot be asked.
const retryAfter = time.Second

// Client implements calendar.Directory over mailbox's gRPC API.
type Client struct {
	mb  mailboxv1.MailboxServiceClient
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	tenants map[string]map[string]entry
	size    int
}

type entry struct {
	user    calendar.User
	found   bool
	expires time.Time
}

var _ calendar.Directory = (*Client)(nil)

// New returns a Client; ttl bounds how stale a cached user may be (0 disables the cache). now is
// the clock; nil means time.Now.
func New(mb mailboxv1.MailboxServiceClient, ttl time.Duration, now func() time.Time) *Client {
	if now == nil {
		now = time.Now
	}
	return &Client{mb: mb, ttl: ttl, now: now, tenants: make(map[string]map[string]entry)}
}

// User implements calendar.Directory.
func (c *Client) User(ctx context.Context, tenant, id string) (calendar.User, error) {
	now := c.now()
	c.mu.Lock()
	e, ok := c.tenants[tenant][id]
	c.mu.Unlock()
	if !ok || !now.Before(e.expires) {
		r, err := c.mb.GetUser(auth.WithTenant(ctx, tenant), &mailboxv1.GetUserRequest{UserId: id})
		switch status.Code(err) {
		case codes.OK:
			u := r.GetUser()
			e = entry{found: true, user: calendar.User{ID: u.GetUserId(), DirectoryUsername: u.GetDirectoryUsername(), PracticeUsername: u.GetPracticeUsername()}}
		case codes.NotFound:
			e = entry{}
		case codes.Canceled, codes.DeadlineExceeded:
			return calendar.User{}, fmt.Errorf("mailbox GetUser: %w", ctx.Err())
		default:
			return calendar.User{}, errs.Unavailable("the mailbox service cannot tell who the user is now", retryAfter, fmt.Errorf("mailbox GetUser %s: %w", id, err))
		}
		e.expires = now.Add(c.ttl)
		c.put(tenant, id, e)
	}
	if !e.found {
		return calendar.User{}, errs.NotFound("user", id)
	}
	return e.user, nil
}

func (c *Client) put(tenant, id string, e entry) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.size >= maxEntries {
		clear(c.tenants)
		c.size = 0
	}
	m := c.tenants[tenant]
	if m == nil {
		m = make(map[string]entry)
		c.tenants[tenant] = m
	}
	if _, ok := m[id]; !ok {
		c.size++
	}
	m[id] = e
}

// Invalidate drops every answer about a tenant.
func (c *Client) Invalidate(tenant string) {
	c.mu.Lock()
	c.size -= len(c.tenants[tenant])
	delete(c.tenants, tenant)
	c.mu.Unlock()
}

// Follow drops a tenant's answers whenever mailbox publishes an event of that tenant, until ctx
// ends. It reconnects after errors, dropping everything (events may have been missed).
func (c *Client) Follow(ctx context.Context, js jetstream.JetStream, stream string, logger *slog.Logger) error {
	for {
		err := c.follow(ctx, js, stream)
		if ctx.Err() != nil {
			return nil
		}
		logger.Warn("user cache: following mailbox events failed; answers expire by TTL meanwhile", "error", err)
		c.mu.Lock()
		clear(c.tenants)
		c.size = 0
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func (c *Client) follow(ctx context.Context, js jetstream.JetStream, stream string) error {
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
