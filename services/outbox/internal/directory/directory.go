// Package directory asks the mailbox service what the outbox needs to know about people: may a
// user send from an address, which mailboxes' mail they see, whether they lead a team. It calls
// mailbox over gRPC with the outbox's service credentials, acting within the request's tenant.
//
// Answers are cached: the send right is asked on every submit, a user's mailboxes and team
// leadership on every list and count, and all of them change rarely. A tenant's answers are
// dropped as soon as mailbox publishes any event of that tenant (Follow reads mailbox's stream),
// and in any case after the TTL, which bounds staleness while NATS is unreachable. A change of
// rights therefore reaches the outbox within the relay's latency (milliseconds), not at once: a
// submit racing the change may still pass, as it would have a moment earlier.
package directory

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/eventbus"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/service"
)

// Client implements service.Directory over mailbox's gRPC API.
type Client struct {
	mb  mailboxv1.MailboxServiceClient
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	tenants map[string]*tenantCache
	size    int
}

// tenantCache holds one tenant's answers, so an event of the tenant drops them in one step.
type tenantCache struct {
	users map[string]entry
	sends map[sendKey]sendEntry
}

type sendKey struct{ user, address string }

type sendEntry struct {
	right   service.SendRight
	expires time.Time
}

// maxEntries bounds the cache; when full it starts again empty (the next reads refill what is
// used).
const maxEntries = 200_000

type entry struct {
	mailboxes []string
	lead      bool
	expires   time.Time
}

// New returns a Client; ttl bounds how stale a user's mailboxes and team leadership may be (0
// disables the cache).
func New(mb mailboxv1.MailboxServiceClient, ttl time.Duration) *Client {
	return &Client{mb: mb, ttl: ttl, now: time.Now, tenants: make(map[string]*tenantCache)}
}

// tenant returns the tenant's cache, creating it; the caller holds mu.
func (c *Client) tenant(t string) *tenantCache {
	tc := c.tenants[t]
	if tc == nil {
		tc = &tenantCache{users: make(map[string]entry), sends: make(map[sendKey]sendEntry)}
		c.tenants[t] = tc
	}
	return tc
}

// put runs f with the tenant's cache under the lock, bounding the cache's size.
func (c *Client) put(t string, f func(tc *tenantCache)) {
	if c.ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.size >= maxEntries {
		clear(c.tenants)
		c.size = 0
	}
	c.size++
	f(c.tenant(t))
}

// Invalidate drops every answer about a tenant.
func (c *Client) Invalidate(tenant string) {
	c.mu.Lock()
	if tc := c.tenants[tenant]; tc != nil {
		c.size -= len(tc.users) + len(tc.sends)
		delete(c.tenants, tenant)
	}
	c.mu.Unlock()
}

// Follow drops a tenant's answers whenever mailbox publishes an event of that tenant (users,
// teams, mailboxes, members: everything the answers depend on), until ctx ends. It reconnects
// after errors, so a NATS outage only lets answers live until their TTL.
func (c *Client) Follow(ctx context.Context, js jetstream.JetStream, stream string, logger *slog.Logger) error {
	for {
		err := c.follow(ctx, js, stream)
		if ctx.Err() != nil {
			return nil
		}
		logger.Warn("directory cache: following mailbox events failed; answers expire by TTL meanwhile", "error", err)
		c.mu.Lock()
		clear(c.tenants) // events may have been missed
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

var _ service.Directory = (*Client)(nil)

// CheckSend implements service.Directory.
func (c *Client) CheckSend(ctx context.Context, tenant, user, address string) (service.SendRight, error) {
	k := sendKey{user, address}
	now := c.now()
	c.mu.Lock()
	if tc := c.tenants[tenant]; tc != nil {
		if e, ok := tc.sends[k]; ok && now.Before(e.expires) {
			c.mu.Unlock()
			return e.right, nil
		}
	}
	c.mu.Unlock()
	r, err := c.mb.CheckSend(auth.WithTenant(ctx, tenant), &mailboxv1.CheckSendRequest{UserId: user, FromAddress: address})
	if err != nil {
		return service.SendRight{}, fmt.Errorf("mailbox CheckSend: %w", err)
	}
	right := service.SendRight{
		Allowed: r.GetAllowed(), Mode: outboxv1.SendMode(r.GetMode()), MailboxID: r.GetMailboxId(),
		From: r.GetFrom(), Sender: r.GetSender(), Reason: r.GetDenyReason().String(),
	}
	c.put(tenant, func(tc *tenantCache) { tc.sends[k] = sendEntry{right: right, expires: now.Add(c.ttl)} })
	return right, nil
}

// Mailboxes implements service.Directory: the mailboxes the user sees (member, all-users or
// owner).
func (c *Client) Mailboxes(ctx context.Context, tenant, user string) ([]string, error) {
	e, err := c.lookup(ctx, tenant, user)
	return e.mailboxes, err
}

// LeadsTeam implements service.Directory.
func (c *Client) LeadsTeam(ctx context.Context, tenant, user string) (bool, error) {
	e, err := c.lookup(ctx, tenant, user)
	return e.lead, err
}

func (c *Client) lookup(ctx context.Context, tenant, user string) (entry, error) {
	if user == "" {
		return entry{}, nil
	}
	now := c.now()
	c.mu.Lock()
	var e entry
	ok := false
	if tc := c.tenants[tenant]; tc != nil {
		e, ok = tc.users[user]
	}
	c.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e, nil
	}
	ctx = auth.WithTenant(ctx, tenant)
	vis, err := c.mb.ListVisibleMailboxes(ctx, &mailboxv1.ListVisibleMailboxesRequest{UserId: user})
	if err != nil {
		return entry{}, fmt.Errorf("mailbox ListVisibleMailboxes: %w", err)
	}
	e = entry{expires: now.Add(c.ttl)}
	for _, m := range vis.GetMailboxes() {
		e.mailboxes = append(e.mailboxes, m.GetMailbox().GetMailboxId())
	}
	slices.Sort(e.mailboxes)
	tok := ""
	for {
		teams, err := c.mb.ListTeams(ctx, &mailboxv1.ListTeamsRequest{PageSize: 500, PageToken: tok})
		if err != nil {
			return entry{}, fmt.Errorf("mailbox ListTeams: %w", err)
		}
		for _, t := range teams.GetTeams() {
			if slices.Contains(t.GetLeadUserIds(), user) {
				e.lead = true
			}
		}
		tok = teams.GetNextPageToken()
		if tok == "" || e.lead {
			break
		}
	}
	c.put(tenant, func(tc *tenantCache) { tc.users[user] = e })
	return e, nil
}
