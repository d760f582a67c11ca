// Package directory asks the mailbox service who a user is: whether the user exists in the
// tenant, and the practice and directory usernames that decide whether live sync applies. It
// calls mailbox over gRPC with the calendar's service credentials, acting within the request's
// tenant.
//
// Answers are cached, because every entry change and every agent connect asks. A tenant's
// answers are dropped as soon as mailbox publishes any event of that tenant (Follow reads
// mailbox's stream; UserChanged carries username changes), and in any case after the TTL, which
// bounds staleness while NATS is unreachable (internal/tenantcache). WatchUsers follows the same
// stream's UserChanged events so that a user whose usernames now match is caught up at once.
package directory

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/tenantcache"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
)

// retryAfter is what an Unavailable answer suggests when mailbox cannot be asked.
const retryAfter = time.Second

// Client implements calendar.Directory over mailbox's gRPC API.
type Client struct {
	mb    mailboxv1.MailboxServiceClient
	cache *tenantcache.Cache[entry]
}

type entry struct {
	user  calendar.User
	found bool
}

var _ calendar.Directory = (*Client)(nil)

// New returns a Client; ttl bounds how stale a cached user may be (0 disables the cache). now is
// the clock; nil means time.Now.
func New(mb mailboxv1.MailboxServiceClient, ttl time.Duration, now func() time.Time) *Client {
	return &Client{mb: mb, cache: tenantcache.NewFollowed[entry](ttl, 0, now)}
}

// User implements calendar.Directory.
func (c *Client) User(ctx context.Context, tenant, id string) (calendar.User, error) {
	e, ok := c.cache.Get(tenant, id)
	if !ok {
		g := c.cache.Gen(tenant)
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
		c.cache.PutAt(tenant, id, e, g)
	}
	if !e.found {
		return calendar.User{}, errs.NotFound("user", id)
	}
	return e.user, nil
}

// Users implements calendar.Directory: every user of the tenant, from mailbox's ListUsers.
func (c *Client) Users(ctx context.Context, tenant string) ([]calendar.User, error) {
	var out []calendar.User
	tok := ""
	for {
		r, err := c.mb.ListUsers(auth.WithTenant(ctx, tenant), &mailboxv1.ListUsersRequest{PageSize: 500, PageToken: tok})
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("mailbox ListUsers: %w", ctx.Err())
			}
			return nil, errs.Unavailable("the mailbox service cannot list the users now", retryAfter, fmt.Errorf("mailbox ListUsers: %w", err))
		}
		for _, u := range r.GetUsers() {
			out = append(out, calendar.User{ID: u.GetUserId(), DirectoryUsername: u.GetDirectoryUsername(), PracticeUsername: u.GetPracticeUsername()})
		}
		if tok = r.GetNextPageToken(); tok == "" {
			return out, nil
		}
	}
}

// Invalidate drops every answer about a tenant.
func (c *Client) Invalidate(tenant string) { c.cache.Invalidate(tenant) }

// Follow drops a tenant's answers whenever mailbox publishes an event of that tenant, until ctx
// ends (tenantcache.Cache.Follow).
func (c *Client) Follow(ctx context.Context, js jetstream.JetStream, stream string, logger *slog.Logger) error {
	return c.cache.Follow(ctx, js, stream, logger)
}

// userChangedSubject is the subject of mailbox's UserChanged events.
const userChangedSubject = "postamt.mailbox.v1.UserChanged"

// WatchUsers calls changed for every user mailbox announces as created or changed, after
// dropping the tenant's cached answers, until ctx ends: a changed username may make live sync
// apply, and the calendar then queues what the user's agent has not got (calendar.Service
// Reconcile). It reads new events only; what it misses while it is not running is caught up
// when the user next connects, books or reads their status. A failing changed is logged, not
// retried, for the same reason.
func (c *Client) WatchUsers(ctx context.Context, js jetstream.JetStream, stream string, logger *slog.Logger, changed func(ctx context.Context, tenant, user string) error) error {
	for {
		err := c.watchUsers(ctx, js, stream, logger, changed)
		if ctx.Err() != nil {
			return nil //nolint:nilerr // ctx ended the watch: its error is the shutdown, not a failure
		}
		logger.Warn("calendar: following user changes failed; users catch up when they next connect", "stream", stream, "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func (c *Client) watchUsers(ctx context.Context, js jetstream.JetStream, stream string, logger *slog.Logger, changed func(ctx context.Context, tenant, user string) error) error {
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverNewPolicy, FilterSubjects: []string{userChangedSubject},
	})
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
		var ev mailboxv1.UserChanged
		if err := proto.Unmarshal(m.Data(), &ev); err != nil {
			logger.Warn("calendar: undecodable UserChanged event", "error", err)
			continue
		}
		if ev.GetChange() == mailboxv1.ChangeType_CHANGE_TYPE_DELETED || ev.GetTenantId() == "" || ev.GetUser().GetUserId() == "" {
			continue
		}
		c.cache.Invalidate(ev.GetTenantId())
		if err := changed(ctx, ev.GetTenantId(), ev.GetUser().GetUserId()); err != nil {
			logger.Warn("calendar: catching a changed user up failed", "tenant", ev.GetTenantId(), "user", ev.GetUser().GetUserId(), "error", err)
		}
	}
}
