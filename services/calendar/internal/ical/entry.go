// Package ical turns one revision of a calendar entry — an appointment, a deadline or a
// preliminary deadline — into the iCalendar object (RFC 5545) that a calendar server stores and
// a live agent applies, and checks entries before they are accepted.
//
// Every revision of an entry is encoded with the same UID and a SEQUENCE that grows, so a
// client that receives an update or a cancellation replaces the event it has instead of adding
// a second one. Appointments are timed, with an IANA TZID and a VTIMEZONE that describes it;
// deadlines and preliminary deadlines are all-day (DTSTART;VALUE=DATE) and are marked done,
// never deleted.
//
// The encoding itself is github.com/emersion/go-ical (properties sorted by name, CRLF line
// ends, TEXT escaping); this package adds what it lacks: VTIMEZONE generation, line folding at
// 75 octets, RRULE checks beyond github.com/teambition/rrule-go's parser, and Windows zone names.
package ical

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kind says what an entry is; it decides between a timed and an all-day event and how the
// entry is labelled in the user's calendar.
type Kind int

const (
	// KindUnspecified is the zero value and is rejected, so a forgotten kind never becomes an
	// appointment by accident.
	KindUnspecified Kind = iota
	// Appointment is a timed event in a time zone (a meeting, a court hearing).
	Appointment
	// Deadline (Frist) is an all-day entry that is marked done, never deleted.
	Deadline
	// PreliminaryDeadline (Vorfrist) is an all-day reminder ahead of a deadline, linked to it.
	PreliminaryDeadline
)

// String names the kind as it appears in X-POSTAMT-KIND.
func (k Kind) String() string {
	switch k {
	case Appointment:
		return "APPOINTMENT"
	case Deadline:
		return "DEADLINE"
	case PreliminaryDeadline:
		return "PRELIMINARY-DEADLINE"
	default:
		return fmt.Sprintf("Kind(%d)", int(k))
	}
}

// AllDay reports whether entries of this kind are all-day events (DTSTART;VALUE=DATE).
func (k Kind) AllDay() bool { return k == Deadline || k == PreliminaryDeadline }

// Date is a calendar day without a time or a zone, because a deadline on 15 March is due on
// 15 March wherever its reader is.
type Date struct {
	Year  int        // 1..9999
	Month time.Month // 1..12
	Day   int        // 1..31, as the month has
}

// DateOf is the calendar day of t in t's location.
func DateOf(t time.Time) Date {
	y, m, d := t.Date()
	return Date{Year: y, Month: m, Day: d}
}

// IsZero reports whether d is unset.
func (d Date) IsZero() bool { return d == Date{} }

// String formats d as YYYY-MM-DD.
func (d Date) String() string { return fmt.Sprintf("%04d-%02d-%02d", d.Year, int(d.Month), d.Day) }

// Valid reports whether d names a real day in years 1..9999 (no 31 February).
func (d Date) Valid() bool {
	return d.Year >= 1 && d.Year <= 9999 && DateOf(d.midnight()) == d
}

// AddDays is the day n days after d (before, for negative n).
func (d Date) AddDays(n int) Date { return DateOf(d.midnight().AddDate(0, 0, n)) }

// midnight is the start of d in UTC, the form the iCalendar DATE helpers take.
func (d Date) midnight() time.Time { return time.Date(d.Year, d.Month, d.Day, 0, 0, 0, 0, time.UTC) }

// RelType is how a related entry stands to this one (RFC 5545 RELTYPE).
type RelType string

const (
	// RelParent points from a preliminary deadline to the deadline it precedes.
	RelParent RelType = "PARENT"
	// RelChild points from a deadline to one of its preliminary deadlines.
	RelChild RelType = "CHILD"
	// RelSibling links entries of equal rank.
	RelSibling RelType = "SIBLING"
)

// Relation links an entry to another by the other's UID (RELATED-TO), so that a deadline and
// its preliminary deadlines stay linked in the user's calendar.
type Relation struct {
	UID  string  // the other entry's UID
	Type RelType // what the other entry is to this one
}

// Entry is one revision of a calendar entry, everything needed to encode it. Which fields
// apply depends on Kind: appointments use Start, End, TimeZone and ExceptStarts; all-day kinds
// use Day, ExceptDays and Done.
type Entry struct {
	// UID identifies the entry across all its revisions; see StableUID.
	UID string
	// Sequence is the iCalendar SEQUENCE: 0 for the first revision, one more for each
	// revision after, so clients keep the newest.
	Sequence int
	// Stamp is when this revision was made (DTSTAMP and LAST-MODIFIED, written in UTC). It is
	// passed in rather than read from a clock so that encoding is deterministic.
	Stamp time.Time
	// Kind is what the entry is; required.
	Kind Kind

	// Summary is the title; required.
	Summary string
	// Description is the optional body text.
	Description string
	// Location is where the appointment takes place, optional.
	Location string

	// Start and End bound an appointment. They are instants; TimeZone says in which zone
	// they are written (and in which zone a recurrence keeps its wall-clock time).
	Start, End time.Time
	// TimeZone is an IANA name ("Europe/Vienna") or a Windows name ("W. Europe Standard Time"),
	// required for appointments; see Zones.
	TimeZone string

	// Day is the day of a deadline or preliminary deadline.
	Day Date
	// Done marks a deadline or preliminary deadline as dealt with. Done entries stay in the
	// calendar (CATEGORIES "Done", X-POSTAMT-DONE), because a deadline must never vanish.
	Done bool

	// RRule is an optional recurrence rule, e.g. "FREQ=WEEKLY;BYDAY=MO;COUNT=10"; see
	// ValidateRRule for what is accepted.
	RRule string
	// ExceptStarts are the starts of appointment occurrences that do not take place (EXDATE).
	ExceptStarts []time.Time
	// ExceptDays are the days of all-day occurrences that do not take place (EXDATE).
	ExceptDays []Date

	// Cancelled writes STATUS:CANCELLED, for clients that keep cancelled events visible.
	Cancelled bool
	// Related links this entry to others, e.g. a preliminary deadline to its deadline.
	Related []Relation
}

// Limits on text fields, in bytes. Calendar clients truncate or choke on very long values; the
// limits are generous for a title, a room and a note.
const (
	maxUIDLen         = 255
	maxSummaryLen     = 1024
	maxLocationLen    = 1024
	maxDescriptionLen = 32 << 10
	maxExceptions     = 1000
	maxRelations      = 100
)

// uidSuffix marks UIDs made by StableUID as ours.
const uidSuffix = "@postamt"

// StableUID derives the UID of an entry from its tenant and id, so every revision — and a
// re-created object after it was deleted on the server — carries the same UID, and entries of
// different tenants never collide. The tenant and id are hashed, so neither is revealed to
// the calendar.
func StableUID(tenant, entryID string) string {
	sum := sha256.Sum256([]byte(tenant + "\x00" + entryID))
	return hex.EncodeToString(sum[:16]) + uidSuffix
}

// Validation errors. A *FieldError wraps one of them; errors.Is finds them through a
// ValidationError too.
var (
	// ErrRequired says a required field is empty.
	ErrRequired = errors.New("is required")
	// ErrInvalid says a field's value is malformed or out of range.
	ErrInvalid = errors.New("is invalid")
	// ErrTooLong says a field exceeds its size limit.
	ErrTooLong = errors.New("is too long")
	// ErrEndBeforeStart says an appointment ends before it starts.
	ErrEndBeforeStart = errors.New("end is before start")
	// ErrNotForKind says a field is set that does not apply to the entry's kind (a time zone
	// on a deadline, Done on an appointment), which usually means a caller mixed up kinds.
	ErrNotForKind = errors.New("does not apply to this kind of entry")
	// ErrUnknownTimeZone says a time zone name is neither an IANA zone nor a mapped Windows
	// zone; the error is an *UnknownZoneError.
	ErrUnknownTimeZone = errors.New("unknown time zone")
	// ErrInvalidRRule says a recurrence rule is malformed or not supported.
	ErrInvalidRRule = errors.New("invalid recurrence rule")
)

// FieldError says which field of an Entry is invalid and why, so the gRPC edge can return a
// BadRequest field violation. Field uses the snake_case names of the API.
type FieldError struct {
	Field string // snake_case field name, e.g. "time_zone"
	Err   error  // the reason, matching one of the Err* values
}

// Error reports the field and the reason.
func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap returns the reason, one of the Err* values or an error wrapping one.
func (e *FieldError) Unwrap() error { return e.Err }

// ValidationError lists every invalid field of an entry, so a caller learns all of them in one
// round trip.
type ValidationError struct {
	Fields []*FieldError // in the order they were checked
}

// Error joins the field errors.
func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Fields))
	for i, f := range e.Fields {
		msgs[i] = f.Error()
	}
	return "invalid entry: " + strings.Join(msgs, "; ")
}

// Unwrap returns the field errors, so errors.Is and errors.As look into each.
func (e *ValidationError) Unwrap() []error {
	errs := make([]error, len(e.Fields))
	for i, f := range e.Fields {
		errs[i] = f
	}
	return errs
}
