// Package caldav pushes calendar objects to a user's calendar on a CalDAV server (RFC 4791):
// the server-side push delivery mode, which reaches a lawyer's calendar while the lawyer is
// offline.
//
// Every write is conditional, so that nothing a user changed on the server is overwritten
// unseen: a create sends If-None-Match: *, an update and a delete send If-Match with the ETag
// of the version they replace. A 412 Precondition Failed becomes an ErrConflict that carries
// the server's current version for a merge. Outcomes are classified (ErrConflict, ErrAuth,
// ErrUnavailable, ErrRejected, ...) so the delivery worker knows whether to merge, retry with
// backoff, or stop.
//
// The client is written on net/http rather than github.com/emersion/go-webdav: its
// caldav.Client.PutCalendarObject sends no If-Match or If-None-Match (the source says "TODO:
// add support for If-None-Match and If-Match", in v0.6.0 and still on master in 2026), its
// generic RemoveAll sends a DELETE without If-Match, it has no MKCALENDAR, and its request
// helper accepts any 2xx, so a 207 Multi-Status reporting a failed precondition inside counts
// as success. Here only 200, 201 and 204 count as success for writes.
package caldav

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Credentials authenticate the client to the server with HTTP Basic authentication.
type Credentials struct {
	Username string // the calendar account, e.g. "alice"
	Password string // its password or app password; never logged
}

// CredentialsFunc returns the credentials for a request. It is called for every request, so
// that the service resolves a stored reference (a secret name) where it keeps secrets and a
// rotated password takes effect without rebuilding the client. Its error is returned wrapped,
// unclassified.
type CredentialsFunc func(ctx context.Context) (Credentials, error)

// Config configures a Client. Zero values of optional fields are the documented defaults.
type Config struct {
	// CalendarURL is the calendar collection, e.g. https://dav.example.com/alice/postamt/;
	// required, http or https, without user info (credentials come from Credentials).
	CalendarURL string
	// Credentials returns the credentials for each request; required.
	Credentials CredentialsFunc
	// DisplayName names the calendar when EnsureCalendar creates it; default "Postamt".
	DisplayName string
	// HTTPClient sends the requests; default a client with its own transport.
	HTTPClient *http.Client
	// RequestTimeout bounds each request, including reading the answer; default 30s.
	RequestTimeout time.Duration
	// MaxObjectSize bounds the objects written and every answer read, in bytes; default 1 MiB.
	MaxObjectSize int64
	// UserAgent is sent with every request; default "postamt-calendar".
	UserAgent string
}

// Object is a calendar object resource on the server.
type Object struct {
	// Name is the resource name in the calendar collection, e.g. "<uid>.ics".
	Name string
	// ETag is the entity tag of this version, quotes included, as the server sent it; empty
	// when the server sent none.
	ETag string
	// Data is the iCalendar text.
	Data []byte
}

// Result is what a successful write left on the server.
type Result struct {
	// ETag of the written version, for the next conditional write.
	ETag string
	// Recreated is true when Update found the object deleted on the server and created it
	// again.
	Recreated bool
}

// Client writes calendar objects into one calendar collection. It is safe for concurrent use.
type Client struct {
	base        *url.URL
	creds       CredentialsFunc
	displayName string
	http        *http.Client
	timeout     time.Duration
	maxSize     int64
	userAgent   string
}

// New returns a client for cfg.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.CalendarURL)
	switch {
	case err != nil:
		return nil, fmt.Errorf("caldav: CalendarURL: %w", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("caldav: CalendarURL %q: want an http or https URL", cfg.CalendarURL)
	case u.Host == "":
		return nil, fmt.Errorf("caldav: CalendarURL %q: no host", cfg.CalendarURL)
	case u.User != nil:
		return nil, errors.New("caldav: CalendarURL contains user info; pass credentials through Credentials")
	case cfg.Credentials == nil:
		return nil, errors.New("caldav: Credentials is required")
	case cfg.RequestTimeout < 0 || cfg.MaxObjectSize < 0:
		return nil, errors.New("caldav: RequestTimeout and MaxObjectSize must not be negative")
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	u.RawQuery, u.Fragment = "", ""
	c := &Client{
		base: u, creds: cfg.Credentials, displayName: cfg.DisplayName, http: cfg.HTTPClient,
		timeout: cfg.RequestTimeout, maxSize: cfg.MaxObjectSize, userAgent: cfg.UserAgent,
	}
	if c.displayName == "" {
		c.displayName = "Postamt"
	}
	if c.http == nil {
		c.http = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if c.timeout == 0 {
		c.timeout = 30 * time.Second
	}
	if c.maxSize == 0 {
		c.maxSize = 1 << 20
	}
	if c.userAgent == "" {
		c.userAgent = "postamt-calendar"
	}
	return c, nil
}

// ObjectName is the resource name for an event with uid: the UID itself plus ".ics" when it
// is made of URL-safe characters (as StableUID's are), else a hash of it, so that every
// revision of an event lands on the same resource.
func ObjectName(uid string) string {
	safe := uid != "" && len(uid) <= 200
	for i := 0; i < len(uid) && safe; i++ {
		ch := uid[i]
		safe = ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || strings.IndexByte("@._-", ch) >= 0
	}
	if safe && uid != "." && uid != ".." {
		return uid + ".ics"
	}
	sum := sha256.Sum256([]byte(uid))
	return hex.EncodeToString(sum[:16]) + ".ics"
}

// objectURL is the URL of the resource name in the collection.
func (c *Client) objectURL(name string) (string, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\") || len(name) > 255 {
		return "", fmt.Errorf("caldav: object name %q: want one path segment", name)
	}
	return c.base.JoinPath(name).String(), nil
}

// response is an answer read in full (up to MaxObjectSize).
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request with its own timeout and reads the whole answer. Transport failures
// and timeouts are ErrUnavailable; an answer over MaxObjectSize is ErrTooLarge.
func (c *Client) do(ctx context.Context, method, target string, header http.Header, body []byte) (*response, error) {
	creds, err := c.creds(ctx)
	if err != nil {
		return nil, fmt.Errorf("caldav: %s %s: credentials: %w", method, target, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, &Error{Method: method, URL: target, Err: err, class: ErrRejected}
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.SetBasicAuth(creds.Username, creds.Password)
	req.Header.Set("User-Agent", c.userAgent)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &Error{Method: method, URL: target, Err: err, class: ErrUnavailable}
	}
	defer resp.Body.Close() //nolint:errcheck // closing a body read to its end (or limit): no error to act on
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.maxSize+1))
	if err != nil {
		return nil, &Error{Method: method, URL: target, StatusCode: resp.StatusCode, Err: err, class: ErrUnavailable}
	}
	if int64(len(data)) > c.maxSize {
		return nil, &Error{Method: method, URL: target, StatusCode: resp.StatusCode,
			Err: fmt.Errorf("answer over %d bytes", c.maxSize), class: ErrTooLarge}
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: data}, nil
}

// written reports whether status is a successful write. A 207 Multi-Status is not: it
// reports per-resource results, which for a single object means something went wrong.
func written(status int) bool {
	return status == http.StatusOK || status == http.StatusCreated || status == http.StatusNoContent
}

// Get reads the current version of the object name; ErrNotFound when there is none.
func (c *Client) Get(ctx context.Context, name string) (Object, error) {
	target, err := c.objectURL(name)
	if err != nil {
		return Object{}, err
	}
	resp, err := c.do(ctx, http.MethodGet, target, http.Header{"Accept": {"text/calendar"}}, nil)
	if err != nil {
		return Object{}, err
	}
	if resp.status != http.StatusOK {
		return Object{}, statusError(http.MethodGet, target, resp)
	}
	obj := Object{Name: name, ETag: resp.header.Get("ETag"), Data: resp.body}
	if obj.ETag == "" {
		if obj.ETag, err = c.propETag(ctx, target); err != nil {
			return Object{}, err
		}
	}
	return obj, nil
}

// Create stores a new object name with If-None-Match: *, so an existing object is never
// overwritten. If the calendar is missing it is created and the write repeated once. If an
// object already exists the result is an ErrConflict carrying it; this is also what a retry of
// a create whose answer was lost sees, so compare revisions before merging.
func (c *Client) Create(ctx context.Context, name string, data []byte) (Result, error) {
	return c.create(ctx, name, data, true)
}

// create is Create; again allows one repetition, after creating a missing calendar or when the
// existing object vanished before it could be read.
func (c *Client) create(ctx context.Context, name string, data []byte, again bool) (Result, error) {
	target, err := c.put(name, data)
	if err != nil {
		return Result{}, err
	}
	resp, err := c.do(ctx, http.MethodPut, target, http.Header{
		"Content-Type":  {"text/calendar; charset=utf-8"},
		"If-None-Match": {"*"},
	}, data)
	if err != nil {
		return Result{}, err
	}
	switch {
	case written(resp.status):
		etag, err := c.etagAfterWrite(ctx, name, target, resp)
		return Result{ETag: etag}, err
	case resp.status == http.StatusConflict && again:
		// RFC 4791 §5.3.2: 409 when the collection is missing.
		if err := c.EnsureCalendar(ctx); err != nil {
			return Result{}, err
		}
		return c.create(ctx, name, data, false)
	case resp.status == http.StatusPreconditionFailed:
		err := c.conflict(ctx, http.MethodPut, target, name, resp)
		if errors.Is(err, ErrNotFound) && again { // deleted between our PUT and GET
			return c.create(ctx, name, data, false)
		}
		return Result{}, err
	default:
		return Result{}, statusError(http.MethodPut, target, resp)
	}
}

// Update replaces the version of object name whose ETag is etag, with If-Match. When the
// object changed on the server it returns an ErrConflict carrying the current version; when
// it was deleted there (404, or 412 with nothing left to read) it creates it again and reports
// Recreated, because an entry we deliver must not vanish by a deletion in the calendar.
func (c *Client) Update(ctx context.Context, name string, data []byte, etag string) (Result, error) {
	if etag == "" {
		return Result{}, errors.New("caldav: Update needs the ETag of the version it replaces (Get it first)")
	}
	target, err := c.put(name, data)
	if err != nil {
		return Result{}, err
	}
	resp, err := c.do(ctx, http.MethodPut, target, http.Header{
		"Content-Type": {"text/calendar; charset=utf-8"},
		"If-Match":     {etag},
	}, data)
	if err != nil {
		return Result{}, err
	}
	switch {
	case written(resp.status):
		etag, err := c.etagAfterWrite(ctx, name, target, resp)
		return Result{ETag: etag}, err
	case resp.status == http.StatusNotFound || resp.status == http.StatusGone || resp.status == http.StatusConflict:
		return c.recreate(ctx, name, data)
	case resp.status == http.StatusPreconditionFailed:
		err := c.conflict(ctx, http.MethodPut, target, name, resp)
		if errors.Is(err, ErrNotFound) { // If-Match on a deleted object fails with 412 (RFC 9110 §13.1.1)
			return c.recreate(ctx, name, data)
		}
		return Result{}, err
	default:
		return Result{}, statusError(http.MethodPut, target, resp)
	}
}

func (c *Client) recreate(ctx context.Context, name string, data []byte) (Result, error) {
	res, err := c.create(ctx, name, data, true)
	res.Recreated = err == nil
	return res, err
}

// put checks a write and returns its URL.
func (c *Client) put(name string, data []byte) (string, error) {
	target, err := c.objectURL(name)
	if err != nil {
		return "", err
	}
	if int64(len(data)) > c.maxSize {
		return "", &Error{Method: http.MethodPut, URL: target, Err: fmt.Errorf("object of %d bytes over %d", len(data), c.maxSize), class: ErrTooLarge}
	}
	return target, nil
}

// Delete removes the version of object name whose ETag is etag, with If-Match. An object that
// is already gone counts as deleted; one that changed on the server is an ErrConflict carrying
// the current version, since the user may have edited it.
func (c *Client) Delete(ctx context.Context, name, etag string) error {
	if etag == "" {
		return errors.New("caldav: Delete needs the ETag of the version it removes (Get it first)")
	}
	target, err := c.objectURL(name)
	if err != nil {
		return err
	}
	resp, err := c.do(ctx, http.MethodDelete, target, http.Header{"If-Match": {etag}}, nil)
	if err != nil {
		return err
	}
	switch {
	case written(resp.status), resp.status == http.StatusNotFound, resp.status == http.StatusGone:
		return nil
	case resp.status == http.StatusPreconditionFailed:
		err := c.conflict(ctx, http.MethodDelete, target, name, resp)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	default:
		return statusError(http.MethodDelete, target, resp)
	}
}

// conflict turns a 412 into an ErrConflict carrying the server's current version, or returns
// ErrNotFound when there is none (the precondition failed because the object is gone).
func (c *Client) conflict(ctx context.Context, method, target, name string, resp *response) error {
	e := statusError(method, target, resp)
	cur, err := c.Get(ctx, name)
	switch {
	case errors.Is(err, ErrNotFound):
		return err
	case err != nil:
		e.Err = fmt.Errorf("reading the current version: %w", err)
	default:
		e.Current = &cur
	}
	return e
}

// etagAfterWrite is the ETag of what we just wrote: from the answer, or else read back. A
// read-back can in principle see a later write by someone else; the next conditional write
// would then fail with a conflict, which is safe.
func (c *Client) etagAfterWrite(ctx context.Context, name, target string, resp *response) (string, error) {
	if etag := resp.header.Get("ETag"); etag != "" && !strings.HasPrefix(etag, "W/") {
		return etag, nil // a weak ETag cannot be used in If-Match (RFC 9110 §13.1.1)
	}
	obj, err := c.Get(ctx, name)
	if err != nil {
		return "", fmt.Errorf("caldav: written, but reading back its ETag failed: %w", err)
	}
	return obj.ETag, nil
}
