// Package calendar holds the rules of the calendar service (DESIGN.md §1.4): entries
// (appointments, deadlines, preliminary deadlines) that one user keeps for another, their
// revisions, who synchronises and how (live agent, server-side push, off), the one-time notice,
// and the live agent's session on the Connect stream. The Store it declares keeps entries, their
// delivery queues and events together; redisstore implements it.
package calendar

import (
	"strings"
	"time"

	"github.com/postamt/postamt/services/calendar/internal/ical"
)

// Target is where a user's deliveries go. A user's entries are queued for one target at a time,
// chosen by Decide when the entry changes.
type Target string

// The targets.
const (
	// TargetNone queues nothing: synchronisation does not apply to the owner.
	TargetNone Target = ""
	// TargetAgent is the owner's live agent on the Connect stream.
	TargetAgent Target = "agent"
	// TargetCalDAV is server-side push into the owner's CalDAV calendar.
	TargetCalDAV Target = "caldav"
)

// SyncMode is a user's chosen delivery mode; the numbers are the API's.
type SyncMode int

// The modes.
const (
	// ModeDefault is "not chosen", which means ModeLiveAgent.
	ModeDefault SyncMode = iota
	// ModeLiveAgent delivers to the user's agent; it needs equal practice and directory usernames.
	ModeLiveAgent
	// ModeServerPush writes into the user's CalDAV calendar.
	ModeServerPush
	// ModeOff delivers nothing.
	ModeOff
)

// Effective fills in the default.
func (m SyncMode) Effective() SyncMode {
	if m == ModeDefault {
		return ModeLiveAgent
	}
	return m
}

// Applicability says whether synchronisation applies to a user; the numbers are the API's.
type Applicability int

// The applicabilities.
const (
	_ Applicability = iota // 0: the API's unspecified
	// Applicable: entries are queued for the user's target.
	Applicable
	// NotApplicable: live sync does not apply (usernames differ). Not a fault; no warning.
	NotApplicable
	// TenantDisabled: live agent mode, but the tenant switched live sync off.
	TenantDisabled
	// UserOff: the user chose ModeOff.
	UserOff
)

// Warning is something to tell an applicable user; the numbers are the API's.
type Warning int

// The warnings.
const (
	_ Warning = iota // 0: the API's unspecified
	// WarnAgentNeverConnected: deliveries wait and no agent ever connected.
	WarnAgentNeverConnected
	// WarnDeliveriesDead: some deliveries failed for good.
	WarnDeliveriesDead
	// WarnCalDAVTargetMissing: server push without a complete target.
	WarnCalDAVTargetMissing
	// WarnCalDAVConflict: some entries met a conflicting change in the CalDAV calendar; their
	// SyncWarning says which side won.
	WarnCalDAVConflict
)

// Entry is one revision of an entry. The fields that apply depend on Kind, as in ical.Entry.
type Entry struct {
	ID        string
	Owner     string
	Kind      ical.Kind
	Summary   string
	Desc      string
	Location  string
	Start     time.Time
	End       time.Time
	TimeZone  string // IANA name, after mapping a Windows name
	Day       ical.Date
	RRule     string
	ExStarts  []time.Time
	ExDays    []ical.Date
	Deadline  string // preliminary deadlines: the deadline's entry id
	Done      bool
	Cancelled bool
	Revision  int64
	Creator   string
	Updater   string
	Created   time.Time
	Updated   time.Time
	// Fingerprint identifies the create request, so a repeated CreateEntry is recognised.
	Fingerprint string
	// SyncWarning is the entry's open CalDAV conflict note (which side won per field), kept
	// beside the entry rather than in a revision, because it is about delivery, not content.
	SyncWarning string `json:"-"`
}

// Sequence is the iCalendar SEQUENCE of the revision.
func (e *Entry) Sequence() int { return int(e.Revision - 1) }

// Score orders entries by start in the owner's index: the start instant in Unix milliseconds,
// all-day entries at midnight UTC of their day.
func (e *Entry) Score() int64 {
	if e.Kind.AllDay() {
		return time.Date(e.Day.Year, e.Day.Month, e.Day.Day, 0, 0, 0, 0, time.UTC).UnixMilli()
	}
	return e.Start.UnixMilli()
}

// Revision is an entry revision with its iCalendar object, as delivered.
type Revision struct {
	Entry Entry
	ICS   []byte
}

// TenantSettings are a tenant's switches.
type TenantSettings struct {
	LiveSync bool
	Version  int64
	Updated  time.Time
}

// CalDAVTarget is a user's CalDAV calendar; the password is a reference (env:/file:).
type CalDAVTarget struct {
	URL         string
	Username    string
	PasswordRef string
}

// Complete reports whether every field is set.
func (t CalDAVTarget) Complete() bool { return t.URL != "" && t.Username != "" && t.PasswordRef != "" }

// UserSettings are a user's options and the service's memory of the user's notice.
type UserSettings struct {
	UserID string
	Mode   SyncMode
	CalDAV CalDAVTarget
	// SyncLogOff turns the user's sync log off; it is on by default. (Stored under a new name:
	// the log was off by default before, so a stored "off" from then was no one's choice.)
	SyncLogOff bool
	Version    int64
	// NoticeAcked is when the user acknowledged the one-time notice; zero while not.
	NoticeAcked time.Time
	// QueuedFor is the target the user's entries were last queued for (TargetNone while
	// synchronisation did not apply). When Decide picks another, the user's current and future
	// entries are queued for it (Service.catchUp). The service's memory, not an option.
	QueuedFor Target
	// Effective is the mode in effect, Decide's (OFF while synchronisation does not apply);
	// filled for answers, never stored.
	Effective SyncMode `json:"-"`
}

// LogOn reports whether the user's sync log is written.
func (u UserSettings) LogOn() bool { return !u.SyncLogOff }

// User is what the directory (the mailbox service) knows about a user that matters here.
type User struct {
	ID                string
	DirectoryUsername string
	PracticeUsername  string
}

// loginName reduces a username to the part that names the person: `DOMAIN\user` → user,
// `user@upn.suffix` → user, in lower case. The domain is ignored on purpose: the directory
// may hold the down-level form and the practice product the UPN of the same account, and a
// tenant is one firm, so two accounts with the same name in different domains do not occur.
func loginName(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\\'); i >= 0 {
		s = s[i+1:]
	} else if i := strings.LastIndexByte(s, '@'); i >= 0 {
		s = s[:i]
	}
	return strings.ToLower(strings.TrimSpace(s))
}

// SameLogin reports whether a practice username and a directory username name the same login,
// case-insensitively and by their user part (see loginName). Empty names never match.
func SameLogin(practice, directory string) bool {
	a, b := loginName(practice), loginName(directory)
	return a != "" && a == b
}

// Decision is what Decide found for a user.
type Decision struct {
	Applicability Applicability
	// Mode is the mode in effect: ModeOff whenever nothing is delivered (the user chose OFF,
	// or live agent mode does not apply), so no one reads LIVE_AGENT for a user whose agent
	// may not connect.
	Mode   SyncMode
	Target Target
}

// Decide says whether and where a user's entries are delivered. Server push is the user's (or
// an admin's) explicit choice and does not depend on the usernames or the tenant's live sync
// switch; live agent mode applies only where the practice username equals the directory
// username, and then only while the tenant has live sync on. A user whose usernames differ is
// NotApplicable whatever the tenant's switch says, so a secretary never sees "disabled".
func Decide(ts TenantSettings, us UserSettings, u User) Decision {
	d := Decision{Mode: us.Mode.Effective()}
	switch d.Mode {
	case ModeOff:
		d.Applicability = UserOff
	case ModeServerPush:
		d.Applicability, d.Target = Applicable, TargetCalDAV
	default:
		switch {
		case !SameLogin(u.PracticeUsername, u.DirectoryUsername):
			d.Applicability, d.Mode = NotApplicable, ModeOff
		case !ts.LiveSync:
			d.Applicability, d.Mode = TenantDisabled, ModeOff
		default:
			d.Applicability, d.Target = Applicable, TargetAgent
		}
	}
	return d
}

// DeliveryState is where a queued delivery stands.
type DeliveryState string

// The states. Acknowledged deliveries leave the queue; dead ones move aside.
const (
	StatePending      DeliveryState = "pending"
	StateInFlight     DeliveryState = "inflight"
	StateRetry        DeliveryState = "retry"
	StateAcknowledged DeliveryState = "acked"
	StateDead         DeliveryState = "dead"
)

// Outcome is what a delivery came to.
type Outcome string

// The outcomes of an agent's Ack or a push.
const (
	OutcomeApplied  Outcome = "applied"
	OutcomeConflict Outcome = "conflict"
	OutcomeError    Outcome = "error"
)

// Delivery is a queued revision handed to a target.
type Delivery struct {
	Position int64
	EntryID  string
	Revision int64
	// Attempt counts earlier deliveries of this queue item (0 the first time).
	Attempt int
	// Errors counts the agent's ERROR answers to this revision; Attempt minus Errors are the
	// deliveries it never answered (filled by NextDeliveries).
	Errors int
	// Rev is the revision's content, filled by the store when asked.
	Rev *Revision
	// RemoteID and RemoteVersion are what the target reported for the entry before.
	RemoteID, RemoteVersion string
}

// AckInput is a target's answer for one delivery.
type AckInput struct {
	Target        Target
	Session       string // the agent's session; empty for push
	Position      int64
	EntryID       string
	Revision      int64
	Outcome       Outcome
	RemoteID      string
	RemoteVersion string
	Message       string
	MaxAttempts   int
	// Attempts is the attempt this answer is for (1 for the first), for DeliveryFailed.
	Attempts int
	// Dead gives the delivery up at once (a permanent push failure).
	Dead bool
	// RetryAt is when an ERROR delivery is due again (push); zero re-queues it at once
	// (agent: with a new position).
	RetryAt time.Time
	Log     bool
	Now     time.Time
}

// AckResult says what an ack did.
type AckResult struct {
	// Stale: the position no longer holds this revision (superseded or acknowledged before).
	Stale bool
	// Replaced: the session is no longer the user's agent; nothing was written.
	Replaced bool
	// Dead: the delivery was given up.
	Dead bool
	// Requeued is the new position of a delivery to be made again (agent errors).
	Requeued int64
}

// Presence is the user's agent as the store remembers it.
type Presence struct {
	Session  string
	AgentID  string
	Since    time.Time
	LastSeen time.Time
}

// QueueStats count a user's deliveries.
type QueueStats struct {
	Pending       int64
	Dead          int64
	AckedPosition int64
	// Conflicts counts the user's entries with an open CalDAV conflict note.
	Conflicts int64
}

// LogLine is one line of a user's sync log.
type LogLine struct {
	ID       string
	Time     time.Time
	Action   string
	EntryID  string
	Revision int64
	Target   Target
	Position int64
	Detail   string
}

// SyncStatus is a user's status.
type SyncStatus struct {
	UserID        string
	Applicability Applicability
	Mode          SyncMode
	NoticePending bool
	Warnings      []Warning
	Agent         *Presence
	Online        bool
	Stats         QueueStats
}
