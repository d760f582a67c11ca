package calendar

import (
	"context"
	"errors"
	"time"
)

// ErrRevisionChanged is returned by Store.WriteEntry when the entry's revision is not the one
// the write was based on: another write came first. Current holds the stored entry, nil when
// the write was a create of an unknown id.
type ErrRevisionChanged struct {
	Current *Entry
}

// Error says what happened.
func (e *ErrRevisionChanged) Error() string { return "calendar: the entry changed concurrently" }

// errRevisionChanged matches any *ErrRevisionChanged with errors.Is.
var errRevisionChanged = errors.New("calendar: the entry changed concurrently")

// Is makes errors.Is(err, errRevisionChanged) true.
func (e *ErrRevisionChanged) Is(target error) bool { return target == errRevisionChanged }

// Write is one revision to store: the entry, its iCalendar object, where to queue it.
type Write struct {
	Rev *Revision
	// Prev is the revision the write replaces; 0 for a create.
	Prev int64
	// Target is where the revision is queued; TargetNone queues nothing.
	Target Target
	// Log writes the queueing to the owner's sync log.
	Log bool
	Now time.Time
}

// Store keeps the calendar's state. It is declared here, by its consumer; redisstore implements
// it. Besides persistence it keeps these invariants:
//   - a revision, its EntryChanged event and its queue item are written in one atomic step, or
//     not at all (WriteEntry), and only on top of the revision the write read;
//   - a user's queue for a target holds at most one item per entry: a newer revision replaces
//     an older one that is not acknowledged, taking a new position;
//   - positions grow per user, across targets, so an agent resumes after its last ack;
//   - an ack counts only while its session is the user's agent and its position still holds the
//     acknowledged revision; its EntryDelivered or DeliveryFailed event is written with it;
//   - the mutate callbacks run on the current state and may run again when a concurrent write
//     interferes; their error aborts the write unchanged.
type Store interface {
	TenantSettings(ctx context.Context, tenant string) (TenantSettings, error)
	UpdateTenantSettings(ctx context.Context, tenant string, mutate func(*TenantSettings) error) (TenantSettings, error)
	UserSettings(ctx context.Context, tenant, user string) (UserSettings, error)
	UpdateUserSettings(ctx context.Context, tenant, user string, mutate func(*UserSettings) error) (UserSettings, error)

	// WriteEntry stores a revision; *ErrRevisionChanged when w.Prev is not the stored revision.
	// It returns the queue position (0 when nothing was queued).
	WriteEntry(ctx context.Context, tenant string, w Write) (int64, error)
	// Enqueue queues an entry's current revision for its owner's target without writing a
	// revision (the catch-up when synchronisation starts to apply). It returns the position, 0
	// when nothing was queued: the entry is queued at this revision already, the revision is
	// dead, or it is a cancellation the target never received anything of.
	Enqueue(ctx context.Context, tenant string, e *Entry, target Target, log bool, now time.Time, detail string) (int64, error)
	// GetEntry returns an entry's latest revision; errs.NotFound when unknown.
	GetEntry(ctx context.Context, tenant, id string) (*Entry, error)
	// GetRevision returns one revision; errs.NotFound when unknown.
	GetRevision(ctx context.Context, tenant, id string, rev int64) (*Revision, error)
	// ListEntries returns an owner's entries with from <= Score < to, after the cursor
	// (score, id), ordered by score and id.
	ListEntries(ctx context.Context, tenant, owner string, from, to int64, afterScore int64, afterID string, limit int) ([]Entry, error)

	// NextDeliveries returns up to limit queued deliveries of the user's target after position
	// after, in order, with their revisions, marking them in flight (and DELIVERED in the sync
	// log when log is set). An item handed out maxUnanswered times without an answer (Attempt
	// minus Errors; 0: no bound) is returned unmarked, for the caller to give up.
	NextDeliveries(ctx context.Context, tenant, user string, target Target, after int64, limit int, log bool, maxUnanswered int) ([]Delivery, error)
	// PendingThrough returns the queued deliveries with positions up to through.
	PendingThrough(ctx context.Context, tenant, user string, target Target, through int64) ([]Delivery, error)
	// DeliveryAt returns the queued delivery at a position; false when none is there.
	DeliveryAt(ctx context.Context, tenant, user string, target Target, pos int64) (Delivery, bool, error)
	// Ack records a target's answer for one delivery.
	Ack(ctx context.Context, tenant, user string, a AckInput) (AckResult, error)
	// AckMany records the acknowledgements of one stream in order, in one round trip; on an
	// error, the results before the failed one are returned (those were recorded).
	AckMany(ctx context.Context, tenant, user string, as []AckInput) ([]AckResult, error)
	// QueueStats counts the user's deliveries over all targets.
	QueueStats(ctx context.Context, tenant, user string) (QueueStats, error)

	// ClaimAgent makes session the user's agent and tells the previous one to stop; it returns
	// the previous session ("" when none).
	ClaimAgent(ctx context.Context, tenant, user string, p Presence) (string, error)
	// TouchAgent records that the session's agent was heard from; false when it is replaced.
	TouchAgent(ctx context.Context, tenant, user, session string, now time.Time) (bool, error)
	// ReleaseAgent ends the session's presence, if it still is the user's agent, keeping when it
	// was last seen.
	ReleaseAgent(ctx context.Context, tenant, user, session string, now time.Time) error
	// Presence returns the user's agent; nil when none ever connected.
	Presence(ctx context.Context, tenant, user string) (*Presence, error)

	// AppendLog writes a line to the user's sync log.
	AppendLog(ctx context.Context, tenant, user string, l LogLine) error
	// SyncLog returns log lines newest first, older than the cursor id ("" for the newest),
	// not older than minTime.
	SyncLog(ctx context.Context, tenant, user, before string, minTime time.Time, limit int) ([]LogLine, error)
}
