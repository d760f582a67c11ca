// Package directory asks the mailbox service what the outbox needs to know about people: may a
// user send from an address, which mailboxes' mail they see, which teams they are in and whether
// they lead one. It calls
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
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/tenantcache"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/service"
)

// Client implements service.Directory over mailbox's gRPC API.
type Client struct {
	mb    mailboxv1.MailboxServiceClient
	cache *tenantcache.Cache[cached]
}

// cached is one answer: a send right (keys "s\x00user\x00address") or a user's mailboxes, teams
// and team leadership (keys "u\x00user"), in one cache so that an event of the tenant drops both.
type cached struct {
	right service.SendRight
	user  entry
}

type entry struct {
	mailboxes []string
	teams     []string // member or lead, sorted
	lead      bool
}

// New returns a Client; ttl bounds how stale its answers (send rights, a user's mailboxes and
// team leadership) may be when mailbox's events do not arrive (0 disables the cache).
func New(mb mailboxv1.MailboxServiceClient, ttl time.Duration) *Client {
	return &Client{mb: mb, cache: tenantcache.NewFollowed[cached](ttl, 0, nil)}
}

// Invalidate drops every answer about a tenant.
func (c *Client) Invalidate(tenant string) { c.cache.Invalidate(tenant) }

// Follow drops a tenant's answers whenever mailbox publishes an event of that tenant (users,
// teams, mailboxes, members: everything the answers depend on), until ctx ends
// (tenantcache.Cache.Follow), so a NATS outage only lets answers live until their TTL.
func (c *Client) Follow(ctx context.Context, js jetstream.JetStream, stream string, logger *slog.Logger) error {
	return c.cache.Follow(ctx, js, stream, logger)
}

var _ service.Directory = (*Client)(nil)

// CheckSend implements service.Directory.
func (c *Client) CheckSend(ctx context.Context, tenant, user, address string) (service.SendRight, error) {
	k := "s\x00" + user + "\x00" + address
	if e, ok := c.cache.Get(tenant, k); ok {
		return e.right, nil
	}
	g := c.cache.Gen(tenant)
	r, err := c.mb.CheckSend(auth.WithTenant(ctx, tenant), &mailboxv1.CheckSendRequest{UserId: user, FromAddress: address})
	if err != nil {
		return service.SendRight{}, fmt.Errorf("mailbox CheckSend: %w", err)
	}
	right := service.SendRight{
		Allowed: r.GetAllowed(), Mode: outboxv1.SendMode(r.GetMode()), MailboxID: r.GetMailboxId(),
		From: r.GetFrom(), Sender: r.GetSender(), Reason: r.GetDenyReason().String(),
	}
	c.cache.PutAt(tenant, k, cached{right: right}, g)
	return right, nil
}

// DefaultSender implements service.Directory: the address of the user's default sender mailbox
// (two calls, not cached: only submits without a From ask).
func (c *Client) DefaultSender(ctx context.Context, tenant, user string) (string, error) {
	ctx = auth.WithTenant(ctx, tenant)
	u, err := c.mb.GetUser(ctx, &mailboxv1.GetUserRequest{UserId: user})
	if err != nil {
		return "", fmt.Errorf("mailbox GetUser: %w", err)
	}
	id := u.GetUser().GetDefaultSenderMailboxId()
	if id == "" {
		return "", nil
	}
	m, err := c.mb.GetMailbox(ctx, &mailboxv1.GetMailboxRequest{MailboxId: id})
	if status.Code(err) == codes.NotFound {
		return "", nil // deleted since; mailbox resets the default with the next change
	}
	if err != nil {
		return "", fmt.Errorf("mailbox GetMailbox: %w", err)
	}
	return m.GetMailbox().GetAddress(), nil
}

// Mailboxes implements service.Directory: the mailboxes whose mail the user may read (owner, or
// RIGHT_READ explicitly or from all-users).
func (c *Client) Mailboxes(ctx context.Context, tenant, user string) ([]string, error) {
	e, err := c.lookup(ctx, tenant, user)
	return e.mailboxes, err
}

// Teams implements service.Directory: the teams the user is a member or a lead of.
func (c *Client) Teams(ctx context.Context, tenant, user string) ([]string, error) {
	e, err := c.lookup(ctx, tenant, user)
	return e.teams, err
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
	k := "u\x00" + user
	if e, ok := c.cache.Get(tenant, k); ok {
		return e.user, nil
	}
	g := c.cache.Gen(tenant)
	// One question, answered by mailbox (the owner of rights and teams) for every service that
	// shows mail: what the user may read. A user it does not know has nothing.
	r, err := c.mb.GetReadAccess(auth.WithTenant(ctx, tenant), &mailboxv1.GetReadAccessRequest{UserId: user})
	if err != nil {
		return entry{}, fmt.Errorf("mailbox GetReadAccess: %w", err)
	}
	e := entry{mailboxes: r.GetReadableMailboxIds(), teams: r.GetTeamIds(), lead: len(r.GetLeadTeamIds()) > 0}
	c.cache.PutAt(tenant, k, cached{user: e}, g)
	return e, nil
}
