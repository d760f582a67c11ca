package caldav_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/radicaletest"
	"github.com/postamt/postamt/services/calendar/internal/caldav"
	"github.com/postamt/postamt/services/calendar/internal/ical"
)

const (
	user     = "alice"
	password = "alice-secret"
)

// startRadicale runs a Radicale with the users alice and bob.
func startRadicale(t *testing.T) *radicaletest.Server {
	t.Helper()
	return radicaletest.Start(t, radicaletest.WithUser(user, password), radicaletest.WithUser("bob", "bob-secret"))
}

func static(username, pw string) caldav.CredentialsFunc {
	return func(context.Context) (caldav.Credentials, error) {
		return caldav.Credentials{Username: username, Password: pw}, nil
	}
}

func newClient(t *testing.T, cfg caldav.Config) *caldav.Client {
	t.Helper()
	if cfg.Credentials == nil {
		cfg.Credentials = static(user, password)
	}
	c, err := caldav.New(cfg)
	if err != nil {
		t.Fatalf("caldav.New: %v", err)
	}
	return c
}

// entry is a calendar object as the service builds it: revision seq of the deadline uid.
func entry(t *testing.T, uid string, seq int, summary string) []byte {
	t.Helper()
	b, err := ical.NewBuilder(ical.Config{})
	if err != nil {
		t.Fatal(err)
	}
	data, err := b.Build(ical.Entry{
		UID: uid, Sequence: seq, Stamp: time.Date(2026, 2, 20, 8, 0, seq, 0, time.UTC),
		Kind: ical.Deadline, Summary: summary, Day: ical.Date{Year: 2026, Month: time.March, Day: 31},
	})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// appointment is a timed entry in Vienna, with its VTIMEZONE, so the server parses one.
func appointment(t *testing.T, uid string) []byte {
	t.Helper()
	b, err := ical.NewBuilder(ical.Config{})
	if err != nil {
		t.Fatal(err)
	}
	vienna, _ := time.LoadLocation("Europe/Vienna")
	data, err := b.Build(ical.Entry{
		UID: uid, Stamp: time.Date(2026, 2, 20, 8, 0, 0, 0, time.UTC), Kind: ical.Appointment, Summary: "Tagsatzung",
		Start: time.Date(2026, 3, 10, 9, 0, 0, 0, vienna), End: time.Date(2026, 3, 10, 10, 0, 0, 0, vienna),
		TimeZone: "W. Europe Standard Time", RRule: "FREQ=WEEKLY;COUNT=3",
		ExceptStarts: []time.Time{time.Date(2026, 3, 17, 9, 0, 0, 0, vienna)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// behindOurBack sends a request as another client of the same user would (a phone, Outlook).
func behindOurBack(t *testing.T, method, target string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(method, target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, password)
	req.Header.Set("Content-Type", "text/calendar")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s behind our back: %s", method, target, resp.Status)
	}
}

func inspect(t *testing.T, data []byte) ical.Info {
	t.Helper()
	info, err := ical.Inspect(data)
	if err != nil {
		t.Fatalf("Inspect: %v\n%s", err, data)
	}
	return info
}

func TestPushLifecycle(t *testing.T) {
	ctx := context.Background()
	srv := startRadicale(t)
	c := newClient(t, caldav.Config{CalendarURL: srv.CalendarURL(user, "postamt")})
	uid := ical.StableUID("tenant-a", "frist-1")
	name := caldav.ObjectName(uid)

	// The calendar does not exist yet: Create makes it on the server's 409.
	created, err := c.Create(ctx, name, entry(t, uid, 0, "Frist"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if created.ETag == "" || created.Recreated {
		t.Fatalf("Create = %+v, want an ETag", created)
	}
	got, err := c.Get(ctx, name)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got.ETag != created.ETag {
		t.Errorf("Get ETag = %s, want the one Create returned %s", got.ETag, created.ETag)
	}
	if info := inspect(t, got.Data); info.UID != uid || info.Sequence != 0 {
		t.Errorf("stored %+v, want UID %s SEQUENCE 0", info, uid)
	}

	updated, err := c.Update(ctx, name, entry(t, uid, 1, "Frist (verlängert)"), created.ETag)
	if err != nil {
		t.Fatalf("Update with the ETag: %v", err)
	}
	if updated.ETag == "" || updated.ETag == created.ETag || updated.Recreated {
		t.Errorf("Update = %+v, want a new ETag (old %s)", updated, created.ETag)
	}
	got, err = c.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if info := inspect(t, got.Data); info.Sequence != 1 || info.Summary != "Frist (verlängert)" {
		t.Errorf("after Update the server has %+v, want SEQUENCE 1", info)
	}

	if err := c.Delete(ctx, name, updated.ETag); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := c.Get(ctx, name); !errors.Is(err, caldav.ErrNotFound) {
		t.Errorf("Get after Delete = %v, want ErrNotFound", err)
	}
	if err := c.Delete(ctx, name, updated.ETag); err != nil {
		t.Errorf("Delete again = %v, want nil (already gone)", err)
	}

	// A timed appointment with VTIMEZONE, RRULE and EXDATE is accepted by the server's parser.
	appt := caldav.ObjectName("appt@example.org")
	if _, err := c.Create(ctx, appt, appointment(t, "appt@example.org")); err != nil {
		t.Fatalf("Create appointment: %v", err)
	}
}

func TestEnsureCalendar(t *testing.T) {
	ctx := context.Background()
	srv := startRadicale(t)
	cal := srv.CalendarURL(user, "fresh")
	c := newClient(t, caldav.Config{CalendarURL: strings.TrimSuffix(cal, "/"), DisplayName: "Kanzlei & Fristen"})
	for i := range 2 { // creates, then finds it
		if err := c.EnsureCalendar(ctx); err != nil {
			t.Fatalf("EnsureCalendar #%d: %v", i+1, err)
		}
	}
	req, _ := http.NewRequest("PROPFIND", cal, strings.NewReader(`<propfind xmlns="DAV:"><prop><displayname/><resourcetype/></prop></propfind>`))
	req.SetBasicAuth(user, password)
	req.Header.Set("Depth", "0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"Kanzlei &amp; Fristen", "calendar"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("PROPFIND of the new calendar lacks %q:\n%s", want, body)
		}
	}

	t.Run("a collection that is not a calendar", func(t *testing.T) {
		principal := srv.URL() + user + "/" // the user's home collection
		err := newClient(t, caldav.Config{CalendarURL: principal}).EnsureCalendar(ctx)
		if !errors.Is(err, caldav.ErrRejected) {
			t.Errorf("EnsureCalendar on %s = %v, want ErrRejected", principal, err)
		}
	})
}

func TestConflict(t *testing.T) {
	ctx := context.Background()
	srv := startRadicale(t)
	cal := srv.CalendarURL(user, "conflicts")
	c := newClient(t, caldav.Config{CalendarURL: cal})
	uid := "deadline-7@example.org"
	name := caldav.ObjectName(uid)
	ours := entry(t, uid, 0, "Frist")
	first, err := c.Create(ctx, name, ours)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("create of an existing object returns it", func(t *testing.T) {
		// What a retry sees when the answer to the first create was lost.
		_, err := c.Create(ctx, name, ours)
		var ce *caldav.Error
		if !errors.Is(err, caldav.ErrConflict) || !errors.As(err, &ce) || ce.Current == nil {
			t.Fatalf("Create again = %v, want ErrConflict with the current object", err)
		}
		if !inspect(t, ce.Current.Data).SameRevision(inspect(t, ours)) {
			t.Errorf("current object is not our revision: %+v", inspect(t, ce.Current.Data))
		}
		if ce.Current.ETag != first.ETag {
			t.Errorf("current ETag = %s, want %s", ce.Current.ETag, first.ETag)
		}
	})

	// The user edits the event on the server.
	behindOurBack(t, http.MethodPut, cal+name, entry(t, uid, 0, "Frist — vom Anwalt geändert"))

	t.Run("update with a stale ETag is a conflict with the current version", func(t *testing.T) {
		_, err := c.Update(ctx, name, entry(t, uid, 1, "Frist, neue Revision"), first.ETag)
		var ce *caldav.Error
		if !errors.Is(err, caldav.ErrConflict) || !errors.As(err, &ce) {
			t.Fatalf("Update = %v, want ErrConflict", err)
		}
		if caldav.Retryable(err) || ce.StatusCode != http.StatusPreconditionFailed {
			t.Errorf("Update error = %+v, want a 412 that is not retryable", ce)
		}
		if ce.Current == nil || ce.Current.ETag == first.ETag || inspect(t, ce.Current.Data).Summary != "Frist — vom Anwalt geändert" {
			t.Fatalf("Current = %+v, want the user's version", ce.Current)
		}
		// Merged (for deadlines our side wins): write again against the current ETag.
		res, err := c.Update(ctx, name, entry(t, uid, 1, "Frist, neue Revision"), ce.Current.ETag)
		if err != nil {
			t.Fatalf("Update after merge: %v", err)
		}
		got, _ := c.Get(ctx, name)
		if got.ETag != res.ETag || inspect(t, got.Data).Sequence != 1 {
			t.Errorf("server has %s %+v, want our revision 1 with ETag %s", got.ETag, inspect(t, got.Data), res.ETag)
		}
	})

	t.Run("delete with a stale ETag is a conflict", func(t *testing.T) {
		err := c.Delete(ctx, name, first.ETag)
		if !errors.Is(err, caldav.ErrConflict) {
			t.Fatalf("Delete = %v, want ErrConflict", err)
		}
		if _, err := c.Get(ctx, name); err != nil {
			t.Errorf("Get after refused Delete = %v, want the object still there", err)
		}
	})
}

func TestUpdateRecreatesDeletedObject(t *testing.T) {
	ctx := context.Background()
	srv := startRadicale(t)
	cal := srv.CalendarURL(user, "recreate")
	c := newClient(t, caldav.Config{CalendarURL: cal})
	uid := "vorfrist-3@example.org"
	name := caldav.ObjectName(uid)
	first, err := c.Create(ctx, name, entry(t, uid, 0, "Vorfrist"))
	if err != nil {
		t.Fatal(err)
	}
	behindOurBack(t, http.MethodDelete, cal+name, nil)

	res, err := c.Update(ctx, name, entry(t, uid, 1, "Vorfrist"), first.ETag)
	if err != nil {
		t.Fatalf("Update of a deleted object: %v", err)
	}
	if !res.Recreated || res.ETag == "" {
		t.Errorf("Update = %+v, want Recreated with an ETag", res)
	}
	got, err := c.Get(ctx, name)
	if err != nil || inspect(t, got.Data).Sequence != 1 {
		t.Errorf("Get = %v, want revision 1 back on the server", err)
	}
}

// retryUntilDone calls push with a short fixed backoff while it fails with a retryable
// error, as the delivery worker does with a growing one, and counts the attempts.
func retryUntilDone(ctx context.Context, attempts *atomic.Int32, push func() error) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		attempts.Add(1)
		err := push()
		if err == nil || !caldav.Retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-tick.C:
		}
	}
}

func TestServerDownThenBack(t *testing.T) {
	ctx := context.Background()
	srv := startRadicale(t)
	c := newClient(t, caldav.Config{CalendarURL: srv.CalendarURL(user, "outage"), RequestTimeout: 2 * time.Second})
	before, err := c.Create(ctx, "before.ics", entry(t, "before@example.org", 0, "vor dem Ausfall"))
	if err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	_, err = c.Update(ctx, "before.ics", entry(t, "before@example.org", 1, "vor dem Ausfall"), before.ETag)
	if !caldav.Retryable(err) || errors.Is(err, caldav.ErrAuth) {
		t.Fatalf("Update while down = %v, want a retryable error", err)
	}

	var attempts atomic.Int32
	done := make(chan error, 1)
	retryCtx, cancel := context.WithTimeout(ctx, poll.Timeout)
	defer cancel()
	go func() {
		done <- retryUntilDone(retryCtx, &attempts, func() error {
			_, err := c.Create(retryCtx, "during.ics", entry(t, "during@example.org", 0, "während des Ausfalls"))
			return err
		})
	}()
	poll.Eventually(t, "two failed attempts while the server is down", func() bool { return attempts.Load() >= 2 })

	srv.Restart(t)
	if err := <-done; err != nil {
		t.Fatalf("create retried across the outage: %v", err)
	}
	for _, name := range []string{"before.ics", "during.ics"} {
		if _, err := c.Get(ctx, name); err != nil {
			t.Errorf("Get %s after the outage: %v", name, err)
		}
	}
	// The update that failed during the outage goes through with the ETag we kept.
	if _, err := c.Update(ctx, "before.ics", entry(t, "before@example.org", 1, "vor dem Ausfall"), before.ETag); err != nil {
		t.Errorf("Update after the outage: %v", err)
	}
}

func TestAuthErrors(t *testing.T) {
	ctx := context.Background()
	srv := startRadicale(t)
	cal := srv.CalendarURL(user, "auth")
	errVault := errors.New("vault sealed")
	tests := []struct {
		name    string
		creds   caldav.CredentialsFunc
		wantErr error
	}{
		{"wrong password", static(user, "wrong"), caldav.ErrAuth},
		{"unknown user", static("mallory", password), caldav.ErrAuth},
		{"another user's calendar", static("bob", "bob-secret"), caldav.ErrAuth},
		{"credentials cannot be resolved", func(context.Context) (caldav.Credentials, error) { return caldav.Credentials{}, errVault }, errVault},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(t, caldav.Config{CalendarURL: cal, Credentials: tt.creds})
			_, err := c.Create(ctx, "x.ics", entry(t, "x@example.org", 0, "x"))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Create = %v, want %v", err, tt.wantErr)
			}
			if caldav.Retryable(err) {
				t.Errorf("Create error %v is retryable, want permanent", err)
			}
			if err := c.EnsureCalendar(ctx); !errors.Is(err, tt.wantErr) {
				t.Errorf("EnsureCalendar = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// etagStripper is a proxy in front of the server that removes ETag headers from the answers
// to the given methods, like servers that send none.
func etagStripper(t *testing.T, target string, methods ...string) *httptest.Server {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.ModifyResponse = func(resp *http.Response) error {
		for _, m := range methods {
			if resp.Request.Method == m {
				resp.Header.Del("ETag")
			}
		}
		return nil
	}
	s := httptest.NewServer(proxy)
	t.Cleanup(s.Close)
	return s
}

func TestETagWhenTheServerSendsNone(t *testing.T) {
	ctx := context.Background()
	srv := startRadicale(t)
	direct := newClient(t, caldav.Config{CalendarURL: srv.CalendarURL(user, "etags")})
	tests := []struct {
		name    string
		methods []string
	}{
		{"none with PUT: read back with GET", []string{http.MethodPut}},
		{"none with PUT or GET: read back with PROPFIND", []string{http.MethodPut, http.MethodGet}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxy := etagStripper(t, srv.URL(), tt.methods...)
			c := newClient(t, caldav.Config{CalendarURL: proxy.URL + "/" + user + "/etags/"})
			name := caldav.ObjectName("etag-" + string(rune('a'+i)) + "@example.org")
			res, err := c.Create(ctx, name, entry(t, "etag@example.org"+string(rune('a'+i)), 0, "e"))
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			got, err := direct.Get(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if res.ETag == "" || res.ETag != got.ETag {
				t.Errorf("Create ETag = %q, want the server's %q", res.ETag, got.ETag)
			}
		})
	}
}

func TestSizeLimits(t *testing.T) {
	ctx := context.Background()
	srv := startRadicale(t)
	cal := srv.CalendarURL(user, "limits")
	big := entry(t, "big@example.org", 0, strings.Repeat("x", 900))
	small := newClient(t, caldav.Config{CalendarURL: cal, MaxObjectSize: 512})

	if _, err := small.Create(ctx, "big.ics", big); !errors.Is(err, caldav.ErrTooLarge) {
		t.Errorf("Create of %d bytes with a 512-byte limit = %v, want ErrTooLarge", len(big), err)
	}
	if _, err := newClient(t, caldav.Config{CalendarURL: cal}).Create(ctx, "big.ics", big); err != nil {
		t.Fatal(err)
	}
	if _, err := small.Get(ctx, "big.ics"); !errors.Is(err, caldav.ErrTooLarge) {
		t.Errorf("Get of %d bytes with a 512-byte limit = %v, want ErrTooLarge", len(big), err)
	}
}

// stub is a server that answers every request with status and header, counting requests.
func stub(t *testing.T, status int, header http.Header) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		for k, v := range header {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(s.Close)
	return s, &n
}

func TestClassification(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name           string
		status         int
		header         http.Header
		wantErr        error
		wantRetry      bool
		wantRetryAfter time.Duration
	}{
		{"500", http.StatusInternalServerError, nil, caldav.ErrUnavailable, true, 0},
		{"503 with Retry-After", http.StatusServiceUnavailable, http.Header{"Retry-After": {"7"}}, caldav.ErrUnavailable, true, 7 * time.Second},
		// Seconds past a Duration's range wrapped around into some other delay (found by
		// FuzzServerAnswers).
		{"503 with a Retry-After of centuries", http.StatusServiceUnavailable, http.Header{"Retry-After": {"99999999999"}}, caldav.ErrUnavailable, true, math.MaxInt64},
		{"503 with a Retry-After past int64", http.StatusServiceUnavailable, http.Header{"Retry-After": {"99999999999999999999"}}, caldav.ErrUnavailable, true, math.MaxInt64},
		{"503 with a negative Retry-After", http.StatusServiceUnavailable, http.Header{"Retry-After": {"-5"}}, caldav.ErrUnavailable, true, 0},
		{"429", http.StatusTooManyRequests, nil, caldav.ErrUnavailable, true, 0},
		{"401", http.StatusUnauthorized, nil, caldav.ErrAuth, false, 0},
		{"403", http.StatusForbidden, nil, caldav.ErrAuth, false, 0},
		{"400", http.StatusBadRequest, nil, caldav.ErrRejected, false, 0},
		{"415", http.StatusUnsupportedMediaType, nil, caldav.ErrRejected, false, 0},
		{"413", http.StatusRequestEntityTooLarge, nil, caldav.ErrTooLarge, false, 0},
		{"207 to a PUT is not a success", http.StatusMultiStatus, nil, caldav.ErrRejected, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := stub(t, tt.status, tt.header)
			c := newClient(t, caldav.Config{CalendarURL: s.URL + "/cal/"})
			_, err := c.Update(ctx, "x.ics", []byte("data"), `"e1"`)
			var ce *caldav.Error
			if !errors.Is(err, tt.wantErr) || !errors.As(err, &ce) {
				t.Fatalf("Update = %v, want %v", err, tt.wantErr)
			}
			if got := caldav.Retryable(err); got != tt.wantRetry {
				t.Errorf("Retryable = %v, want %v", got, tt.wantRetry)
			}
			if ce.StatusCode != tt.status || ce.RetryAfter != tt.wantRetryAfter {
				t.Errorf("Error = status %d, retry after %v; want %d, %v", ce.StatusCode, ce.RetryAfter, tt.status, tt.wantRetryAfter)
			}
		})
	}

	t.Run("oversized object is refused before sending", func(t *testing.T) {
		s, n := stub(t, http.StatusCreated, nil)
		c := newClient(t, caldav.Config{CalendarURL: s.URL + "/cal/", MaxObjectSize: 10})
		if _, err := c.Create(ctx, "x.ics", make([]byte, 11)); !errors.Is(err, caldav.ErrTooLarge) {
			t.Errorf("Create = %v, want ErrTooLarge", err)
		}
		if got := n.Load(); got != 0 {
			t.Errorf("server saw %d requests, want 0", got)
		}
	})
	t.Run("update and delete need an ETag", func(t *testing.T) {
		s, n := stub(t, http.StatusNoContent, nil)
		c := newClient(t, caldav.Config{CalendarURL: s.URL + "/cal/"})
		if _, err := c.Update(ctx, "x.ics", []byte("d"), ""); err == nil {
			t.Error("Update without ETag = nil error")
		}
		if err := c.Delete(ctx, "x.ics", ""); err == nil {
			t.Error("Delete without ETag = nil error")
		}
		if got := n.Load(); got != 0 {
			t.Errorf("server saw %d requests, want 0", got)
		}
	})
	t.Run("bad object names are refused", func(t *testing.T) {
		c := newClient(t, caldav.Config{CalendarURL: "http://127.0.0.1:1/cal/"})
		for _, name := range []string{"", ".", "..", "a/b.ics", `a\b.ics`} {
			if _, err := c.Get(ctx, name); err == nil || caldav.Retryable(err) {
				t.Errorf("Get(%q) = %v, want a permanent error", name, err)
			}
		}
	})
}

// TestConditionalHeaders checks what goes on the wire, and the recreate path of servers that
// answer 404 (not 412) to an If-Match on a deleted object.
func TestConditionalHeaders(t *testing.T) {
	ctx := context.Background()
	type seen struct{ method, ifMatch, ifNoneMatch string }
	got := make(chan seen, 10)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Method, r.Header.Get("If-Match"), r.Header.Get("If-None-Match")}
		switch {
		case r.Header.Get("If-Match") != "" && r.Method == http.MethodPut:
			w.WriteHeader(http.StatusNotFound) // deleted on the server
		case r.Method == http.MethodPut:
			w.Header().Set("ETag", `"new"`)
			w.WriteHeader(http.StatusCreated)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	t.Cleanup(s.Close)
	c := newClient(t, caldav.Config{CalendarURL: s.URL + "/cal/"})

	res, err := c.Update(ctx, "x.ics", []byte("data"), `"old"`)
	if err != nil || !res.Recreated || res.ETag != `"new"` {
		t.Fatalf("Update = %+v, %v; want recreated with ETag \"new\"", res, err)
	}
	if err := c.Delete(ctx, "x.ics", `"new"`); err != nil {
		t.Fatal(err)
	}
	want := []seen{
		{http.MethodPut, `"old"`, ""},
		{http.MethodPut, "", "*"},
		{http.MethodDelete, `"new"`, ""},
	}
	for i, w := range want {
		if g := <-got; g != w {
			t.Errorf("request %d = %+v, want %+v", i+1, g, w)
		}
	}
}

func TestRequestTimeout(t *testing.T) {
	release := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select { // hang until the client gives up or the test ends
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(s.Close)
	t.Cleanup(func() { close(release) }) // runs before s.Close
	c := newClient(t, caldav.Config{CalendarURL: s.URL + "/cal/", RequestTimeout: 50 * time.Millisecond})
	_, err := c.Create(context.Background(), "x.ics", []byte("data"))
	if !caldav.Retryable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Create against a hanging server = %v, want a retryable deadline error", err)
	}
}

func TestNew(t *testing.T) {
	creds := static("u", "p")
	tests := []struct {
		name    string
		cfg     caldav.Config
		wantErr bool
	}{
		{"https", caldav.Config{CalendarURL: "https://dav.example.com/u/cal/", Credentials: creds}, false},
		{"no trailing slash", caldav.Config{CalendarURL: "http://dav.example.com/u/cal", Credentials: creds}, false},
		{"no credentials", caldav.Config{CalendarURL: "https://dav.example.com/u/cal/"}, true},
		{"not http", caldav.Config{CalendarURL: "ftp://dav.example.com/", Credentials: creds}, true},
		{"no host", caldav.Config{CalendarURL: "https:///cal/", Credentials: creds}, true},
		{"user info in the URL", caldav.Config{CalendarURL: "https://u:p@dav.example.com/cal/", Credentials: creds}, true},
		{"negative timeout", caldav.Config{CalendarURL: "https://dav.example.com/", Credentials: creds, RequestTimeout: -1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := caldav.New(tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Errorf("New = %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestObjectName(t *testing.T) {
	stable := ical.StableUID("t", "e")
	tests := []struct {
		uid, want string
	}{
		{stable, stable + ".ics"},
		{"abc-1.2_3@example.org", "abc-1.2_3@example.org.ics"},
	}
	for _, tt := range tests {
		if got := caldav.ObjectName(tt.uid); got != tt.want {
			t.Errorf("ObjectName(%q) = %q, want %q", tt.uid, got, tt.want)
		}
	}
	for _, uid := range []string{"with space", "a/b", "..", strings.Repeat("x", 201), "ümlaut"} {
		got := caldav.ObjectName(uid)
		if len(got) != 36 || !strings.HasSuffix(got, ".ics") || strings.ContainsAny(got, "/ ") {
			t.Errorf("ObjectName(%q) = %q, want a 32-hex-digit hash plus .ics", uid, got)
		}
		if again := caldav.ObjectName(uid); again != got {
			t.Errorf("ObjectName(%q) not stable: %q then %q", uid, got, again)
		}
	}
}

// TestPropfindETag: a PROPFIND answer, which servers indent, gives its getetag without the
// white space around it (which made every conditional write fail in net/http, retried for
// ever); a getetag with a line break inside is the server's error, not retried (found by
// FuzzServerAnswers).
func TestPropfindETag(t *testing.T) {
	for _, tt := range []struct {
		name, getetag, want string
		wantErr             error
	}{
		{"indented", "\n          \"e-1\"\n        ", `"e-1"`, nil},
		{"a line break inside", "\"a\nX-Evil: 1\"", "", caldav.ErrRejected},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != "PROPFIND" {
					w.WriteHeader(http.StatusOK) // a GET without ETag
					return
				}
				w.WriteHeader(http.StatusMultiStatus)
				_, _ = io.WriteString(w, `<d:multistatus xmlns:d="DAV:"><d:response><d:propstat><d:prop><d:getetag>`+tt.getetag+
					`</d:getetag></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response></d:multistatus>`)
			}))
			t.Cleanup(s.Close)
			obj, err := newClient(t, caldav.Config{CalendarURL: s.URL + "/cal/"}).Get(context.Background(), "x.ics")
			if obj.ETag != tt.want || !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Errorf("Get = ETag %q, %v; want %q, %v", obj.ETag, err, tt.want, tt.wantErr)
			}
		})
	}
}

// TestConflictWhoseCurrentVersionCannotBeRead: a 412 whose current version the client cannot
// read is a conflict without Current, and only a conflict: it matched the read's class too (an
// unavailable or rejected server), against the rule of one class per error (found by
// FuzzServerAnswers).
func TestConflictWhoseCurrentVersionCannotBeRead(t *testing.T) {
	for _, get := range []int{http.StatusInternalServerError, http.StatusForbidden} {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut {
				w.WriteHeader(http.StatusPreconditionFailed)
				return
			}
			w.WriteHeader(get)
		}))
		t.Cleanup(s.Close)
		_, err := newClient(t, caldav.Config{CalendarURL: s.URL + "/cal/"}).Update(context.Background(), "x.ics", []byte("d"), `"e1"`)
		var ce *caldav.Error
		if !errors.Is(err, caldav.ErrConflict) || !errors.As(err, &ce) || ce.Current != nil {
			t.Fatalf("GET %d: Update = %v, want ErrConflict without Current", get, err)
		}
		if errors.Is(err, caldav.ErrUnavailable) || errors.Is(err, caldav.ErrAuth) || caldav.Retryable(err) {
			t.Errorf("GET %d: Update = %v matches the read's class too", get, err)
		}
	}
}
