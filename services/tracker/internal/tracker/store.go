package tracker

import (
	"context"
	"time"
)

// Store keeps the tracker's state. It is declared here, by its consumer, so the rules can be read
// without Redis; redisstore implements it. Besides persistence it keeps these invariants:
//   - one tracked email per (tenant, Message-ID): Track writes it, its indexes (thread, smart
//     key, records) and its EmailTracked event in one atomic step, or nothing when the Message-ID
//     is tracked already;
//   - the address index always lists exactly the records that have each address;
//   - a tracking token number is issued once across all tenants, so a token correlates only in
//     the tenant that issued it;
//   - the mutate callbacks run on the current state and may run again when a concurrent write
//     interferes; their error aborts the write unchanged.
type Store interface {
	// OrgSettings returns the tenant's stored settings (the zero value when none are stored).
	OrgSettings(ctx context.Context, tenant string) (OrgSettings, error)
	UpdateOrgSettings(ctx context.Context, tenant string, mutate func(*OrgSettings) error) (OrgSettings, error)
	// UserSettings returns a user's stored options (no option when none are stored).
	UserSettings(ctx context.Context, tenant, user string) (UserSettings, error)
	UpdateUserSettings(ctx context.Context, tenant, user string, mutate func(*UserSettings) error) (UserSettings, error)

	// UpsertRecord creates or replaces a record, setting its version, and updates the address
	// index.
	UpsertRecord(ctx context.Context, tenant string, r *Record) error
	// DeleteRecord removes a record and its addresses from the index; errs.NotFound when unknown.
	DeleteRecord(ctx context.Context, tenant, id string) error
	// GetRecord returns a record; errs.NotFound when unknown.
	GetRecord(ctx context.Context, tenant, id string) (*Record, error)
	// ListRecords returns records ordered by id after the given id.
	ListRecords(ctx context.Context, tenant, after string, limit int) ([]Record, error)
	// RecordsByAddress returns the records with an address, ordered by id.
	RecordsByAddress(ctx context.Context, tenant, address string) ([]Record, error)

	// IssueToken allocates the next token number, formats it with the tenant's prefix and
	// digits and records it with the record mail carrying it is regarding.
	IssueToken(ctx context.Context, tenant, prefix string, digits int, regarding RecordRef, now time.Time) (Token, error)

	// Gather reads everything the rules need about a message in one round trip.
	Gather(ctx context.Context, tenant string, q Query) (Gathered, error)
	// GatherMany is Gather for several messages, of any tenants, in one round trip; an error
	// fails them all. A query with PresenceOnly reports a tracked Message-ID in
	// Gathered.AlreadyTracked without reading the email.
	GatherMany(ctx context.Context, qs []TenantQuery) ([]Gathered, error)
	// Track stores a tracked email with its indexes and event, reporting false and the stored
	// one when the Message-ID was tracked before.
	Track(ctx context.Context, tenant string, e *TrackedEmail, smartKey string) (bool, *TrackedEmail, error)
	// GetTracked returns a tracked email; errs.NotFound when the Message-ID is not tracked.
	GetTracked(ctx context.Context, tenant, messageID string) (*TrackedEmail, error)
	// ListTracked returns a record's tracked emails, newest sent first, after the cursor.
	ListTracked(ctx context.Context, tenant, recordID, after string, limit int) ([]TrackedEmail, string, error)
	// SaveDecision keeps the explanation of an untracked message for ttl.
	SaveDecision(ctx context.Context, tenant string, x *Explanation, ttl time.Duration) error
	// WriteMany writes the outcomes of several evaluations in one round trip: a tracked email
	// as Track does (Created false when its Message-ID was tracked before), an untracked
	// message's explanation as SaveDecision does. An error fails them all; a write that failed
	// on its own has its WriteResult.Err.
	WriteMany(ctx context.Context, ws []Write) ([]WriteResult, error)
	// Decision returns a kept explanation; errs.NotFound when none is kept.
	Decision(ctx context.Context, tenant, messageID string) (*Explanation, error)
}

// Query says what Gather looks up for one message.
type Query struct {
	User       string
	MessageID  string
	InReplyTo  string
	Tokens     []string
	References []string
	ThreadID   string
	SmartKey   string
	Addresses  []string
	// Regarding is the id of the record the message names as its regarding record, if any.
	Regarding string
}

// TenantQuery is a Query in a tenant, for GatherMany.
type TenantQuery struct {
	// Tenant is the tenant whose keyspace is read.
	Tenant string
	Query
	// PresenceOnly asks only whether the Message-ID is tracked (Gathered.AlreadyTracked), not
	// for the tracked email itself (Gathered.Existing stays nil).
	PresenceOnly bool
}

// Write is the outcome of one evaluation for WriteMany: Email when the message is tracked,
// Explanation (kept for TTL) when it is not.
type Write struct {
	// Ctx carries the trace the EmailTracked event continues; nil means WriteMany's ctx.
	Ctx    context.Context
	Tenant string
	// Email is the tracked email and SmartKey its smart-matching key (Track's arguments).
	Email    *TrackedEmail
	SmartKey string
	// Explanation is the decision on an untracked message, kept for TTL.
	Explanation *Explanation
	TTL         time.Duration
}

// WriteResult is what became of one Write.
type WriteResult struct {
	// Created is true when Email was stored now, false when its Message-ID was tracked before
	// (and for explanations).
	Created bool
	// Err is this write's own failure (the others may have succeeded).
	Err error
}

// Gathered is what Gather found: the tracked email with the message's Message-ID, if any, and
// the evidence for the rules (all but the sync kind, which mailbox knows).
type Gathered struct {
	// AlreadyTracked is true when the message's Message-ID is tracked; Existing is that email
	// (nil for PresenceOnly queries).
	AlreadyTracked bool
	Existing       *TrackedEmail
	Evidence       Evidence
}
