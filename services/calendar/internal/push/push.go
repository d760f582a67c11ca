// Package push delivers the queued revisions of SERVER_PUSH users into their CalDAV calendars
// through the caldav client: create with If-None-Match, update with the ETag kept from the last
// write (If-Match), delete a cancelled appointment with If-Match, and on 412 fetch the server's
// version and merge. Temporary failures are retried with backoff up to a number of attempts;
// after that, or on a permanent failure (credentials rejected, request refused), the delivery is
// dead and DeliveryFailed goes out.
//
// Merge rule on 412 (the object changed on the server since our ETag, or exists on create):
//   - the server holds exactly our revision (same UID, SEQUENCE and DTSTAMP): a write of ours
//     whose answer was lost; take its ETag, done.
//   - deadlines and preliminary deadlines: our side wins; the server's version is overwritten
//     with If-Match on its ETag. A deadline must not silently change or vanish in a calendar.
//   - appointments: a server version with a higher SEQUENCE is a reschedule made in the calendar
//     (clients bump SEQUENCE for changes of time or place); it is kept and the delivery ends as
//     CONFLICT. A server version with an equal or lower SEQUENCE (a note, an alarm, an older
//     revision of ours) is overwritten; the delivery ends as CONFLICT too, so the log shows it.
//   - cancelling an appointment deletes it with If-Match on the server's current ETag:
//     the cancellation wins. A cancelled deadline is written as a cancelled revision, never
//     deleted.
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
	"sync"
	"time"

	"github.com/postamt/postamt/internal/secretref"
	"github.com/postamt/postamt/services/calendar/internal/caldav"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
	"github.com/postamt/postamt/services/calendar/internal/ical"
	"github.com/postamt/postamt/services/calendar/internal/redisstore"
)

// Worker pushes due deliveries. Set the fields, then Run.
type Worker struct {
	Store *redisstore.Store
	// Secrets bounds and resolves password references.
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
		if w.HTTPClient == nil {
			w.HTTPClient = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
		}
		w.wakes = make([]chan struct{}, redisstore.Partitions)
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
	for n := range redisstore.Partitions {
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
	var etag string
	var outcome calendar.Outcome
	if us.Mode != calendar.ModeServerPush || !us.CalDAV.Complete() {
		err = errNotConfigured
	} else {
		var c *caldav.Client
		c, err = caldav.New(caldav.Config{
			CalendarURL: us.CalDAV.URL, HTTPClient: w.HTTPClient, RequestTimeout: w.RequestTimeout,
			Credentials: func(context.Context) (caldav.Credentials, error) {
				pw, err := w.Secrets.Resolve(us.CalDAV.PasswordRef, w.Getenv, w.ReadFile)
				return caldav.Credentials{Username: us.CalDAV.Username, Password: pw}, err
			},
		})
		if err == nil {
			known := ""
			if d.RemoteID == name {
				known = d.RemoteVersion
			}
			etag, outcome, err = w.push(ctx, c, name, known, d.Rev)
		}
	}
	switch {
	case err == nil:
		ack.Outcome, ack.RemoteID, ack.RemoteVersion = outcome, name, etag
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
	_, err = w.Store.Ack(context.WithoutCancel(ctx), due.Tenant, due.User, ack)
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

// push writes one revision and returns the new ETag and the outcome.
func (w *Worker) push(ctx context.Context, c *caldav.Client, name, etag string, rev *calendar.Revision) (string, calendar.Outcome, error) {
	e := rev.Entry
	if e.Cancelled && e.Kind == ical.Appointment {
		if etag == "" {
			obj, err := c.Get(ctx, name)
			if errors.Is(err, caldav.ErrNotFound) {
				return "", calendar.OutcomeApplied, nil
			}
			if err != nil {
				return "", "", err
			}
			etag = obj.ETag
		}
		err := c.Delete(ctx, name, etag)
		var ce *caldav.Error
		if errors.Is(err, caldav.ErrConflict) && errors.As(err, &ce) && ce.Current != nil {
			return "", calendar.OutcomeConflict, c.Delete(ctx, name, ce.Current.ETag) // the cancellation wins
		}
		return "", calendar.OutcomeApplied, err
	}
	var res caldav.Result
	var err error
	if etag != "" {
		res, err = c.Update(ctx, name, rev.ICS, etag)
	} else {
		res, err = c.Create(ctx, name, rev.ICS)
	}
	if errors.Is(err, caldav.ErrConflict) {
		return w.merge(ctx, c, name, rev, err)
	}
	if err != nil {
		return "", "", err
	}
	return res.ETag, calendar.OutcomeApplied, nil
}

// merge applies the merge rule of the package documentation to a 412.
func (w *Worker) merge(ctx context.Context, c *caldav.Client, name string, rev *calendar.Revision, conflict error) (string, calendar.Outcome, error) {
	var ce *caldav.Error
	if !errors.As(conflict, &ce) || ce.Current == nil {
		return "", "", fmt.Errorf("%w (the server's version could not be read; retrying)", errRetry)
	}
	ours, err := ical.Inspect(rev.ICS)
	if err != nil {
		return "", "", err
	}
	theirs, terr := ical.Inspect(ce.Current.Data)
	if terr == nil && theirs.SameRevision(ours) {
		return ce.Current.ETag, calendar.OutcomeApplied, nil
	}
	if rev.Entry.Kind == ical.Appointment && terr == nil && theirs.UID == ours.UID && theirs.Sequence > ours.Sequence {
		return ce.Current.ETag, calendar.OutcomeConflict, nil
	}
	res, err := c.Update(ctx, name, rev.ICS, ce.Current.ETag)
	if err != nil {
		return "", "", err
	}
	return res.ETag, calendar.OutcomeConflict, nil
}

// errRetry marks a failure that is worth another attempt.
var errRetry = errors.New("calendar push: temporary failure")
