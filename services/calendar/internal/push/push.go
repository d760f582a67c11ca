// Package push delivers the queued revisions of SERVER_PUSH users into their CalDAV calendars
// through the caldav client: create with If-None-Match, update with the ETag kept from the last
// write (If-Match), delete a cancelled appointment with If-Match, and on 412 fetch the server's
// version and merge. Temporary failures are retried with backoff up to a number of attempts;
// after that, or on a permanent failure (credentials rejected, request refused), the delivery is
// dead and DeliveryFailed goes out.
//
// Merge rule on 412 (the object changed on the server since our ETag, or exists on create):
//   - the server holds exactly the object we write (same UID, SEQUENCE and DTSTAMP): a write of
//     ours whose answer was lost; take its ETag, done.
//   - the server holds an earlier revision of ours (same UID, DTSTAMP and fields) whose answer
//     was lost before a newer revision came: no change made in the calendar; the newer
//     revision overwrites it with If-Match, APPLIED (see ownEarlier).
//   - otherwise a three-way merge of our revision and the server's version against the base,
//     the object Postamt last pushed (or adopted) for the entry, kept per user and entry:
//     a field (summary, description, location, time) changed on one side only keeps that
//     side's value; a field changed on both sides goes to the calendar for appointments (the
//     owner, who attends, edited their own appointment) and to Postamt for deadlines and
//     preliminary deadlines, which also never take a change made in the calendar (a deadline
//     must not silently change). See threeWay. RRULE, EXDATE, done and status are Postamt's.
//   - when the merge keeps nothing of the calendar's, our revision overwrites the server's
//     version with If-Match on its ETag. When it keeps something, Postamt adopts the merge as
//     the entry's next revision (AdoptCalendarChange: revision bump, EntryChanged, queued), so
//     GetEntry says what the calendar says, and that revision's push writes the merge back.
//   - either way the delivery ends as CONFLICT with a sync-log line naming, per field, which
//     side won; contested fields also become the entry's sync warning (and GetSyncStatus's
//     CALDAV_CONFLICT warning) until a later change of Postamt's is pushed without conflict.
//   - cancelling an appointment deletes it with If-Match on the server's current ETag:
//     the cancellation wins. A cancelled deadline is written as a cancelled revision, never
//     deleted.
//
// SEQUENCE never goes down (RFC 5545 §3.8.7.4): every write carries max(the revision's own
// SEQUENCE, the base's + 1), and after a 412 at least the server's + 1, so a calendar that
// raised it is never written over with a lower one.
//
// It runs one loop per partition that sleeps until the earliest due time and is woken early
// when a revision is queued (Wake): no fixed polling. Claims are leases, so several replicas
// share the work and a crashed worker's deliveries come due again.
package push

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/secretref"
	"github.com/postamt/postamt/services/calendar/internal/caldav"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
	"github.com/postamt/postamt/services/calendar/internal/ical"
	"github.com/postamt/postamt/services/calendar/internal/redisstore"
)

// Worker pushes due deliveries. Set the fields, then Run.
type Worker struct {
	Store *redisstore.Store
	// Secrets bounds and resolves password references, narrowed to the entry's tenant.
	Secrets secretref.Scope
	// Getenv and ReadFile resolve references; nil means the process's.
	Getenv   func(string) string
	ReadFile func(string) ([]byte, error)
	// HTTPClient sends the CalDAV requests; nil means a client of its own.
	HTTPClient *http.Client
	// RequestTimeout bounds each CalDAV request; 0 means 30s.
	RequestTimeout time.Duration
	// Retry is the backoff before attempt 2, 3, ...; the last value repeats. Empty means
	// 5s, 30s, 2m, 10m, 30m, 1h.
	Retry []time.Duration
	// MaxAttempts bounds the attempts of one delivery; 0 means 8.
	MaxAttempts int
	// Lease is how long a claimed delivery is held; 0 means 2 minutes (above RequestTimeout
	// times the few requests of one push).
	Lease time.Duration
	// Batch is the deliveries claimed per round; 0 means 32.
	Batch int
	// MaxIdle bounds a sleep as a safety net for a lost wake-up; 0 means 30s.
	MaxIdle time.Duration
	// Now is the clock; nil means time.Now.
	Now    func() time.Time
	Logger *slog.Logger
	// Zones resolves the TZIDs of objects read back from calendars; nil means ical.NewZones().
	Zones *ical.Zones
	// Adopt writes a merge that keeps something of the calendar's as the entry's next revision
	// on top of prev (calendar.Service.AdoptCalendarChange); required.
	Adopt func(ctx context.Context, tenant, id string, prev int64, c calendar.CalendarChange) (*calendar.Entry, error)
	// Pushes counts finished push attempts by result: "ok" (the calendar took it), "retry" (a
	// failure retried later), "dead" (a failure given up: the entry waits for a person); nil
	// counts nothing.
	Pushes *prometheus.CounterVec

	once  sync.Once
	wakes []chan struct{}
}

func (w *Worker) init() {
	w.once.Do(func() {
		if w.RequestTimeout == 0 {
			w.RequestTimeout = 30 * time.Second
		}
		if len(w.Retry) == 0 {
			w.Retry = []time.Duration{5 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute, 30 * time.Minute, time.Hour}
		}
		if w.MaxAttempts == 0 {
			w.MaxAttempts = 8
		}
		if w.Lease == 0 {
			w.Lease = 2 * time.Minute
		}
		if w.Batch == 0 {
			w.Batch = 32
		}
		if w.MaxIdle == 0 {
			w.MaxIdle = 30 * time.Second
		}
		if w.Now == nil {
			w.Now = time.Now
		}
		if w.Logger == nil {
			w.Logger = slog.New(slog.DiscardHandler)
		}
		if w.Zones == nil {
			if z, err := ical.NewZones(); err == nil {
				w.Zones = z
			}
		}
		if w.HTTPClient == nil {
			w.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
		}
		w.wakes = make([]chan struct{}, w.Store.Partitions())
		for i := range w.wakes {
			w.wakes[i] = make(chan struct{}, 1)
		}
	})
}

// Wake tells partition n's loop that a delivery may be due sooner than it sleeps for.
func (w *Worker) Wake(n int) {
	w.init()
	if n < 0 || n >= len(w.wakes) {
		return
	}
	select {
	case w.wakes[n] <- struct{}{}:
	default:
	}
}

// Run pushes every partition's deliveries until ctx ends.
func (w *Worker) Run(ctx context.Context) error {
	w.init()
	var wg sync.WaitGroup
	for n := range w.Store.Partitions() {
		wg.Go(func() { w.loop(ctx, n) })
	}
	wg.Wait()
	return nil
}

func (w *Worker) loop(ctx context.Context, n int) {
	for ctx.Err() == nil {
		now := w.Now()
		due, err := w.Store.ClaimDuePush(ctx, n, now, now.Add(w.Lease), w.Batch)
		if err != nil {
			w.Logger.Warn("calendar push: claim failed", "partition", n, "error", err)
			w.sleep(ctx, n, time.Second)
			continue
		}
		for _, d := range due {
			if err := w.deliver(ctx, d); err != nil && ctx.Err() == nil {
				w.Logger.Warn("calendar push: recording a result failed; the lease brings it back", "error", err)
			}
		}
		if len(due) == w.Batch {
			continue
		}
		wait := w.MaxIdle
		if next, ok, err := w.Store.NextPushDue(ctx, n); err == nil && ok {
			wait = min(wait, next.Sub(w.Now()))
		}
		if wait > 0 {
			w.sleep(ctx, n, wait)
		}
	}
}

func (w *Worker) sleep(ctx context.Context, n int, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-w.wakes[n]:
	case <-t.C:
	}
}

// errNotConfigured is a delivery for a user who no longer has server push set up.
var errNotConfigured = errors.New("server push is not configured for the user any more")

// deliver pushes one claimed delivery and records the result.
func (w *Worker) deliver(ctx context.Context, due redisstore.DuePush) error {
	d, ok, err := w.Store.HoldPush(ctx, due)
	if err != nil || !ok {
		return err
	}
	us, err := w.Store.UserSettings(ctx, due.Tenant, due.User)
	if err != nil {
		return err
	}
	now := w.Now()
	ack := calendar.AckInput{
		Target: calendar.TargetCalDAV, Position: d.Position, EntryID: d.EntryID, Revision: d.Revision,
		MaxAttempts: w.MaxAttempts, Attempts: d.Attempt + 1, Log: us.LogOn(), Now: now,
	}
	name := caldav.ObjectName(ical.StableUID(due.Tenant, d.EntryID))
	var res result
	if us.Mode != calendar.ModeServerPush || !us.CalDAV.Complete() {
		err = errNotConfigured
	} else {
		var c *caldav.Client
		c, err = caldav.New(caldav.Config{
			CalendarURL: us.CalDAV.URL, HTTPClient: w.HTTPClient, RequestTimeout: w.RequestTimeout,
			Credentials: func(context.Context) (caldav.Credentials, error) {
				pw, err := w.Secrets.For(due.Tenant).Resolve(us.CalDAV.PasswordRef, w.Getenv, w.ReadFile)
				return caldav.Credentials{Username: us.CalDAV.Username, Password: pw}, err
			},
		})
		if err == nil {
			known := ""
			if d.RemoteID == name {
				known = d.RemoteVersion
			}
			t := target{tenant: due.Tenant, user: due.User, name: name, c: c}
			res, err = w.push(ctx, t, known, d.Rev)
		}
	}
	switch {
	case err == nil:
		ack.Outcome, ack.RemoteID, ack.RemoteVersion, ack.Message = res.outcome, name, res.etag, res.detail
		if err := w.record(ctx, due, d, ack, res); err != nil {
			return err
		}
	case ctx.Err() != nil:
		return ctx.Err() // shutting down: the lease brings it back
	default:
		ack.Outcome, ack.Message = calendar.OutcomeError, err.Error()
		if permanent(err) {
			ack.Dead = true
		} else {
			ack.RetryAt = now.Add(w.backoff(d.Attempt+1, err))
		}
		w.Logger.Info("calendar push failed", "tenant", due.Tenant, "user", due.User, "entry", d.EntryID,
			"attempt", d.Attempt+1, "dead", ack.Dead, "error", err)
	}
	got, err := w.Store.Ack(context.WithoutCancel(ctx), due.Tenant, due.User, ack)
	if err == nil && w.Pushes != nil && !got.Stale {
		result := "ok"
		switch {
		case got.Dead:
			result = "dead"
		case ack.Outcome == calendar.OutcomeError:
			result = "retry"
		}
		w.Pushes.WithLabelValues(result).Inc()
	}
	return err
}

// permanent reports failures that retrying does not fix.
func permanent(err error) bool {
	return errors.Is(err, caldav.ErrAuth) || errors.Is(err, caldav.ErrRejected) || errors.Is(err, caldav.ErrTooLarge) || errors.Is(err, errNotConfigured)
}

// backoff is the wait after attempt n, at least what the server asked for.
func (w *Worker) backoff(n int, err error) time.Duration {
	d := w.Retry[min(n-1, len(w.Retry)-1)]
	var ce *caldav.Error
	if errors.As(err, &ce) && ce.RetryAfter > d {
		d = min(ce.RetryAfter, time.Hour)
	}
	return d
}

// target is where one delivery goes.
type target struct {
	tenant, user, name string
	c                  *caldav.Client
}

// result is what a push left in the calendar.
type result struct {
	etag    string
	outcome calendar.Outcome
	// base is the object the calendar now holds, the next merge's base; nil when nothing is
	// there (a deleted appointment) or nothing new was learnt.
	base []byte
	// detail is the sync log's note (per field, which side won); warning the contested part.
	detail, warning string
	// adopted is the revision Postamt wrote with the calendar's side of a merge; its own push
	// follows, so this delivery's ack is superseded and its log line written here.
	adopted *calendar.Entry
}

// record keeps what a successful push learnt: the base for the next merge, the entry's
// conflict note, and for an adopted merge the CONFLICT line (the ack of a superseded
// delivery writes none).
func (w *Worker) record(ctx context.Context, due redisstore.DuePush, d calendar.Delivery, ack calendar.AckInput, res result) error {
	ctx = context.WithoutCancel(ctx)
	if res.base != nil {
		if err := w.Store.SetPushBase(ctx, due.Tenant, due.User, d.EntryID, ack.RemoteID, res.etag, res.base); err != nil {
			return err
		}
	}
	noteRev := d.Revision
	if res.adopted != nil {
		noteRev = res.adopted.Revision
		if ack.Log {
			if err := w.Store.AppendLog(ctx, due.Tenant, due.User, calendar.LogLine{
				Action: "CONFLICT", EntryID: d.EntryID, Revision: d.Revision, Target: calendar.TargetCalDAV,
				Position: d.Position, Detail: ack.RemoteID + " " + res.detail + "; adopted as revision " + strconv.FormatInt(noteRev, 10),
			}); err != nil {
				return err
			}
		}
	}
	switch {
	case res.warning != "":
		return w.Store.SetConflict(ctx, due.Tenant, due.User, d.EntryID, noteRev, res.warning)
	case res.outcome == calendar.OutcomeApplied:
		return w.Store.ClearConflict(ctx, due.Tenant, due.User, d.EntryID, d.Revision)
	}
	return nil
}

// push writes one revision and returns what it left on the server.
func (w *Worker) push(ctx context.Context, t target, etag string, rev *calendar.Revision) (result, error) {
	c, name := t.c, t.name
	e := rev.Entry
	if e.Cancelled && e.Kind == ical.Appointment {
		if etag == "" {
			obj, err := c.Get(ctx, name)
			if errors.Is(err, caldav.ErrNotFound) {
				return result{outcome: calendar.OutcomeApplied}, nil
			}
			if err != nil {
				return result{}, err
			}
			etag = obj.ETag
		}
		err := c.Delete(ctx, name, etag)
		var ce *caldav.Error
		if errors.Is(err, caldav.ErrConflict) && errors.As(err, &ce) && ce.Current != nil {
			return result{outcome: calendar.OutcomeConflict, detail: "deleted over a change made in the calendar: the cancellation wins"},
				c.Delete(ctx, name, ce.Current.ETag)
		}
		return result{outcome: calendar.OutcomeApplied}, err
	}
	base, err := w.Store.PushBase(ctx, t.tenant, t.user, e.ID)
	if err != nil {
		return result{}, err
	}
	var baseF *ical.Fields
	seq := rev.Entry.Sequence()
	if base != nil {
		if f, err := ical.ReadFields(base, w.Zones); err == nil {
			baseF = &f
			seq = max(seq, f.Sequence+1)
		}
	}
	ics, err := ical.WithSequence(rev.ICS, seq)
	if err != nil {
		return result{}, err
	}
	var res caldav.Result
	if etag != "" {
		res, err = c.Update(ctx, name, ics, etag)
	} else {
		res, err = c.Create(ctx, name, ics)
	}
	if errors.Is(err, caldav.ErrConflict) {
		return w.merge(ctx, t, rev, ics, seq, baseF, err)
	}
	if err != nil {
		return result{}, err
	}
	return result{etag: res.ETag, outcome: calendar.OutcomeApplied, base: ics}, nil
}

// merge applies the merge rule of the package documentation to a 412. ics is the object we
// tried to write, with SEQUENCE seq.
func (w *Worker) merge(ctx context.Context, t target, rev *calendar.Revision, ics []byte, seq int, base *ical.Fields, conflict error) (result, error) {
	var ce *caldav.Error
	if !errors.As(conflict, &ce) || ce.Current == nil {
		return result{}, fmt.Errorf("%w (the server's version could not be read; retrying)", errRetry)
	}
	cur := ce.Current
	ours, err := ical.Inspect(ics)
	if err != nil {
		return result{}, err
	}
	if theirs, err := ical.Inspect(cur.Data); err == nil && theirs.SameRevision(ours) {
		return result{etag: cur.ETag, outcome: calendar.OutcomeApplied, base: ics}, nil
	}
	// The server may hold an earlier revision of ours whose answer was lost (the server stored
	// it and was killed, or the connection broke, before it answered; a newer revision came
	// before the retry). That object holds no change made in the calendar: merging against it
	// counted our own older text as the calendar's and, for appointments, let it win — Postamt
	// adopted it and silently undid the newer change (found by the fault suite, issue 17). It
	// is overwritten as a plain update of ours.
	if own, oseq, err := w.ownEarlier(ctx, t, rev, cur.Data); err != nil {
		return result{}, err
	} else if own {
		seq = max(seq, oseq+1)
		if ics, err = ical.WithSequence(rev.ICS, seq); err != nil {
			return result{}, err
		}
		res, err := t.c.Update(ctx, t.name, ics, cur.ETag)
		if err != nil {
			return result{}, err
		}
		return result{etag: res.ETag, outcome: calendar.OutcomeApplied, base: ics}, nil
	}
	var m merged
	theirs, err := ical.ReadFields(cur.Data, w.Zones)
	if err != nil {
		// Unreadable (or not an event): nothing of it can be kept field by field.
		note := "the calendar's version is unreadable (" + err.Error() + "), Postamt won"
		m = merged{detail: note, warning: note}
	} else {
		m = threeWay(rev.Entry.Kind, base, fieldsOf(rev, seq), theirs)
	}
	if m.fromCalendar {
		adopted, err := w.Adopt(ctx, t.tenant, rev.Entry.ID, rev.Entry.Revision, m.change)
		if err != nil {
			return result{}, fmt.Errorf("adopting the calendar's change: %w", err)
		}
		// The calendar's version is the adopted revision's base; its push writes the merge.
		return result{etag: cur.ETag, outcome: calendar.OutcomeConflict, base: cur.Data, detail: m.detail, warning: m.warning, adopted: adopted}, nil
	}
	seq = max(seq, theirs.Sequence+1)
	if ics, err = ical.WithSequence(rev.ICS, seq); err != nil {
		return result{}, err
	}
	res, err := t.c.Update(ctx, t.name, ics, cur.ETag)
	if err != nil {
		return result{}, err
	}
	return result{etag: res.ETag, outcome: calendar.OutcomeConflict, base: ics, detail: m.detail, warning: m.warning}, nil
}

// ownLookback bounds how many of an entry's earlier revisions ownEarlier compares with the
// server's object: the revisions made while one push of the entry kept failing. An own
// revision further back is merged as a change made in the calendar would be.
const ownLookback = 50

// ownEarlier reports whether the server's object data is one of our own earlier revisions of
// rev's entry as we wrote it — the same UID and DTSTAMP (each revision's own time) and the
// same summary, description, location and time — and returns its SEQUENCE.
func (w *Worker) ownEarlier(ctx context.Context, t target, rev *calendar.Revision, data []byte) (bool, int, error) {
	theirs, ierr := ical.Inspect(data)
	theirF, ferr := ical.ReadFields(data, w.Zones)
	if ierr != nil || ferr != nil {
		return false, 0, nil //nolint:nilerr // an object we cannot read is none we wrote: no match; the merge that follows handles it
	}
	for r := rev.Entry.Revision - 1; r >= 1 && r >= rev.Entry.Revision-ownLookback; r-- {
		old, err := w.Store.GetRevision(ctx, t.tenant, rev.Entry.ID, r)
		if errors.Is(err, errs.ErrNotFound) {
			break
		}
		if err != nil {
			return false, 0, err
		}
		oi, err := ical.Inspect(old.ICS)
		if err != nil || oi.UID != theirs.UID || !oi.Stamp.Equal(theirs.Stamp) {
			continue
		}
		of, err := ical.ReadFields(old.ICS, w.Zones)
		same := err == nil && of.Summary == theirF.Summary && of.Desc == theirF.Desc && of.Location == theirF.Location && of.Time() == theirF.Time()
		return same, theirs.Sequence, nil
	}
	return false, 0, nil
}

// errRetry marks a failure that is worth another attempt.
var errRetry = errors.New("calendar push: temporary failure")
