package app_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/testkit/poll"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/internal/ical"
)

// lawyerEdits changes the server's object of entryID as the lawyer's calendar app would:
// each pair of old/new is replaced once in the iCalendar text.
func (p *pushEnv) lawyerEdits(entryID string, pairs ...string) {
	p.t.Helper()
	obj, err := p.client.Get(context.Background(), p.name(entryID))
	if err != nil {
		p.t.Fatal(err)
	}
	data := string(obj.Data)
	for i := 0; i+1 < len(pairs); i += 2 {
		if !strings.Contains(data, pairs[i]) {
			p.t.Fatalf("the server's object has no %q:\n%s", pairs[i], data)
		}
		data = strings.Replace(data, pairs[i], pairs[i+1], 1)
	}
	p.behindOurBack(entryID, []byte(data))
}

// conflictLine is the detail of anwalt's CONFLICT sync-log line for entryID, "" when none.
func (p *pushEnv) conflictLine(entryID string) string {
	log, err := p.calendar.ListSyncLog(p.as("anwalt"), &calendarv1.ListSyncLogRequest{PageSize: 100})
	if err != nil {
		return ""
	}
	for _, l := range log.GetEntries() {
		if l.GetAction() == "CONFLICT" && l.GetEntryId() == entryID {
			return l.GetDetail()
		}
	}
	return ""
}

func (p *pushEnv) getEntry(id string) *calendarv1.Entry {
	p.t.Helper()
	got, err := p.calendar.GetEntry(p.as("maier"), &calendarv1.GetEntryRequest{EntryId: id})
	if err != nil {
		p.t.Fatal(err)
	}
	return got.GetEntry()
}

// createPushed creates an appointment at 09:00 Vienna and waits until it is in the calendar.
func (p *pushEnv) createPushed(id, summary string) {
	p.t.Helper()
	if _, err := p.calendar.CreateEntry(p.as("maier"), &calendarv1.CreateEntryRequest{Entry: appointment(id, "anwalt", summary, 10, "Europe/Vienna")}); err != nil {
		p.t.Fatal(err)
	}
	p.waitObject(id+" on the server", id, func(ical.Info, string) bool { return true })
	poll.Eventually(p.t, "nothing pending", func() bool { return p.pending() == 0 })
}

// TestCalDAVMergeOneSided: after a 412, a field changed on one side only keeps that side's
// value — the lawyer's LOCATION survives a staff change of SUMMARY, in the calendar and in
// Postamt — and the CONFLICT line says so; nothing is contested, so no warning.
func TestCalDAVMergeOneSided(t *testing.T) {
	p := startPushEnv(t)
	p.createPushed("termin-a", "Besprechung")
	p.lawyerEdits("termin-a", "SEQUENCE:0\r\n", "LOCATION:Besprechungsraum 2\r\nSEQUENCE:0\r\n")

	up := appointment("termin-a", "anwalt", "Besprechung mit Unterlagen", 10, "Europe/Vienna")
	if _, err := p.calendar.UpdateEntry(p.as("maier"), &calendarv1.UpdateEntryRequest{Entry: up}); err != nil {
		t.Fatal(err)
	}
	p.waitObject("both changes in the calendar", "termin-a", func(_ ical.Info, d string) bool {
		return strings.Contains(d, "SUMMARY:Besprechung mit Unterlagen") && strings.Contains(d, "LOCATION:Besprechungsraum 2")
	})
	poll.Eventually(t, "nothing pending", func() bool { return p.pending() == 0 })

	e := p.getEntry("termin-a")
	if got, want := e.GetLocation(), "Besprechungsraum 2"; got != want {
		t.Errorf("Postamt's location = %q, want the lawyer's %q", got, want)
	}
	if got, want := e.GetSummary(), "Besprechung mit Unterlagen"; got != want {
		t.Errorf("Postamt's summary = %q, want the staff's %q", got, want)
	}
	if w := e.GetSyncWarning(); w != "" {
		t.Errorf("sync_warning = %q, want none (nothing was changed on both sides)", w)
	}
	line := p.conflictLine("termin-a")
	for _, want := range []string{"location: changed in the calendar, kept", "summary: changed in Postamt, kept"} {
		if !strings.Contains(line, want) {
			t.Errorf("CONFLICT line %q does not say %q", line, want)
		}
	}
}

// TestCalDAVMergeBothSides: the lawyer moves the appointment to 14:00 (SEQUENCE 7) while staff
// move it to 10:00 and retitle it. Time changed on both sides: the calendar wins (documented
// rule for appointments), Postamt adopts 14:00, and the conflict is surfaced on the entry, in
// GetSyncStatus and in the sync log; the staff's one-sided title change is kept.
func TestCalDAVMergeBothSides(t *testing.T) {
	p := startPushEnv(t)
	p.createPushed("termin-b", "Besprechung")
	p.lawyerEdits("termin-b", "SEQUENCE:0", "SEQUENCE:7", "T090000", "T140000", "T100000", "T150000")

	up := appointment("termin-b", "anwalt", "Besprechung (Mandant kommt)", 10, "Europe/Vienna")
	start := time.Date(2026, 3, 10, 10, 0, 0, 0, vienna)
	up.StartTime, up.EndTime = timestamppb.New(start), timestamppb.New(start.Add(time.Hour))
	if _, err := p.calendar.UpdateEntry(p.as("maier"), &calendarv1.UpdateEntryRequest{Entry: up}); err != nil {
		t.Fatal(err)
	}
	p.waitObject("the merge in the calendar", "termin-b", func(i ical.Info, d string) bool {
		return strings.Contains(d, "SUMMARY:Besprechung (Mandant kommt)") && i.Sequence > 7
	})
	poll.Eventually(t, "nothing pending", func() bool { return p.pending() == 0 })
	if o, err := p.client.Get(context.Background(), p.name("termin-b")); err != nil || !strings.Contains(string(o.Data), "T140000") {
		t.Errorf("the calendar no longer has the lawyer's 14:00: %s, %v", o.Data, err)
	}

	e := p.getEntry("termin-b")
	if got, want := e.GetStartTime().AsTime(), time.Date(2026, 3, 10, 14, 0, 0, 0, vienna); !got.Equal(want) {
		t.Errorf("GetEntry start = %v, want the calendar's %v", got.In(vienna), want)
	}
	const rule = "time: changed on both sides, calendar won"
	if w := e.GetSyncWarning(); !strings.Contains(w, rule) {
		t.Errorf("sync_warning = %q, want it to say %q", w, rule)
	}
	st, err := p.calendar.GetSyncStatus(p.as("anwalt"), &calendarv1.GetSyncStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(st.GetStatus().GetWarnings(), calendarv1.SyncWarning_SYNC_WARNING_CALDAV_CONFLICT) {
		t.Errorf("GetSyncStatus warnings = %v, want CALDAV_CONFLICT", st.GetStatus().GetWarnings())
	}
	if line := p.conflictLine("termin-b"); !strings.Contains(line, rule) {
		t.Errorf("CONFLICT line %q does not say %q", line, rule)
	}

	// A later staff change that reaches the calendar cleanly closes the note.
	up.Summary = "Besprechung (abgesagt?)"
	up.StartTime, up.EndTime = e.GetStartTime(), e.GetEndTime()
	if _, err := p.calendar.UpdateEntry(p.as("maier"), &calendarv1.UpdateEntryRequest{Entry: up}); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, "the note cleared", func() bool {
		st, err := p.calendar.GetSyncStatus(p.as("anwalt"), &calendarv1.GetSyncStatusRequest{})
		return err == nil && p.getEntry("termin-b").GetSyncWarning() == "" &&
			!slices.Contains(st.GetStatus().GetWarnings(), calendarv1.SyncWarning_SYNC_WARNING_CALDAV_CONFLICT)
	})
}

// TestCalDAVSequenceMonotonic: once the calendar raised SEQUENCE to 7, no later push writes a
// lower one (RFC 5545 §3.8.7.4), and each push of a change raises it.
func TestCalDAVSequenceMonotonic(t *testing.T) {
	p := startPushEnv(t)
	p.createPushed("termin-c", "Besprechung")
	p.lawyerEdits("termin-c", "SEQUENCE:0", "SEQUENCE:7", "T090000", "T140000", "T100000", "T150000")

	last := 7
	for i, summary := range []string{"Besprechung 1", "Besprechung 2", "Besprechung 3"} {
		cur := p.getEntry("termin-c") // after the first merge it says 14:00
		up := appointment("termin-c", "anwalt", summary, 10, "Europe/Vienna")
		up.StartTime, up.EndTime = cur.GetStartTime(), cur.GetEndTime()
		if _, err := p.calendar.UpdateEntry(p.as("maier"), &calendarv1.UpdateEntryRequest{Entry: up}); err != nil {
			t.Fatal(err)
		}
		obj := p.waitObject("update "+summary, "termin-c", func(_ ical.Info, d string) bool { return strings.Contains(d, "SUMMARY:"+summary) })
		poll.Eventually(t, "nothing pending", func() bool { return p.pending() == 0 })
		info, err := ical.Inspect(obj.Data)
		if err != nil {
			t.Fatal(err)
		}
		if info.Sequence <= last {
			t.Errorf("update %d: SEQUENCE %d, want above the calendar's previous %d", i+1, info.Sequence, last)
		}
		last = info.Sequence
	}
}
