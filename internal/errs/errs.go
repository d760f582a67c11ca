// Package errs holds the suite's domain errors. Domain packages return them; the gRPC edge turns
// them into a status with the precise code and details exactly once (see ToStatus), so handlers
// never choose codes and callers never parse messages.
package errs

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Kind classifies an error by what the caller should do about it; each kind maps to one gRPC code.
type Kind int

// The kinds, each with the gRPC code the edge gives it.
const (
	// KindInternal is a bug: Internal, with no detail leaked. A dependency that is down is not a
	// bug: the edge makes it Unavailable (ToStatusContext, Outage).
	KindInternal Kind = iota
	// KindInvalid is bad input the caller must fix: InvalidArgument with BadRequest field violations.
	KindInvalid
	// KindNotFound is an unknown id, or an id of another tenant: NotFound with ResourceInfo.
	KindNotFound
	// KindAlreadyExists is a duplicate create: AlreadyExists with ResourceInfo.
	KindAlreadyExists
	// KindPermissionDenied is an authenticated caller without the right: PermissionDenied with ErrorInfo.
	KindPermissionDenied
	// KindFailedPrecondition is a request that is valid but not in the current state: FailedPrecondition
	// with a PreconditionFailure.
	KindFailedPrecondition
	// KindAborted is a lost race (a version or lease changed under the caller): Aborted; retry the
	// read-modify-write.
	KindAborted
	// KindResourceExhausted is a limit or quota hit: ResourceExhausted with a QuotaFailure.
	KindResourceExhausted
	// KindUnavailable is a dependency that is down for now: Unavailable with RetryInfo (the edge
	// also gives it to the dependency errors it recognises, see Outage).
	KindUnavailable
	// KindUnauthenticated is a missing or bad credential: Unauthenticated.
	KindUnauthenticated
)

// String names the kind for logs.
func (k Kind) String() string {
	switch k {
	case KindInvalid:
		return "invalid"
	case KindNotFound:
		return "not_found"
	case KindAlreadyExists:
		return "already_exists"
	case KindPermissionDenied:
		return "permission_denied"
	case KindFailedPrecondition:
		return "failed_precondition"
	case KindAborted:
		return "aborted"
	case KindResourceExhausted:
		return "resource_exhausted"
	case KindUnavailable:
		return "unavailable"
	case KindUnauthenticated:
		return "unauthenticated"
	default:
		return "internal"
	}
}

// FieldViolation names one bad request field in the request's own field path (e.g. "to[2]"), so a
// UI can put the message next to the input.
type FieldViolation struct {
	Field       string
	Description string
}

// Error is a classified domain error. Its fields feed the gRPC status details; Msg is safe to show
// to the caller, Cause is only for logs.
type Error struct {
	Kind Kind
	// Msg is the caller-facing message.
	Msg string
	// Resource and ID name the entity for NotFound and AlreadyExists.
	Resource string
	ID       string
	// Reason is a stable UPPER_SNAKE machine-readable reason (ErrorInfo / PreconditionFailure type).
	Reason string
	// Violations are the bad fields of an invalid request.
	Violations []FieldViolation
	// RetryAfter tells an Unavailable or ResourceExhausted caller when to try again.
	RetryAfter time.Duration
	// Cause is the underlying error, kept for errors.Is/As and logs; never sent to the caller.
	Cause error
}

// Error renders the message with its cause for logs.
func (e *Error) Error() string {
	if e.Cause != nil {
		return e.Msg + ": " + e.Cause.Error()
	}
	return e.Msg
}

// Unwrap exposes the cause to errors.Is and errors.As.
func (e *Error) Unwrap() error { return e.Cause }

// Is lets errors.Is(err, errs.ErrNotFound) and the other kind sentinels match any error of that kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Msg == "" && t.Resource == "" && t.Kind == e.Kind
}

// Sentinels for errors.Is: they match every *Error of their kind.
var (
	ErrInvalid            = &Error{Kind: KindInvalid}
	ErrNotFound           = &Error{Kind: KindNotFound}
	ErrAlreadyExists      = &Error{Kind: KindAlreadyExists}
	ErrPermissionDenied   = &Error{Kind: KindPermissionDenied}
	ErrFailedPrecondition = &Error{Kind: KindFailedPrecondition}
	ErrAborted            = &Error{Kind: KindAborted}
	ErrResourceExhausted  = &Error{Kind: KindResourceExhausted}
	ErrUnavailable        = &Error{Kind: KindUnavailable}
	ErrUnauthenticated    = &Error{Kind: KindUnauthenticated}
)

// KindOf reports the kind of err; errors that are not *Error are internal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// maxEchoRunes bounds what of a caller's value an error message repeats.
const maxEchoRunes = 64

// Quote renders a value the caller sent for an error message: quoted with Go escapes (so CR, LF
// and other control characters appear as \r, \n, never raw in a header, a log line or a UI) and
// cut to 64 characters with a marker, so a 5,000-character id is not sent back. Every message
// that echoes a caller's value goes through it; the constructors below do.
func Quote(s string) string {
	if utf8.RuneCountInString(s) <= maxEchoRunes {
		return strconv.Quote(s)
	}
	r := []rune(s)
	return strconv.Quote(string(r[:maxEchoRunes])) + fmt.Sprintf("… (%d characters)", len(r))
}

// truncate cuts s to the length Quote shows, for the ResourceInfo detail.
func truncate(s string) string {
	if utf8.RuneCountInString(s) <= maxEchoRunes {
		return s
	}
	return string([]rune(s)[:maxEchoRunes])
}

// NotFound says that resource id does not exist for the caller. Use it for ids of other tenants too:
// their existence is never revealed.
func NotFound(resource, id string) error {
	return &Error{Kind: KindNotFound, Resource: resource, ID: truncate(id), Msg: resource + " " + Quote(id) + " not found"}
}

// AlreadyExists says that a create collided with an existing resource id.
func AlreadyExists(resource, id string) error {
	return &Error{Kind: KindAlreadyExists, Resource: resource, ID: truncate(id), Msg: resource + " " + Quote(id) + " already exists"}
}

// PermissionDenied says the caller lacks a right; reason is a stable machine-readable code.
func PermissionDenied(reason, msg string) error {
	return &Error{Kind: KindPermissionDenied, Reason: reason, Msg: msg}
}

// FailedPrecondition says the request does not fit the current state; reason is a stable code.
func FailedPrecondition(reason, msg string) error {
	return &Error{Kind: KindFailedPrecondition, Reason: reason, Msg: msg}
}

// Aborted says a concurrent change won; the caller may re-read and retry.
func Aborted(reason, msg string) error {
	return &Error{Kind: KindAborted, Reason: reason, Msg: msg}
}

// ResourceExhausted says a limit was hit; retryAfter is zero when waiting will not help.
func ResourceExhausted(reason, msg string, retryAfter time.Duration) error {
	return &Error{Kind: KindResourceExhausted, Reason: reason, Msg: msg, RetryAfter: retryAfter}
}

// Unavailable says a dependency is down for now; cause goes to logs only. retryAfter zero means
// OutageRetryAfter.
func Unavailable(msg string, retryAfter time.Duration, cause error) error {
	return &Error{Kind: KindUnavailable, Msg: msg, RetryAfter: retryAfter, Cause: cause}
}

// Unauthenticated says the credential is missing or bad; msg must not say which check failed in a
// way that helps an attacker beyond "expired" or "invalid".
func Unauthenticated(msg string, cause error) error {
	return &Error{Kind: KindUnauthenticated, Msg: msg, Cause: cause}
}

// Violations collects the bad fields of one request so the caller learns of all of them at once.
type Violations []FieldViolation

// Add records that field is bad, with a description the caller can show.
func (v *Violations) Add(field, description string) {
	*v = append(*v, FieldViolation{Field: field, Description: description})
}

// Addf is Add with a formatted description.
func (v *Violations) Addf(field, format string, args ...any) {
	v.Add(field, fmt.Sprintf(format, args...))
}

// Err returns nil when nothing was added, else an InvalidArgument error listing every violation.
func (v Violations) Err() error {
	if len(v) == 0 {
		return nil
	}
	fields := make([]string, len(v))
	for i, f := range v {
		fields[i] = f.Field
	}
	return &Error{
		Kind:       KindInvalid,
		Msg:        "invalid request: " + strings.Join(fields, ", "),
		Violations: append([]FieldViolation(nil), v...),
	}
}

// Invalid is a single-field InvalidArgument error.
func Invalid(field, description string) error {
	var v Violations
	v.Add(field, description)
	return v.Err()
}

// LineRule is what Line asks of a value, as a field violation says it.
const LineRule = "must be one line of text: no CR, LF, NUL or other control character (a tab is allowed)"

// Line records a violation of field unless s is one line of text that can go into a mail header,
// an iCalendar property, a Redis key or a line-oriented protocol (SMTP, a log line) as it is:
// valid UTF-8, at most max characters, and no CR, LF, NUL or other control character (C0, DEL,
// C1; a tab is allowed, as header folding leaves it) and no Unicode line or paragraph separator.
// It is the suite's one rule for such fields — subjects, display names, Message-IDs, idempotency
// keys, file names, host and user names — so every service refuses the same bytes the same way
// (InvalidArgument naming the field). An empty s passes: whether the field is required is the
// caller's rule. It reports whether s passed.
func (v *Violations) Line(field, s string, max int) bool {
	switch {
	case !utf8.ValidString(s):
		v.Add(field, "must be valid UTF-8")
	case strings.ContainsFunc(s, notInLine):
		v.Add(field, LineRule)
	case utf8.RuneCountInString(s) > max:
		v.Addf(field, "must be at most %d characters", max)
	default:
		return true
	}
	return false
}

// Lines is Line for a list a caller sends: at most maxCount values (a violation of field), each
// a Line of at most maxLen characters, named field[i]. It reports whether the list passed.
func (v *Violations) Lines(field string, list []string, maxCount, maxLen int) bool {
	if len(list) > maxCount {
		v.Addf(field, "must hold at most %d values", maxCount)
		return false
	}
	ok := true
	for i, s := range list {
		ok = v.Line(field+"["+strconv.Itoa(i)+"]", s, maxLen) && ok
	}
	return ok
}

// notInLine is what Line refuses: control characters but the tab, and the Unicode line and
// paragraph separators (which some readers break lines at).
func notInLine(r rune) bool {
	return (unicode.IsControl(r) && r != '\t') || r == '\u2028' || r == '\u2029'
}
