// Package mailboxes asks the mailbox service what the tracker needs to know about a mailbox (its
// server-side sync kind: sent items are tracked only for EXCHANGE) and about a user (what they
// may read, for the one visibility rule of internal/access). It calls mailbox over gRPC
// with the tracker's service credentials, acting within the sent item's tenant.
//
// Answers are cached, because every sent item asks and sync kinds change rarely. A tenant's
// answers are dropped as soon as mailbox publishes any event of that tenant (Follow reads
// mailbox's stream; MailboxChanged carries sync kind changes), and in any case after the TTL,
// which bounds staleness while NATS is unreachable (internal/tenantcache).
package mailboxes

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/tenantcache"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// retryAfter is what an Unavailable answer suggests to the caller when mailbox cannot be asked.
const retryAfter = time.Second

// Client implements tracker.SyncKinds and tracker.ReadAccess over mailbox's gRPC API.
type Client struct {
	mb    mailboxv1.MailboxServiceClient
	cache *tenantcache.Cache[answer]
}

// answer is one cached answer: a mailbox's sync kind (keys "k\x00mailbox") or a user's read
// access (keys "r\x00user"), in one cache so that an event of the tenant drops both.
type answer struct {
	kind             tracker.SyncKind
	mailboxes, teams []string
}

var (
	_ tracker.SyncKinds  = (*Client)(nil)
	_ tracker.ReadAccess = (*Client)(nil)
)

// New returns a Client; ttl bounds how stale a cached sync kind may be (0 disables the cache).
// now is the clock; nil means time.Now.
func New(mb mailboxv1.MailboxServiceClient, ttl time.Duration, now func() time.Time) *Client {
	return &Client{mb: mb, cache: tenantcache.NewFollowed[answer](ttl, 0, now)}
}

// SyncKind implements tracker.SyncKinds. A mailbox mailbox does not know is SyncUnknownMailbox
// (cached like any answer); when mailbox cannot be asked the error is errs.Unavailable.
func (c *Client) SyncKind(ctx context.Context, tenant, mailboxID string) (tracker.SyncKind, error) {
	if a, ok := c.cache.Get(tenant, "k\x00"+mailboxID); ok {
		return a.kind, nil
	}
	g := c.cache.Gen(tenant)
	r, err := c.mb.GetMailbox(auth.WithTenant(ctx, tenant), &mailboxv1.GetMailboxRequest{MailboxId: mailboxID})
	var kind tracker.SyncKind
	switch status.Code(err) {
	case codes.OK:
		kind = syncKind(r.GetMailbox().GetSyncKind())
	case codes.NotFound:
		kind = tracker.SyncUnknownMailbox
	case codes.Canceled, codes.DeadlineExceeded:
		return 0, fmt.Errorf("mailbox GetMailbox: %w", ctx.Err())
	default:
		return 0, errs.Unavailable("the mailbox service cannot tell the mailbox's sync kind now", retryAfter, fmt.Errorf("mailbox GetMailbox %s: %w", mailboxID, err))
	}
	c.cache.PutAt(tenant, "k\x00"+mailboxID, answer{kind: kind}, g)
	return kind, nil
}

// ReadAccess implements tracker.ReadAccess: the mailboxes whose mail the user may read and their
// teams (mailbox's GetReadAccess); when mailbox cannot be asked the error is errs.Unavailable.
func (c *Client) ReadAccess(ctx context.Context, tenant, user string) (mailboxes, teams []string, err error) {
	if a, ok := c.cache.Get(tenant, "r\x00"+user); ok {
		return a.mailboxes, a.teams, nil
	}
	g := c.cache.Gen(tenant)
	r, err := c.mb.GetReadAccess(auth.WithTenant(ctx, tenant), &mailboxv1.GetReadAccessRequest{UserId: user})
	switch status.Code(err) {
	case codes.OK:
	case codes.Canceled, codes.DeadlineExceeded:
		return nil, nil, fmt.Errorf("mailbox GetReadAccess: %w", ctx.Err())
	default:
		return nil, nil, errs.Unavailable("the mailbox service cannot tell what the user may read now", retryAfter, fmt.Errorf("mailbox GetReadAccess %s: %w", user, err))
	}
	a := answer{mailboxes: r.GetReadableMailboxIds(), teams: r.GetTeamIds()}
	c.cache.PutAt(tenant, "r\x00"+user, a, g)
	return a.mailboxes, a.teams, nil
}

// Invalidate drops every answer about a tenant.
func (c *Client) Invalidate(tenant string) { c.cache.Invalidate(tenant) }

// Follow drops a tenant's answers whenever mailbox publishes an event of that tenant, until ctx
// ends (tenantcache.Cache.Follow).
func (c *Client) Follow(ctx context.Context, js jetstream.JetStream, stream string, logger *slog.Logger) error {
	return c.cache.Follow(ctx, js, stream, logger)
}

func syncKind(k mailboxv1.SyncKind) tracker.SyncKind {
	switch k {
	case mailboxv1.SyncKind_SYNC_KIND_EXCHANGE:
		return tracker.SyncExchange
	case mailboxv1.SyncKind_SYNC_KIND_IMAP:
		return tracker.SyncIMAP
	}
	return tracker.SyncNone // UNSPECIFIED is treated as NONE, as mailbox documents.
}
