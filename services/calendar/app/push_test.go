package app_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/radicaletest"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/app"
	"github.com/postamt/postamt/services/calendar/internal/caldav"
	"github.com/postamt/postamt/services/calendar/internal/ical"
)

const davPassword = "anwalt-secret"

// pushEnv is the env with anwalt in SERVER_PUSH mode onto a real Radicale.
type pushEnv struct {
	*env
	dav    *radicaletest.Server
	client *caldav.Client // reads what the server has, as anwalt
}

// startPushEnv starts the env with anwalt pushing to a fresh Radicale; more changes the
// calendar's dependencies further (its HTTP client, say).
func startPushEnv(t *testing.T, more ...func(*app.Deps)) *pushEnv {
	t.Helper()
	dav := radicaletest.Start(t, radicaletest.WithUser("anwalt", davPassword))
	getenv := func(name string) string {
		if name == "POSTAMT_CALDAV_KANZLEI__ANWALT" {
			return davPassword
		}
		return ""
	}
	e := startEnv(t, envOptions{deps: func(d *app.Deps) {
		d.Getenv = getenv
		for _, m := range more {
			m(d)
		}
	}})
	calURL := dav.CalendarURL("anwalt", "postamt")
	if _, err := e.calendar.UpdateUserSettings(e.admin(), &calendarv1.UpdateUserSettingsRequest{Settings: &calendarv1.UserSettings{
		UserId: "anwalt", Mode: calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH, SyncLogEnabled: true,
		Caldav: &calendarv1.CalDAVTarget{CalendarUrl: calURL, Username: "anwalt", PasswordRef: "env:POSTAMT_CALDAV_KANZLEI__ANWALT"},
	}}); err != nil {
		t.Fatal(err)
	}
	c, err := caldav.New(caldav.Config{CalendarURL: calURL, Credentials: func(context.Context) (caldav.Credentials, error) {
		return caldav.Credentials{Username: "anwalt", Password: davPassword}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	return &pushEnv{env: e, dav: dav, client: c}
}

func (p *pushEnv) name(entryID string) string {
	return caldav.ObjectName(ical.StableUID("kanzlei", entryID))
}

// waitObject polls until the server's object for entryID satisfies ok.
func (p *pushEnv) waitObject(what, entryID string, ok func(info ical.Info, data string) bool) caldav.Object {
	p.t.Helper()
	var obj caldav.Object
	poll.Eventually(p.t, what, func() bool {
		o, err := p.client.Get(context.Background(), p.name(entryID))
		if err != nil {
			return false
		}
		info, err := ical.Inspect(o.Data)
		obj = o
		return err == nil && ok(info, string(o.Data))
	})
	return obj
}

// behindOurBack writes an object as another client of the user would (a phone, Outlook).
func (p *pushEnv) behindOurBack(entryID string, data []byte) {
	p.t.Helper()
	req, err := http.NewRequest(http.MethodPut, p.dav.CalendarURL("anwalt", "postamt")+p.name(entryID), bytes.NewReader(data))
	if err != nil {
		p.t.Fatal(err)
	}
	req.SetBasicAuth("anwalt", davPassword)
	req.Header.Set("Content-Type", "text/calendar")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		p.t.Fatalf("PUT behind our back: %s", resp.Status)
	}
}

// pending is anwalt's pending count.
func (p *pushEnv) pending() int64 {
	st, err := p.calendar.GetSyncStatus(p.as("anwalt"), &calendarv1.GetSyncStatusRequest{})
	if err != nil {
		p.t.Fatal(err)
	}
	return st.GetStatus().GetPendingCount()
}

func TestCalDAVPush(t *testing.T) {
	p := startPushEnv(t)
	sek := p.as("maier")

	// Create: the calendar does not exist yet; it is created, then the deadline written.
	if _, err := p.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: deadline("frist-1", "anwalt", "Berufungsfrist", 31)}); err != nil {
		t.Fatal(err)
	}
	first := p.waitObject("the deadline on the server", "frist-1", func(i ical.Info, _ string) bool { return i.Sequence == 0 })
	poll.Eventually(t, "nothing pending", func() bool { return p.pending() == 0 })

	// Update with the ETag kept from the create.
	up := deadline("frist-1", "anwalt", "Berufungsfrist (verlängert)", 31)
	up.Day.Day = 30
	if _, err := p.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: up}); err != nil {
		t.Fatal(err)
	}
	second := p.waitObject("revision 2 on the server", "frist-1", func(i ical.Info, d string) bool {
		return i.Sequence == 1 && strings.Contains(d, "20260330")
	})
	if second.ETag == first.ETag {
		t.Errorf("ETag unchanged after the update")
	}

	// 412: someone edits the deadline in their calendar; marking it done overwrites that edit,
	// because for deadlines our side wins.
	p.behindOurBack("frist-1", []byte(strings.Replace(string(second.Data), "Berufungsfrist (verlängert)", "Bitte ignorieren", 1)))
	if _, err := p.calendar.MarkDone(sek, &calendarv1.MarkDoneRequest{EntryId: "frist-1", Done: true}); err != nil {
		t.Fatal(err)
	}
	p.waitObject("the done revision despite the edit", "frist-1", func(i ical.Info, d string) bool {
		return i.Sequence == 2 && strings.Contains(d, "X-POSTAMT-DONE:TRUE") && !strings.Contains(d, "ignorieren")
	})
	poll.Eventually(t, "a CONFLICT delivery announced", func() bool {
		for _, m := range p.events("postamt.calendar.v1.EntryDelivered", func() proto.Message { return &calendarv1.EntryDelivered{} }) {
			if d := m.(*calendarv1.EntryDelivered); d.GetEntryId() == "frist-1" && d.GetOutcome() == calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_CONFLICT {
				return true
			}
		}
		return false
	})

	// An appointment rescheduled in the calendar (SEQUENCE bumped there) is kept: our older
	// sequence does not overwrite it.
	if _, err := p.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: appointment("termin-1", "anwalt", "Besprechung", 10, "Europe/Vienna")}); err != nil {
		t.Fatal(err)
	}
	appt := p.waitObject("the appointment on the server", "termin-1", func(i ical.Info, _ string) bool { return i.Sequence == 0 })
	p.behindOurBack("termin-1", []byte(strings.Replace(strings.Replace(string(appt.Data), "SEQUENCE:0", "SEQUENCE:5", 1), "Besprechung", "Besprechung (vom Anwalt verschoben)", 1)))
	if _, err := p.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: appointment("termin-1", "anwalt", "Besprechung mit Unterlagen", 10, "Europe/Vienna")}); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, "the update settled", func() bool { return p.pending() == 0 })
	if o, err := p.client.Get(context.Background(), p.name("termin-1")); err != nil || !strings.Contains(string(o.Data), "vom Anwalt verschoben") {
		t.Errorf("the calendar's reschedule was overwritten: %s, %v", o.Data, err)
	}

	// Cancel: the appointment is deleted with If-Match; a cancelled deadline stays, cancelled.
	if _, err := p.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: appointment("termin-2", "anwalt", "Telefonat", 12, "Europe/Vienna")}); err != nil {
		t.Fatal(err)
	}
	p.waitObject("termin-2 on the server", "termin-2", func(ical.Info, string) bool { return true })
	if _, err := p.calendar.CancelEntry(sek, &calendarv1.CancelEntryRequest{EntryId: "termin-2"}); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, "termin-2 deleted", func() bool {
		_, err := p.client.Get(context.Background(), p.name("termin-2"))
		return errors.Is(err, caldav.ErrNotFound)
	})
	if _, err := p.calendar.CancelEntry(sek, &calendarv1.CancelEntryRequest{EntryId: "frist-1"}); err != nil {
		t.Fatal(err)
	}
	p.waitObject("the cancelled deadline kept", "frist-1", func(i ical.Info, d string) bool {
		return i.Sequence == 3 && strings.Contains(d, "STATUS:CANCELLED")
	})

	// The server goes down: entries wait and are retried; when it is back, nothing is lost.
	p.dav.Stop()
	for _, id := range []string{"frist-2", "frist-3"} {
		if _, err := p.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: deadline(id, "anwalt", "Frist "+id, 20)}); err != nil {
			t.Fatal(err)
		}
	}
	poll.Eventually(t, "a retry in the sync log", func() bool {
		log, err := p.calendar.ListSyncLog(p.as("anwalt"), &calendarv1.ListSyncLogRequest{PageSize: 20})
		if err != nil {
			return false
		}
		for _, l := range log.GetEntries() {
			if l.GetAction() == "RETRY" && strings.Contains(l.GetDetail(), "unavailable") {
				return true
			}
		}
		return false
	})
	if n := p.pending(); n != 2 {
		t.Errorf("pending while the server is down = %d, want 2", n)
	}
	p.dav.Restart(t)
	for _, id := range []string{"frist-2", "frist-3"} {
		p.waitObject(id+" after the server came back", id, func(i ical.Info, _ string) bool { return i.Sequence == 0 })
	}
	poll.Eventually(t, "nothing pending, nothing dead", func() bool {
		st, err := p.calendar.GetSyncStatus(p.as("anwalt"), &calendarv1.GetSyncStatusRequest{})
		return err == nil && st.GetStatus().GetPendingCount() == 0 && st.GetStatus().GetDeadCount() == 0 &&
			st.GetStatus().GetApplicability() == calendarv1.SyncApplicability_SYNC_APPLICABILITY_APPLICABLE
	})
}

// TestCalDAVPushBadCredentials: rejected credentials are permanent: the delivery is dead at
// once (retrying only locks accounts), DeliveryFailed goes out, the metrics count a dead push,
// and /metrics shows the dead item waiting for a person.
func TestCalDAVPushBadCredentials(t *testing.T) {
	dav := radicaletest.Start(t, radicaletest.WithUser("anwalt", davPassword))
	reg := prometheus.NewRegistry()
	e := startEnv(t, envOptions{deps: func(d *app.Deps) {
		d.Getenv = func(string) string { return "wrong" }
		d.Metrics = reg
	}})
	if _, err := e.calendar.UpdateUserSettings(e.admin(), &calendarv1.UpdateUserSettingsRequest{Settings: &calendarv1.UserSettings{
		UserId: "anwalt", Mode: calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH,
		Caldav: &calendarv1.CalDAVTarget{CalendarUrl: dav.CalendarURL("anwalt", "postamt"), Username: "anwalt", PasswordRef: "env:POSTAMT_CALDAV_KANZLEI__ANWALT"},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.calendar.CreateEntry(e.as("maier"), &calendarv1.CreateEntryRequest{Entry: deadline("frist-1", "anwalt", "Frist", 31)}); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, "DeliveryFailed", func() bool {
		evs := e.events("postamt.calendar.v1.DeliveryFailed", func() proto.Message { return &calendarv1.DeliveryFailed{} })
		return len(evs) == 1 && evs[0].(*calendarv1.DeliveryFailed).GetTarget() == "caldav" && evs[0].(*calendarv1.DeliveryFailed).GetAttempts() == 1
	})
	poll.Eventually(t, "a dead push counted", func() bool {
		return pushAttempts(t, reg)["dead"] == 1
	})
	if got := pushAttempts(t, reg); got["ok"] != 0 || got["retry"] != 0 {
		t.Errorf("push attempts %v, want one dead only", got)
	}
	ops := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(ops.Close)
	var page string
	poll.Eventually(t, "/metrics shows the dead item", func() bool {
		page = scrape(t, ops.URL)
		return strings.Contains(page, "\npostamt_calendar_dead_items{target=\"caldav\"} 1\n")
	})
	for _, line := range []string{`postamt_calendar_dead_items{target="agent"} 0`, `postamt_calendar_push_pending_entries 0`,
		`postamt_calendar_pending_entries{target="caldav"} 0`, `postamt_calendar_pending_entries{target="agent"} 0`} {
		if !strings.Contains(page, "\n"+line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	if !strings.Contains(page, "\npostamt_calendar_oldest_dead_age_seconds{target=\"caldav\"} ") {
		t.Error("/metrics lacks the dead item's age")
	}
}

// scrape reads a /metrics page as Prometheus does.
func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// pushAttempts reads postamt_calendar_push_attempts_total by result.
func pushAttempts(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "postamt_calendar_push_attempts_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}
