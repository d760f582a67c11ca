package app_test

import (
	"context"
	"errors"
	"testing"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/radicaletest"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/app"
	"github.com/postamt/postamt/services/calendar/internal/caldav"
	"github.com/postamt/postamt/services/calendar/internal/ical"
)

// TestLiveAgentToServerPushBackfill (issue 15, the backfill rule in the other direction): a
// live-agent user's current and future entries, waiting for an agent that never connected, are
// pushed to their CalDAV calendar as soon as they switch to SERVER_PUSH — without any further
// change to the entries. An entry cancelled before the switch, which no target ever received,
// is not pushed at all. What was queued for the agent stays queued for it (it is delivered if
// the user switches back), so the pending count falls back to exactly that.
func TestLiveAgentToServerPushBackfill(t *testing.T) {
	dav := radicaletest.Start(t, radicaletest.WithUser("anwalt", davPassword))
	e := startEnv(t, envOptions{deps: func(d *app.Deps) {
		d.Getenv = func(name string) string {
			if name == "POSTAMT_CALDAV_KANZLEI__ANWALT" {
				return davPassword
			}
			return ""
		}
	}})
	calURL := dav.CalendarURL("anwalt", "postamt")
	client, err := caldav.New(caldav.Config{CalendarURL: calURL, Credentials: func(context.Context) (caldav.Credentials, error) {
		return caldav.Credentials{Username: "anwalt", Password: davPassword}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	p := &pushEnv{env: e, dav: dav, client: client}
	sek := e.as("maier")

	// anwalt is in the default mode, LIVE_AGENT, and live sync applies; no agent is connected.
	if st := e.status("anwalt"); st.GetEffectiveMode() != calendarv1.SyncMode_SYNC_MODE_LIVE_AGENT ||
		st.GetApplicability() != calendarv1.SyncApplicability_SYNC_APPLICABILITY_APPLICABLE {
		t.Fatalf("status before = %v, want LIVE_AGENT, APPLICABLE", st)
	}
	if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: future(appointment("termin-w", "anwalt", "Verhandlung", 20, "Europe/Vienna"))}); err != nil {
		t.Fatal(err)
	}
	// Booked and cancelled while no agent was connected: withdrawn, never received by anyone.
	if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: future(deadline("frist-c", "anwalt", "Irrtum", 21))}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.calendar.CancelEntry(sek, &calendarv1.CancelEntryRequest{EntryId: "frist-c"}); err != nil {
		t.Fatal(err)
	}
	const leftForAgent = 1 // termin-w, queued for the agent
	if n := p.pending(); n != leftForAgent {
		t.Fatalf("pending before the switch = %d, want %d (termin-w waiting for the agent)", n, leftForAgent)
	}

	if _, err := e.calendar.UpdateUserSettings(e.admin(), &calendarv1.UpdateUserSettingsRequest{Settings: &calendarv1.UserSettings{
		UserId: "anwalt", Mode: calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH, SyncLogEnabled: true,
		Caldav: &calendarv1.CalDAVTarget{CalendarUrl: calURL, Username: "anwalt", PasswordRef: "env:POSTAMT_CALDAV_KANZLEI__ANWALT"},
	}}); err != nil {
		t.Fatal(err)
	}

	p.waitObject("termin-w pushed without a further change", "termin-w", func(i ical.Info, _ string) bool { return i.Sequence == 0 })
	poll.Eventually(t, "nothing waiting for the push target", func() bool {
		st, err := e.calendar.GetSyncStatus(e.admin(), &calendarv1.GetSyncStatusRequest{UserId: "anwalt"})
		s := st.GetStatus()
		return err == nil && s.GetEffectiveMode() == calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH &&
			s.GetApplicability() == calendarv1.SyncApplicability_SYNC_APPLICABILITY_APPLICABLE &&
			s.GetPendingCount() == leftForAgent && s.GetDeadCount() == 0 && len(s.GetWarnings()) == 0
	})
	if _, err := client.Get(context.Background(), p.name("frist-c")); !errors.Is(err, caldav.ErrNotFound) {
		t.Errorf("the cancelled deadline on the server: err = %v, want ErrNotFound (never pushed)", err)
	}
	log, err := e.calendar.ListSyncLog(e.admin(), &calendarv1.ListSyncLogRequest{UserId: "anwalt", PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	acked := false
	for _, l := range log.GetEntries() {
		if l.GetTarget() != "caldav" {
			continue
		}
		if l.GetEntryId() == "frist-c" {
			t.Errorf("sync log line %s for frist-c on caldav, want none", l.GetAction())
		}
		if l.GetEntryId() == "termin-w" && l.GetAction() == "ACKNOWLEDGED" {
			acked = true
		}
	}
	if !acked {
		t.Errorf("no ACKNOWLEDGED caldav line for termin-w in %v", e.logActions("anwalt"))
	}
}
