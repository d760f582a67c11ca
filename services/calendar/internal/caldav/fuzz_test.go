package caldav_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/services/calendar/internal/caldav"
)

// answers is a CalDAV server made of fixed answers, one per method, that records the requests.
type answers struct {
	status   map[string]int
	etag     string // ETag header of every answer
	retry    string // Retry-After header of every answer
	body     []byte // body of GET and PROPFIND answers
	requests []*http.Request
}

func (a *answers) RoundTrip(r *http.Request) (*http.Response, error) {
	a.requests = append(a.requests, r)
	if len(a.requests) > 20 {
		return nil, errors.New("more than 20 requests for one call")
	}
	h := http.Header{}
	if a.etag != "" {
		h.Set("ETag", a.etag)
	}
	if a.retry != "" {
		h.Set("Retry-After", a.retry)
	}
	var body []byte
	if r.Method == http.MethodGet || r.Method == "PROPFIND" {
		body = a.body
	}
	return &http.Response{StatusCode: a.status[r.Method], Header: h, Body: io.NopCloser(bytes.NewReader(body)), Request: r}, nil
}

// statuses are the answers worth telling apart; a fuzzed byte picks one.
var statuses = []int{200, 201, 204, 207, 301, 304, 400, 401, 403, 404, 405, 408, 409, 410, 412, 413, 415, 425, 429, 500, 502, 503, 507, 599}

const multistatus = `<?xml version="1.0" encoding="utf-8"?>
<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">
  <d:response>
    <d:href>/alice/postamt/x.ics</d:href>
    <d:propstat>
      <d:prop>
        <d:getetag>"e-1"</d:getetag>
        <d:resourcetype><d:collection/><c:calendar/></d:resourcetype>
      </d:prop>
      <d:status>HTTP/1.1 200 OK</d:status>
    </d:propstat>
  </d:response>
</d:multistatus>`

// usableETag reports whether an ETag can be sent back in If-Match as it is: a header value
// without control characters or surrounding space (net/http refuses a request with CR or LF in
// a header; a server compares the value as it is).
func usableETag(e string) bool {
	return e == strings.TrimSpace(e) && !strings.ContainsFunc(e, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f })
}

// FuzzServerAnswers: whatever a CalDAV server answers (status per method, ETag and Retry-After
// headers, GET and PROPFIND bodies), each call of the client ends after a few requests without
// panicking, with an error of exactly one class (a retry delay never negative) or a result
// whose ETags (and a conflict's current version's) can be sent back in If-Match; and every
// conditional header the client sends is such a value.
func FuzzServerAnswers(f *testing.F) {
	f.Add(uint8(0), uint8(1), uint8(3), uint8(2), uint8(1), `"e-1"`, "", []byte("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"))
	f.Add(uint8(14), uint8(0), uint8(3), uint8(14), uint8(1), "", "", []byte(multistatus))
	f.Add(uint8(12), uint8(9), uint8(9), uint8(9), uint8(10), "", "", []byte(multistatus))
	f.Add(uint8(21), uint8(21), uint8(21), uint8(21), uint8(21), `W/"weak"`, "120", []byte(nil))
	f.Add(uint8(18), uint8(18), uint8(18), uint8(18), uint8(18), "", "Wed, 21 Oct 2015 07:28:00 GMT", []byte(nil))
	f.Add(uint8(19), uint8(19), uint8(19), uint8(19), uint8(19), "", "99999999999", []byte(nil))
	f.Add(uint8(14), uint8(0), uint8(3), uint8(14), uint8(1), "", "", []byte(strings.Replace(multistatus, `"e-1"`, "\n          \"e-1\"\n        ", 1)))
	f.Add(uint8(3), uint8(3), uint8(3), uint8(3), uint8(3), "", "", []byte("<d:multistatus xmlns:d=\"DAV:\"><d:response><d:propstat><d:prop><d:getetag>\"a\r\nX-Evil: 1\"</d:getetag></d:prop></d:propstat></d:response></d:multistatus>"))
	f.Fuzz(func(t *testing.T, put, get, propfind, del, mkcal uint8, etag, retry string, body []byte) {
		// Header values as net/http delivers them: no control characters, no surrounding space.
		if !usableETag(etag) || !usableETag(retry) {
			return
		}
		pick := func(b uint8) int { return statuses[int(b)%len(statuses)] }
		srv := &answers{
			status: map[string]int{http.MethodPut: pick(put), http.MethodGet: pick(get), "PROPFIND": pick(propfind),
				http.MethodDelete: pick(del), "MKCALENDAR": pick(mkcal)},
			etag: etag, retry: retry, body: body,
		}
		c, err := caldav.New(caldav.Config{
			CalendarURL: "https://dav.example/alice/postamt/", HTTPClient: &http.Client{Transport: srv},
			Credentials: func(context.Context) (caldav.Credentials, error) {
				return caldav.Credentials{Username: "alice", Password: "pw"}, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		check := func(call string, err error, etags ...string) {
			t.Helper()
			if len(srv.requests) > 20 {
				t.Fatalf("%s: more than 20 requests", call)
			}
			for _, r := range srv.requests {
				for _, h := range []string{"If-Match", "If-None-Match"} {
					if v := r.Header.Get(h); v != "" && !usableETag(v) {
						t.Fatalf("%s: %s %s sent %s %q", call, r.Method, r.URL, h, v)
					}
				}
			}
			srv.requests = nil
			if err != nil {
				var ce *caldav.Error
				if !errors.As(err, &ce) {
					t.Fatalf("%s: %v is not a *caldav.Error", call, err)
				}
				n := 0
				for _, class := range []error{caldav.ErrConflict, caldav.ErrNotFound, caldav.ErrAuth, caldav.ErrUnavailable, caldav.ErrRejected, caldav.ErrTooLarge} {
					if errors.Is(err, class) {
						n++
					}
				}
				if n != 1 {
					t.Fatalf("%s: %v matches %d classes", call, err, n)
				}
				if ce.RetryAfter < 0 {
					t.Fatalf("%s: retry after %v", call, ce.RetryAfter)
				}
				// A Retry-After in seconds is that long, or as long as a Duration holds.
				if s, perr := strconv.ParseInt(retry, 10, 64); perr == nil && s >= 0 && errors.Is(err, caldav.ErrUnavailable) && ce.StatusCode != 0 {
					want := time.Duration(math.MaxInt64)
					if s <= math.MaxInt64/int64(time.Second) {
						want = time.Duration(s) * time.Second
					}
					if ce.RetryAfter != want {
						t.Fatalf("%s: Retry-After %q is %v, want %v", call, retry, ce.RetryAfter, want)
					}
				}
				if ce.Current != nil {
					etags = append(etags, ce.Current.ETag)
				}
			}
			for _, e := range etags {
				if !usableETag(e) {
					t.Fatalf("%s: ETag %q cannot be sent in If-Match", call, e)
				}
			}
		}

		obj, err := c.Get(ctx, "x.ics")
		check("Get", err, obj.ETag)
		res, err := c.Create(ctx, "x.ics", []byte("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"))
		check("Create", err, res.ETag)
		res, err = c.Update(ctx, "x.ics", []byte("BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"), `"e-0"`)
		check("Update", err, res.ETag)
		check("Delete", c.Delete(ctx, "x.ics", `"e-0"`))
		check("EnsureCalendar", c.EnsureCalendar(ctx))
	})
}
