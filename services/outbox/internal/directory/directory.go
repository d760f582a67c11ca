// Package directory asks the mailbox service what the outbox needs to know about people: may a
// user send from an address, which mailboxes' mail they see, whether they lead a team. It calls
// mailbox over gRPC with the outbox's service credentials, acting within the request's tenant.
//
// Answers about mailboxes and teams are cached for a short time (CacheTTL): they are read on
// every list and count, and change rarely. The send right is never cached: it is checked on every
// submit, as DESIGN.md requires, and mailbox answers it from one Redis round trip.
package directory

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/postamt/postamt/internal/auth"
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
	entries map[string]entry
}

type entry struct {
	mailboxes []string
	lead      bool
	expires   time.Time
}

// New returns a Client; ttl bounds how stale a user's mailboxes and team leadership may be (0
// disables the cache).
func New(mb mailboxv1.MailboxServiceClient, ttl time.Duration) *Client {
	return &Client{mb: mb, ttl: ttl, now: time.Now, entries: make(map[string]entry)}
}

var _ service.Directory = (*Client)(nil)

// CheckSend implements service.Directory.
func (c *Client) CheckSend(ctx context.Context, tenant, user, address string) (service.SendRight, error) {
	r, err := c.mb.CheckSend(auth.WithTenant(ctx, tenant), &mailboxv1.CheckSendRequest{UserId: user, FromAddress: address})
	if err != nil {
		return service.SendRight{}, fmt.Errorf("mailbox CheckSend: %w", err)
	}
	return service.SendRight{
		Allowed: r.GetAllowed(), Mode: outboxv1.SendMode(r.GetMode()), MailboxID: r.GetMailboxId(),
		From: r.GetFrom(), Sender: r.GetSender(), Reason: r.GetDenyReason().String(),
	}, nil
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
	key := tenant + "\x00" + user
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[key]
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
	if c.ttl > 0 {
		c.mu.Lock()
		if len(c.entries) > 100_000 {
			clear(c.entries) // bounded memory; the next reads refill what is used
		}
		c.entries[key] = e
		c.mu.Unlock()
	}
	return e, nil
}
