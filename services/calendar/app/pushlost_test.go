package app_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/postamt/postamt/internal/testkit/poll"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/app"
	"github.com/postamt/postamt/services/calendar/internal/ical"
)

// answerLosingTransport sends every request to the server, but while lose is set it reports
// the answer to each PUT as lost (a network error after the server acted on it): what the
// calendar sees when the CalDAV server is killed between storing an object and answering, or
// the connection breaks on the way back.
type answerLosingTransport struct {
	lose atomic.Bool
}

func (l *answerLosingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil || req.Method != http.MethodPut || !l.lose.Load() {
		return resp, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return nil, errors.New("test: the answer to the PUT was lost")
}

// TestCalDAVLostAnswerThenNewRevision (issue 17, the CalDAV server killed mid-push): the
// server stored a revision of ours but its answer was lost, and a newer revision came before
// the retry. Its push meets a 412 over an object that is our own earlier revision — not a
// change made in the calendar. It must overwrite it as an update of ours: no merge that lets
// "the calendar" win with our own older text (which adopted it and silently undid the staff's
// change), no conflict warning. Both with no base yet (the create's answer lost) and with one
// (an update's answer lost).
func TestCalDAVLostAnswerThenNewRevision(t *testing.T) {
	lt := &answerLosingTransport{}
	p := startPushEnv(t, func(d *app.Deps) { d.HTTPClient = &http.Client{Transport: lt} })
	sek := p.as("maier")
	update := func(id, summary string) {
		t.Helper()
		if _, err := p.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: appointment(id, "anwalt", summary, 10, "Europe/Vienna")}); err != nil {
			t.Fatal(err)
		}
	}
	p.createPushed("termin-m", "Besprechung M1") // pushed, its base kept

	lt.lose.Store(true)
	if _, err := p.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: appointment("termin-l", "anwalt", "Besprechung L1", 10, "Europe/Vienna")}); err != nil {
		t.Fatal(err)
	}
	update("termin-m", "Besprechung M2")
	p.waitObject("termin-l's first revision stored, its answer lost", "termin-l", func(i ical.Info, _ string) bool { return i.Summary == "Besprechung L1" })
	p.waitObject("termin-m's second revision stored, its answer lost", "termin-m", func(i ical.Info, _ string) bool { return i.Summary == "Besprechung M2" })
	update("termin-l", "Besprechung L2")
	update("termin-m", "Besprechung M3")
	lt.lose.Store(false)

	poll.Eventually(t, "nothing pending", func() bool { return p.pending() == 0 })
	for _, c := range []struct{ id, want string }{{"termin-l", "Besprechung L2"}, {"termin-m", "Besprechung M3"}} {
		id, want := c.id, c.want
		if o, err := p.client.Get(context.Background(), p.name(id)); err != nil {
			t.Errorf("%s: %v", id, err)
		} else if i, err := ical.Inspect(o.Data); err != nil || i.Summary != want {
			t.Errorf("%s in the calendar: %q (%v), want the latest revision's %q", id, i.Summary, err, want)
		}
		e := p.getEntry(id)
		if e.GetSummary() != want || e.GetSyncWarning() != "" {
			t.Errorf("%s: summary %q (revision %d), sync_warning %q; want the staff's %q, no warning", id, e.GetSummary(), e.GetRevision(), e.GetSyncWarning(), want)
		}
		if line := p.conflictLine(id); strings.Contains(line, "calendar won") || strings.Contains(line, "adopted") {
			t.Errorf("%s: CONFLICT line %q; our own earlier revision is no change made in the calendar", id, line)
		}
	}
}
