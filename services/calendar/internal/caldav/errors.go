package caldav

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// Outcome classes. Every error a Client returns for a request it attempted is an *Error that
// matches exactly one of them with errors.Is, so the delivery worker decides by class: retry
// later, merge, give up and tell the user, or fix the configuration.
var (
	// ErrConflict means a precondition failed: the object changed on the server since the
	// ETag we hold (412), or exists although we create it. The *Error carries the server's
	// current version in Current, for a merge; it may also be our own earlier write whose
	// answer was lost, which the caller can tell by comparing revisions.
	ErrConflict = errors.New("caldav: the object changed on the server")
	// ErrNotFound means the object does not exist (Get).
	ErrNotFound = errors.New("caldav: no such object")
	// ErrAuth means the server rejected the credentials or denied access (401, 403). It is
	// permanent until someone fixes the credentials; retrying only locks accounts.
	ErrAuth = errors.New("caldav: credentials rejected or access denied")
	// ErrUnavailable means the server could not be reached, timed out, or answered 5xx, 408
	// or 429. It is temporary: retry with backoff, honouring RetryAfter.
	ErrUnavailable = errors.New("caldav: server unavailable")
	// ErrRejected means the server refused the request for good (another 4xx, an unexpected
	// answer such as a 207 Multi-Status to a PUT); retrying the same request will not help.
	ErrRejected = errors.New("caldav: request rejected")
	// ErrTooLarge means an object or a response exceeds Config.MaxObjectSize.
	ErrTooLarge = errors.New("caldav: too large")
)

// Retryable reports whether err is worth retrying later (ErrUnavailable).
func Retryable(err error) bool { return errors.Is(err, ErrUnavailable) }

// Error describes a failed request. It never contains credentials or object data.
type Error struct {
	// Method is the HTTP method of the request that failed.
	Method string
	// URL is the request URL.
	URL string
	// StatusCode is the server's status, 0 when there was no answer.
	StatusCode int
	// RetryAfter is the server's Retry-After for ErrUnavailable answers, 0 when absent.
	RetryAfter time.Duration
	// Current is the server's version of the object for ErrConflict, nil when it could not
	// be read.
	Current *Object
	// Err is the underlying error (a transport error, a context error), if any.
	Err error

	class error
}

// Error says what failed and why, without response bodies.
func (e *Error) Error() string {
	msg := fmt.Sprintf("%v: %s %s", e.class, e.Method, e.URL)
	if e.StatusCode != 0 {
		msg += ": " + strconv.Itoa(e.StatusCode) + " " + http.StatusText(e.StatusCode)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is matches the error's class, one of the Err* values.
func (e *Error) Is(target error) bool { return target == e.class }

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// statusError classifies an answer that is not the success the caller expected.
func statusError(method, url string, resp *response) *Error {
	e := &Error{Method: method, URL: url, StatusCode: resp.status}
	switch s := resp.status; {
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		e.class = ErrAuth
	case s == http.StatusNotFound || s == http.StatusGone:
		e.class = ErrNotFound
	case s == http.StatusPreconditionFailed:
		e.class = ErrConflict
	case s == http.StatusRequestEntityTooLarge:
		e.class = ErrTooLarge
	case s == http.StatusRequestTimeout || s == http.StatusTooEarly || s == http.StatusTooManyRequests || s >= 500:
		e.class = ErrUnavailable
		e.RetryAfter = retryAfter(resp.header.Get("Retry-After"), time.Now())
	default:
		e.class = ErrRejected
	}
	return e
}

// retryAfter parses Retry-After as seconds or an HTTP date; 0 when absent or malformed. Seconds
// beyond what a Duration holds (292 years) are the longest Duration, not a product that wrapped
// around.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	s, err := strconv.ParseInt(v, 10, 64)
	switch {
	case err == nil && s >= 0 && s <= int64(math.MaxInt64/time.Second):
		return time.Duration(s) * time.Second
	case err == nil && s >= 0, errors.Is(err, strconv.ErrRange) && v[0] != '-':
		return math.MaxInt64
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
