// Package mailboxes asks the mailbox service what the tracker needs to know about a mailbox: its
// server-side sync kind (sent items are tracked only for EXCHANGE). It calls mailbox over gRPC
// with the tracker's service credentials, acting within the sent item's tenant.
//
// Answers are cached, because every sent item asks and sync kinds change rarely. A tenant's
// answers are dropped as soon as mailbox publishes any event of that tenant (Follow reads
// mailbox's stream; MailboxChanged carries sync kind changes), and in any case after the TTL,
// which bounds staleness while NATS is unreachable. The model is outbox's directory client.
package mailboxes

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
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// maxEntries bounds the cache; when full it starts again empty (the next reads refill what is
// used).
const maxEntries = 200_000

// retryAfter is what an Unavailable answer suggests to the caller when mailbox cannot be asked.
const retryAfter = time.Second

// Client implements tracker.SyncKinds over mailbox's gRPC API.
type Client struct {
	mb  mailboxv1.MailboxServiceClient
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	tenants map[string]map[string]entry
	size    int
}

type entry struct {
	kind    tracker.SyncKind
	expires time.Time
}

var _ tracker.SyncKinds = (*Client)(nil)

// New returns a Client; ttl bounds how stale a cached sync kind may be (0 disables the cache).
// now is the clock; nil means time.Now.
func New(mb mailboxv1.MailboxServiceClient, ttl time.Duration, now func() time.Time) *Client {
	if now == nil {
		now = time.Now
	}
	return &Client{mb: mb, ttl: ttl, now: now, tenants: make(map[string]map[string]entry)}
}

// SyncKind implements tracker.SyncKinds. A mailbox mailbox does not know is SyncUnknownMailbox
// (cached like any answer); when mailbox cannot be asked the error is errs.Unavailable.
func (c *Client) SyncKind(ctx context.Context, tenant, mailboxID string) (tracker.SyncKind, error) {
	now := c.now()
	c.mu.Lock()
	if e, ok := c.tenants[tenant][mailboxID]; ok && now.Before(e.expires) {
		c.mu.Unlock()
		return e.kind, nil
	}
	c.mu.Unlock()
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
	c.put(tenant, mailboxID, entry{kind: kind, expires: now.Add(c.ttl)})
	return kind, nil
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

func (c *Client) put(tenant, mailboxID string, e entry) {
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
	if _, ok := m[mailboxID]; !ok {
		c.size++
	}
	m[mailboxID] = e
}

// Invalidate drops every answer about a tenant.
func (c *Client) Invalidate(tenant string) {
	c.mu.Lock()
	c.size -= len(c.tenants[tenant])
	delete(c.tenants, tenant)
	c.mu.Unlock()
}

// Follow drops a tenant's answers whenever mailbox publishes an event of that tenant, until ctx
// ends. It reconnects after errors, dropping everything (events may have been missed), so a NATS
// outage only lets answers live until their TTL.
func (c *Client) Follow(ctx context.Context, js jetstream.JetStream, stream string, logger *slog.Logger) error {
	for {
		err := c.follow(ctx, js, stream)
		if ctx.Err() != nil {
			return nil
		}
		logger.Warn("sync kind cache: following mailbox events failed; answers expire by TTL meanwhile", "error", err)
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
