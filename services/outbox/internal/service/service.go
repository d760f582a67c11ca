// Package service is the outbox's application layer: it checks who may do what, resolves the
// sender through mailbox, builds the message once, and turns requests into ledger transitions.
// The gRPC handlers only decode and encode; the rules of an email's life are in package outbox
// and the atomic steps in redisstore.
package service

import (
	"context"
	"time"

	"github.com/postamt/postamt/internal/access"
	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// SendRight is mailbox's answer to "may this user send from this address, and how".
type SendRight struct {
	Allowed bool
	Mode    outboxv1.SendMode
	// MailboxID is the mailbox of the address.
	MailboxID string
	// From is the From header value (display name and address); Sender the Sender header value
	// for on-behalf mail.
	From, Sender string
	// Reason says why not, for the PermissionDenied message.
	Reason string
}

// Directory is what the outbox asks mailbox, the owner of users, mailboxes and rights.
type Directory interface {
	// CheckSend answers whether user may send from address.
	CheckSend(ctx context.Context, tenant, user, address string) (SendRight, error)
	// Mailboxes returns the mailboxes whose mail the user sees in the outbox: those they are a
	// member of.
	Mailboxes(ctx context.Context, tenant, user string) ([]string, error)
	// Teams returns the teams the user is a member or a lead of: the one source of the TEAM
	// view and of the team buckets a user's mail is listed under.
	Teams(ctx context.Context, tenant, user string) ([]string, error)
	// LeadsTeam reports whether the user leads a team, which makes TEAM their first view.
	LeadsTeam(ctx context.Context, tenant, user string) (bool, error)
	// DefaultSender returns the address of the user's default sender mailbox, or "" when the
	// user has none: the From of a submit that names none.
	DefaultSender(ctx context.Context, tenant, user string) (string, error)
}

// Tokens is what the outbox asks the tracker, the owner of CRM records and tracking tokens.
type Tokens interface {
	// Subject returns the subject for mail regarding record: with a tracking token appended
	// when the tenant has tokens in subjects on, else as given.
	Subject(ctx context.Context, tenant, record, subject string) (string, error)
}

// ConnectorCheck reports whether a tenant's connector exists (nil) or not (NotFound).
type ConnectorCheck func(ctx context.Context, tenant, id string) error

// Options are the service's limits and defaults; zero values take the documented defaults.
type Options struct {
	Limits outbox.Limits
	// DefaultUndoDelay applies to users who never set one (zero: none); MaxUndoDelay bounds what
	// they set.
	DefaultUndoDelay time.Duration
	MaxUndoDelay     time.Duration
	// DefaultConnector is used when a submit names none.
	DefaultConnector string
	// DefaultPageSize is a list's page size when neither the request nor the user's settings
	// give one.
	DefaultPageSize int
	// MaxSelection bounds the emails one bulk action may select by filter.
	MaxSelection int
	// MaxFilterScan bounds the emails one list or count reads to apply a filter the indexes do
	// not answer (connector, work item, mailbox, text).
	MaxFilterScan int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// DescribeConnector returns a connector's display name and current attempt limit for list
	// rows, from memory (Registry.Describe); nil leaves them as the record has them.
	DescribeConnector func(tenant, id string) (name string, maxAttempts int)
	// Tokens issues tracking tokens for submits that name a regarding record; nil (no tracker
	// configured) stores the record and leaves subjects as they are.
	Tokens Tokens
}

func (o *Options) defaults() {
	if o.Limits == (outbox.Limits{}) {
		o.Limits = outbox.DefaultLimits()
	}
	if o.MaxUndoDelay == 0 {
		o.MaxUndoDelay = 10 * time.Minute
	}
	if o.DefaultConnector == "" {
		o.DefaultConnector = "default"
	}
	if o.DefaultPageSize == 0 {
		o.DefaultPageSize = 50
	}
	if o.MaxSelection == 0 {
		o.MaxSelection = 100_000
	}
	if o.MaxFilterScan == 0 {
		o.MaxFilterScan = 10_000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Service is the outbox.
type Service struct {
	ledger     *redisstore.Ledger
	settings   *redisstore.Settings
	dir        Directory
	connectors ConnectorCheck
	opts       Options
}

// New returns the service.
func New(ledger *redisstore.Ledger, settings *redisstore.Settings, dir Directory, connectors ConnectorCheck, opts Options) *Service {
	opts.defaults()
	return &Service{ledger: ledger, settings: settings, dir: dir, connectors: connectors, opts: opts}
}

// Limits returns the submission limits, for the handler's request size checks.
func (s *Service) Limits() outbox.Limits { return s.opts.Limits }

// newID draws a random email id (26 characters of base32); with an idempotency key one in the
// key's partition, so one script checks the key and writes the email (Ledger.NewID).
func (s *Service) newID(tenant, key string) string { return s.ledger.NewID(tenant, key) }

// viewBuckets returns the index buckets a view means for the caller. An empty result is an
// empty view (a user without teams has an empty TEAM view), not an error.
func (s *Service) viewBuckets(ctx context.Context, p auth.Principal, v outboxv1.View) ([]string, error) {
	admin := p.IsAdmin() || p.IsService()
	switch v {
	case outboxv1.View_VIEW_MINE:
		if p.User == "" {
			return nil, nil
		}
		return []string{redisstore.BucketUser(p.User)}, nil
	case outboxv1.View_VIEW_TEAM:
		teams, err := s.teams(ctx, p)
		if err != nil {
			return nil, err
		}
		out := make([]string, 0, len(teams))
		for _, t := range teams {
			out = append(out, redisstore.BucketTeam(t))
		}
		return out, nil
	case outboxv1.View_VIEW_SYSTEM:
		if admin {
			return []string{redisstore.BucketSystem}, nil
		}
		mbs, err := s.dir.Mailboxes(ctx, p.Tenant, p.User)
		if err != nil {
			return nil, err
		}
		out := make([]string, 0, len(mbs))
		for _, m := range mbs {
			out = append(out, redisstore.BucketSystemMailbox(m))
		}
		return out, nil
	case outboxv1.View_VIEW_ALL:
		if admin {
			return []string{redisstore.BucketAll}, nil
		}
		mbs, err := s.dir.Mailboxes(ctx, p.Tenant, p.User)
		if err != nil {
			return nil, err
		}
		teams, err := s.teams(ctx, p)
		if err != nil {
			return nil, err
		}
		out := []string{redisstore.BucketUser(p.User)}
		for _, t := range teams {
			out = append(out, redisstore.BucketTeam(t))
		}
		for _, m := range mbs {
			out = append(out, redisstore.BucketMailbox(m))
		}
		return out, nil
	}
	return nil, errs.Invalid("view", "unknown view")
}

// teams are the caller's teams for their views: the directory's, narrowed by the token's
// (access.Teams). Services and callers without a user have none.
func (s *Service) teams(ctx context.Context, p auth.Principal) ([]string, error) {
	if p.User == "" {
		return nil, nil
	}
	dir, err := s.dir.Teams(ctx, p.Tenant, p.User)
	if err != nil {
		return nil, err
	}
	return access.Teams(dir, p.Teams), nil
}

// reader is the caller as the visibility rule sees them (access.Reader): the mailboxes they may
// read and their teams, from the directory.
func (s *Service) reader(ctx context.Context, p auth.Principal) (access.Reader, error) {
	return access.ReaderOf(ctx, p, func(ctx context.Context, tenant, user string) ([]string, []string, error) {
		mbs, err := s.dir.Mailboxes(ctx, tenant, user)
		if err != nil {
			return nil, nil, err
		}
		teams, err := s.dir.Teams(ctx, tenant, user)
		return mbs, teams, err
	})
}

// mailOf is what the visibility rule looks at of a record: its buckets name its sender, its
// mailbox and its teams (Bucket*), the same facts the ALL view's buckets are built from, so a
// view and a single read cannot disagree.
func mailOf(e *redisstore.Email) access.Mail {
	m := access.Mail{Tenant: e.Tenant}
	m.Sender, m.Mailbox, m.Teams = redisstore.BucketFacts(e.Buckets)
	return m
}

// visible reports whether the caller may see an email: the one visibility rule
// (access.Reader.MayRead).
func (s *Service) visible(ctx context.Context, p auth.Principal, e *redisstore.Email) (bool, error) {
	if e.Tenant != p.Tenant {
		return false, nil
	}
	r, err := s.reader(ctx, p)
	if err != nil {
		return false, err
	}
	return r.MayRead(mailOf(e)), nil
}

// read returns an email the caller may see; others (and other tenants') are NotFound, so ids
// cannot be probed.
func (s *Service) read(ctx context.Context, p auth.Principal, id string) (*redisstore.Email, error) {
	if err := ids.Err("email_id", id); err != nil {
		return nil, err
	}
	e, err := s.ledger.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	ok, err := s.visible(ctx, p, e)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errs.NotFound("email", id)
	}
	return e, nil
}

// defaultView is the caller's first view: their saved choice, else TEAM for a team lead and
// MINE for everyone else (ALL for services, which have no mail of their own).
func (s *Service) defaultView(ctx context.Context, p auth.Principal) (outboxv1.View, error) {
	if p.User == "" {
		return outboxv1.View_VIEW_ALL, nil
	}
	us, err := s.Settings(ctx, p, "")
	if err != nil {
		return 0, err
	}
	return us.GetDefaultView(), nil
}

func principalUser(p auth.Principal) string {
	if p.User != "" {
		return p.User
	}
	return "service:" + p.Service
}

// errNoUser is the answer to user-only calls made by a service.
func errNoUser(field string) error {
	return errs.Invalid(field, "is required for service callers")
}
