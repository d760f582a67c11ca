package app_test

import (
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/poll"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/app"
)

var vienna = mustZone("Europe/Vienna")

func mustZone(name string) *time.Location {
	l, err := time.LoadLocation(name)
	if err != nil {
		panic(err)
	}
	return l
}

func appointment(id, owner, summary string, day int, zone string) *calendarv1.Entry {
	start := time.Date(2026, 3, day, 9, 0, 0, 0, vienna)
	return &calendarv1.Entry{
		EntryId: id, OwnerUserId: owner, Kind: calendarv1.EntryKind_ENTRY_KIND_APPOINTMENT, Summary: summary,
		StartTime: timestamppb.New(start), EndTime: timestamppb.New(start.Add(time.Hour)), TimeZone: zone,
	}
}

func deadline(id, owner, summary string, day int) *calendarv1.Entry {
	return &calendarv1.Entry{
		EntryId: id, OwnerUserId: owner, Kind: calendarv1.EntryKind_ENTRY_KIND_DEADLINE, Summary: summary,
		Day: &calendarv1.Date{Year: 2026, Month: 3, Day: int32(day)},
	}
}

func fieldViolations(err error) []string {
	var out []string
	for _, v := range violations(err) {
		out = append(out, v.GetField())
	}
	return out
}

func violations(err error) []*errdetails.BadRequest_FieldViolation {
	var out []*errdetails.BadRequest_FieldViolation
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			out = append(out, br.GetFieldViolations()...)
		}
	}
	return out
}

// TestSeed002Story is seed 002 end to end: a secretary books three appointments for a lawyer
// who is offline and changes one; the lawyer's agent connects later, receives each entry once,
// the changed one as its latest revision, in order; acknowledges; a reconnect delivers nothing
// twice. The secretary, to whom live sync does not apply, sees NOT_APPLICABLE and no warning.
func TestSeed002Story(t *testing.T) {
	e := startEnv(t, envOptions{})
	sek := e.as("maier")

	// The secretary books three appointments for Dr. Huber, one with a Windows zone name.
	for i, a := range []*calendarv1.Entry{
		appointment("termin-1", "huber", "Besprechung Mandant A", 10, "Europe/Vienna"),
		appointment("termin-2", "huber", "Tagsatzung BG Innere Stadt", 11, "W. Europe Standard Time"),
		appointment("termin-3", "huber", "Besprechung Mandant B", 12, "Europe/Vienna"),
	} {
		r, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: a})
		if err != nil {
			t.Fatalf("CreateEntry #%d: %v", i+1, err)
		}
		if r.GetEntry().GetRevision() != 1 || r.GetEntry().GetCreatorUserId() != "maier" || r.GetEntry().GetUid() == "" {
			t.Errorf("created %v", r.GetEntry())
		}
	}
	// The Windows name was mapped to its IANA zone.
	got, err := e.calendar.GetEntry(sek, &calendarv1.GetEntryRequest{EntryId: "termin-2"})
	if err != nil || got.GetEntry().GetTimeZone() != "Europe/Berlin" || !strings.Contains(got.GetIcal(), "TZID=Europe/Berlin") {
		t.Fatalf("termin-2 = %v, %v; want zone Europe/Berlin", got.GetEntry().GetTimeZone(), err)
	}

	// Repeating a create is harmless; the same id with other content is ALREADY_EXISTS.
	again, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: appointment("termin-1", "huber", "Besprechung Mandant A", 10, "Europe/Vienna")})
	if err != nil || !again.GetAlreadyExisted() {
		t.Errorf("repeated CreateEntry = %v, %v; want already_existed", again, err)
	}
	_, err = e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: appointment("termin-1", "huber", "Etwas anderes", 10, "Europe/Vienna")})
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("CreateEntry with a used id = %v, want AlreadyExists", err)
	}

	// While Dr. Huber is still offline, the hearing moves by an hour.
	moved := appointment("termin-2", "huber", "Tagsatzung BG Innere Stadt (verlegt)", 11, "W. Europe Standard Time")
	moved.StartTime = timestamppb.New(time.Date(2026, 3, 11, 10, 0, 0, 0, vienna))
	moved.EndTime = timestamppb.New(time.Date(2026, 3, 11, 11, 0, 0, 0, vienna))
	up, err := e.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: moved, ExpectedRevision: 1})
	if err != nil || up.GetEntry().GetRevision() != 2 || up.GetEntry().GetSequence() != 1 {
		t.Fatalf("UpdateEntry = %v, %v", up, err)
	}

	// Statuses before the agent connects.
	st, err := e.calendar.GetSyncStatus(e.as("huber"), &calendarv1.GetSyncStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if s := st.GetStatus(); s.GetApplicability() != calendarv1.SyncApplicability_SYNC_APPLICABILITY_APPLICABLE ||
		s.GetEffectiveMode() != calendarv1.SyncMode_SYNC_MODE_LIVE_AGENT || s.GetPendingCount() != 3 || !s.GetNoticePending() ||
		!slices.Contains(s.GetWarnings(), calendarv1.SyncWarning_SYNC_WARNING_AGENT_NEVER_CONNECTED) {
		t.Errorf("lawyer's status = %v", s)
	}
	st, err = e.calendar.GetSyncStatus(sek, &calendarv1.GetSyncStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := &calendarv1.SyncStatus{UserId: "maier", Applicability: calendarv1.SyncApplicability_SYNC_APPLICABILITY_NOT_APPLICABLE, EffectiveMode: calendarv1.SyncMode_SYNC_MODE_OFF}
	if !proto.Equal(st.GetStatus(), want) {
		t.Errorf("secretary's status = %v, want %v (no warning, no notice)", st.GetStatus(), want)
	}

	// Dr. Huber's agent connects and receives the three entries, termin-2 once, as revision 2.
	a, w, err := e.connect("huber", &calendarv1.Hello{AgentId: "outlook-pc-17"})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	if w.GetSessionId() == "" || w.GetAckedPosition() != 0 {
		t.Errorf("Welcome = %v", w)
	}
	var ds []*calendarv1.Delivery
	for range 3 {
		ds = append(ds, a.next())
	}
	var ids []string
	for i, d := range ds {
		ids = append(ids, d.GetEntry().GetEntryId())
		if i > 0 && d.GetPosition() <= ds[i-1].GetPosition() {
			t.Errorf("positions not increasing: %d after %d", d.GetPosition(), ds[i-1].GetPosition())
		}
		if d.GetAction() != calendarv1.DeliveryAction_DELIVERY_ACTION_UPSERT || !strings.Contains(d.GetIcal(), "UID:"+d.GetEntry().GetUid()) {
			t.Errorf("delivery %d = %v", i, d)
		}
	}
	if want := []string{"termin-1", "termin-3", "termin-2"}; !slices.Equal(ids, want) {
		t.Errorf("delivered %v, want %v (in order of the changes, the update superseding revision 1)", ids, want)
	}
	if d := ds[2]; d.GetEntry().GetRevision() != 2 || !strings.Contains(d.GetIcal(), "SEQUENCE:1") || !strings.Contains(d.GetIcal(), "verlegt") {
		t.Errorf("termin-2 delivered as revision %d:\n%s", d.GetEntry().GetRevision(), d.GetIcal())
	}
	for i, d := range ds {
		a.ack(d, calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_APPLIED, "outlook-"+ids[i])
	}
	last := ds[2].GetPosition()
	poll.Eventually(t, "all acknowledged", func() bool {
		st, err := e.calendar.GetSyncStatus(e.as("huber"), &calendarv1.GetSyncStatusRequest{})
		return err == nil && st.GetStatus().GetPendingCount() == 0 && st.GetStatus().GetAckedPosition() == last &&
			st.GetStatus().GetAgent().GetOnline() && st.GetStatus().GetAgent().GetAgentId() == "outlook-pc-17" &&
			len(st.GetStatus().GetWarnings()) == 0
	})

	// The agent reconnects: nothing is delivered again. A new entry is the first delivery.
	a.close()
	a2, w2, err := e.connect("huber", &calendarv1.Hello{AgentId: "outlook-pc-17", LastAckedPosition: last, UserId: "huber"})
	if err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	if w2.GetAckedPosition() != last {
		t.Errorf("Welcome after reconnect = %v, want acked position %d", w2, last)
	}
	if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: appointment("termin-4", "huber", "Neu", 13, "Europe/Vienna")}); err != nil {
		t.Fatal(err)
	}
	d := a2.next()
	if d.GetEntry().GetEntryId() != "termin-4" || d.GetPosition() <= last {
		t.Errorf("first delivery after reconnect = %s at %d, want termin-4 after %d", d.GetEntry().GetEntryId(), d.GetPosition(), last)
	}
	// An update carries the remote id the agent reported.
	moved.Summary = "Tagsatzung (nochmals verlegt)"
	if _, err := e.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: moved}); err != nil {
		t.Fatal(err)
	}
	if d := a2.next(); d.GetEntry().GetEntryId() != "termin-2" || d.GetRemoteId() != "outlook-termin-2" || d.GetEntry().GetRevision() != 3 {
		t.Errorf("update delivered as %v", d)
	}

	// The one-time notice, once acknowledged, stays gone.
	ack, err := e.calendar.AcknowledgeNotice(e.as("huber"), &calendarv1.AcknowledgeNoticeRequest{})
	if err != nil || ack.GetStatus().GetNoticePending() {
		t.Errorf("AcknowledgeNotice = %v, %v", ack, err)
	}

	// Every revision was announced; every acknowledged delivery too.
	poll.Eventually(t, "events on JetStream", func() bool {
		return len(e.events("postamt.calendar.v1.EntryChanged", func() proto.Message { return &calendarv1.EntryChanged{} })) == 6 &&
			len(e.events("postamt.calendar.v1.EntryDelivered", func() proto.Message { return &calendarv1.EntryDelivered{} })) == 3
	})
}

// TestBadInput checks every kind of bad input is refused with the right code and field.
func TestBadInput(t *testing.T) {
	e := startEnv(t, envOptions{})
	sek := e.as("maier")
	if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: appointment("a-1", "huber", "Termin", 10, "Europe/Vienna")}); err != nil {
		t.Fatal(err)
	}
	backwards := appointment("x", "huber", "Rückwärts", 10, "Europe/Vienna")
	backwards.EndTime = timestamppb.New(backwards.GetStartTime().AsTime().Add(-time.Minute))
	rrule := appointment("x", "huber", "Serie", 10, "Europe/Vienna")
	rrule.Rrule = "FREQ=SOMETIMES"
	deadlineWithZone := deadline("x", "huber", "Frist", 31)
	deadlineWithZone.TimeZone = "Europe/Vienna"
	prelim := deadline("x", "huber", "Vorfrist", 20)
	prelim.Kind = calendarv1.EntryKind_ENTRY_KIND_PRELIMINARY_DEADLINE
	prelim.DeadlineEntryId = "a-1"
	long := appointment("x", "huber", strings.Repeat("x", 2000), 10, "Europe/Vienna")
	// iCalendar writes four-digit years: the next day after 9999-12-31 (a deadline's exclusive
	// DTEND) or 9999-12-31T23:59:59Z on Vienna's clock would be the year 10000.
	lastDay := deadline("x", "huber", "Frist", 1)
	lastDay.Day = &calendarv1.Date{Year: 9999, Month: 12, Day: 31}
	lateEnd := appointment("x", "huber", "Termin", 10, "Europe/Vienna")
	lateEnd.StartTime = timestamppb.New(time.Date(9999, 12, 31, 20, 0, 0, 0, time.UTC))
	lateEnd.EndTime = timestamppb.New(time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC))
	lateException := appointment("x", "huber", "Serie", 10, "Europe/Vienna")
	lateException.Rrule = "FREQ=YEARLY"
	lateException.ExceptStartTimes = []*timestamppb.Timestamp{timestamppb.New(time.Date(9999, 12, 31, 23, 30, 0, 0, time.UTC))}
	early := appointment("x", "huber", "Termin", 10, "America/New_York")
	early.StartTime = timestamppb.New(time.Date(1, 1, 1, 2, 0, 0, 0, time.UTC)) // the year 0 in New York
	early.EndTime = timestamppb.New(time.Date(1, 1, 1, 12, 0, 0, 0, time.UTC))
	for _, tc := range []struct {
		name   string
		entry  *calendarv1.Entry
		code   codes.Code
		fields []string
	}{
		{"end before start", backwards, codes.InvalidArgument, []string{"entry.end_time"}},
		{"unknown time zone", appointment("x", "huber", "Termin", 10, "Mars/Olympus_Mons"), codes.InvalidArgument, []string{"entry.time_zone"}},
		{"unknown Windows zone", appointment("x", "huber", "Termin", 10, "Atlantis Standard Time"), codes.InvalidArgument, []string{"entry.time_zone"}},
		{"invalid rrule", rrule, codes.InvalidArgument, []string{"entry.rrule"}},
		{"no kind", &calendarv1.Entry{EntryId: "x", OwnerUserId: "huber", Summary: "?"}, codes.InvalidArgument, []string{"entry.kind"}},
		{"bad id", appointment("../x", "huber", "Termin", 10, "Europe/Vienna"), codes.InvalidArgument, []string{"entry.entry_id"}},
		{"summary too long", long, codes.InvalidArgument, []string{"entry.summary"}},
		{"zone on a deadline", deadlineWithZone, codes.InvalidArgument, []string{"entry.time_zone"}},
		{"preliminary deadline linked to an appointment", prelim, codes.InvalidArgument, []string{"entry.deadline_entry_id"}},
		{"owner unknown in the tenant", appointment("x", "nobody", "Termin", 10, "Europe/Vienna"), codes.NotFound, nil},
		{"a deadline on 9999-12-31", lastDay, codes.InvalidArgument, []string{"entry.day"}},
		{"an end in the year 10000 in the entry's zone", lateEnd, codes.InvalidArgument, []string{"entry.end_time"}},
		{"an exception in the year 10000 in the entry's zone", lateException, codes.InvalidArgument, []string{"entry.except_start_times"}},
		{"a start in the year 0 in the entry's zone", early, codes.InvalidArgument, []string{"entry.start_time"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: tc.entry})
			if status.Code(err) != tc.code {
				t.Fatalf("CreateEntry = %v, want %v", err, tc.code)
			}
			if got := fieldViolations(err); tc.fields != nil && !slices.Equal(got, tc.fields) {
				t.Errorf("field violations = %v, want %v", got, tc.fields)
			}
		})
	}
	t.Run("the zero instant is out of range, not missing", func(t *testing.T) {
		zero := appointment("x", "huber", "Termin", 10, "UTC")
		zero.StartTime = timestamppb.New(time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC))
		zero.EndTime = timestamppb.New(time.Date(1, 1, 1, 1, 0, 0, 0, time.UTC))
		for _, call := range []struct {
			name string
			do   func() error
		}{
			{"CreateEntry", func() error {
				_, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: zero})
				return err
			}},
			{"UpdateEntry", func() error {
				zero.EntryId = "a-1"
				_, err := e.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: zero})
				return err
			}},
		} {
			err := call.do()
			got := violations(err)
			if status.Code(err) != codes.InvalidArgument || len(got) != 1 || got[0].GetField() != "entry.start_time" ||
				got[0].GetDescription() == "is required" {
				t.Errorf("%s with start 0001-01-01T00:00:00Z = %v, want InvalidArgument on entry.start_time (out of range, not required)", call.name, err)
			}
		}
	})
	t.Run("a tenant that does not exist", func(t *testing.T) {
		nobody := authtest.Outgoing(t, e.signer, auth.Principal{Tenant: "niemand", User: "huber", Roles: []string{auth.RoleAdmin}})
		_, err := e.calendar.CreateEntry(nobody, &calendarv1.CreateEntryRequest{Entry: appointment("x", "huber", "Termin", 10, "Europe/Vienna")})
		if st := status.Convert(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "does not exist") {
			t.Errorf("CreateEntry in an unknown tenant = %v, want FailedPrecondition TENANT_NOT_FOUND", err)
		}
		if _, err := e.calendar.GetEntry(nobody, &calendarv1.GetEntryRequest{EntryId: "a-1"}); status.Code(err) != codes.NotFound {
			t.Errorf("GetEntry in an unknown tenant = %v, want NotFound (reads as an empty tenant)", err)
		}
	})
	t.Run("owner in another tenant", func(t *testing.T) {
		_, err := e.calendar.CreateEntry(e.other(), &calendarv1.CreateEntryRequest{Entry: appointment("x", "huber", "Termin", 10, "Europe/Vienna")})
		if status.Code(err) != codes.NotFound {
			t.Errorf("CreateEntry for huber from another tenant = %v, want NotFound", err)
		}
		_, err = e.calendar.GetEntry(e.other(), &calendarv1.GetEntryRequest{EntryId: "a-1"})
		if status.Code(err) != codes.NotFound {
			t.Errorf("GetEntry from another tenant = %v, want NotFound", err)
		}
	})
	t.Run("mark an appointment done", func(t *testing.T) {
		_, err := e.calendar.MarkDone(sek, &calendarv1.MarkDoneRequest{EntryId: "a-1", Done: true})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("MarkDone(appointment) = %v, want FailedPrecondition", err)
		}
	})
	t.Run("stale expected revision", func(t *testing.T) {
		_, err := e.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: appointment("a-1", "huber", "Termin", 10, "Europe/Vienna"), ExpectedRevision: 7})
		if status.Code(err) != codes.Aborted {
			t.Errorf("UpdateEntry(expected 7) = %v, want Aborted", err)
		}
	})
	t.Run("tenant settings need an admin", func(t *testing.T) {
		_, err := e.calendar.UpdateTenantSettings(sek, &calendarv1.UpdateTenantSettingsRequest{Settings: &calendarv1.TenantSettings{}})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("UpdateTenantSettings as a user = %v, want PermissionDenied", err)
		}
	})
	t.Run("another user's settings", func(t *testing.T) {
		_, err := e.calendar.GetUserSettings(sek, &calendarv1.GetUserSettingsRequest{UserId: "huber"})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("GetUserSettings(huber) as maier = %v, want PermissionDenied", err)
		}
	})
	t.Run("a password instead of a reference", func(t *testing.T) {
		_, err := e.calendar.UpdateUserSettings(e.as("anwalt"), &calendarv1.UpdateUserSettingsRequest{Settings: &calendarv1.UserSettings{
			Mode:   calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH,
			Caldav: &calendarv1.CalDAVTarget{CalendarUrl: "https://dav.example/anwalt/", Username: "anwalt", PasswordRef: "hunter2"},
		}})
		if got := fieldViolations(err); status.Code(err) != codes.InvalidArgument || !slices.Equal(got, []string{"settings.caldav.password_ref"}) {
			t.Errorf("UpdateUserSettings = %v (%v), want InvalidArgument on password_ref", err, got)
		}
	})
	t.Run("another tenant's password", func(t *testing.T) {
		// The references are scoped per tenant: andere's user may name POSTAMT_CALDAV_ANDERE__*
		// and /run/secrets/postamt/andere.*, never kanzlei's.
		for _, ref := range []string{"env:POSTAMT_CALDAV_KANZLEI__ANWALT", "file:/run/secrets/postamt/kanzlei.anwalt", "env:POSTAMT_CALDAV_ANWALT"} {
			_, err := e.calendar.UpdateUserSettings(e.other(), &calendarv1.UpdateUserSettingsRequest{Settings: &calendarv1.UserSettings{
				Mode:   calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH,
				Caldav: &calendarv1.CalDAVTarget{CalendarUrl: "https://dav.example/huber/", Username: "huber", PasswordRef: ref},
			}})
			if got := fieldViolations(err); status.Code(err) != codes.InvalidArgument || !slices.Equal(got, []string{"settings.caldav.password_ref"}) {
				t.Errorf("UpdateUserSettings(%s) in andere = %v (%v), want InvalidArgument on password_ref", ref, err, got)
			}
		}
	})
	t.Run("agent with another user's token", func(t *testing.T) {
		_, _, err := e.connect("maier", &calendarv1.Hello{AgentId: "pc-1", UserId: "huber"})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("Connect as maier for huber = %v, want PermissionDenied", err)
		}
	})
	t.Run("agent of a user live sync does not apply to", func(t *testing.T) {
		_, _, err := e.connect("maier", &calendarv1.Hello{AgentId: "pc-1"})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("Connect as maier = %v, want FailedPrecondition", err)
		}
	})
	t.Run("agent with a bad ack", func(t *testing.T) {
		a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc-1"})
		if err != nil {
			t.Fatal(err)
		}
		d := a.next()
		a.ack(d, calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_UNSPECIFIED, "")
		if err := a.ended(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("stream after an ack without outcome ended with %v, want InvalidArgument", err)
		}
	})
}

// TestOneStreamPerUser: a second stream of the same user replaces the first, which ends with
// ABORTED; deliveries go to the new one.
func TestOneStreamPerUser(t *testing.T) {
	e := startEnv(t, envOptions{})
	first, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	second, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "desktop"})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.ended(); status.Code(err) != codes.Aborted {
		t.Errorf("the replaced stream ended with %v, want Aborted", err)
	}
	if _, err := e.calendar.CreateEntry(e.as("maier"), &calendarv1.CreateEntryRequest{Entry: deadline("frist-1", "huber", "Berufungsfrist", 31)}); err != nil {
		t.Fatal(err)
	}
	d := second.next()
	if d.GetEntry().GetEntryId() != "frist-1" || !strings.Contains(d.GetIcal(), "DTSTART;VALUE=DATE:20260331") {
		t.Errorf("delivery = %v", d)
	}
	st, err := e.calendar.GetSyncStatus(e.admin(), &calendarv1.GetSyncStatusRequest{UserId: "huber"})
	if err != nil || st.GetStatus().GetAgent().GetAgentId() != "desktop" || !st.GetStatus().GetAgent().GetOnline() {
		t.Errorf("presence = %v, %v; want desktop online", st.GetStatus().GetAgent(), err)
	}
}

// TestAgentErrorsRetryThenDead: an agent's ERROR answers bring a delivery again, until the
// attempts are used up; then it is dead, DeliveryFailed goes out and the status warns.
func TestAgentErrorsRetryThenDead(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := startEnv(t, envOptions{deps: func(d *app.Deps) { d.Metrics = reg }})
	ops := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t.Cleanup(ops.Close)
	if _, err := e.calendar.UpdateUserSettings(e.as("huber"), &calendarv1.UpdateUserSettingsRequest{Settings: &calendarv1.UserSettings{SyncLogEnabled: true}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.calendar.CreateEntry(e.as("maier"), &calendarv1.CreateEntryRequest{Entry: deadline("frist-1", "huber", "Frist", 31)}); err != nil {
		t.Fatal(err)
	}
	// Dr. Huber's agent has not connected: the deadline waits for it, and /metrics says so.
	poll.Eventually(t, "/metrics shows the entry waiting for the agent", func() bool {
		page := scrape(t, ops.URL)
		return strings.Contains(page, "\npostamt_calendar_pending_entries{target=\"agent\"} 1\n") &&
			strings.Contains(page, "\npostamt_calendar_dead_items{target=\"agent\"} 0\n")
	})
	a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // CALENDAR_AGENT_MAX_ATTEMPTS is 3 in tests
		d := a.next()
		if d.GetAttempt() != int32(i) {
			t.Errorf("delivery %d has attempt %d", i, d.GetAttempt())
		}
		if err := a.stream.Send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Ack{Ack: &calendarv1.Ack{
			Position: d.GetPosition(), Outcome: calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_ERROR, Message: "Outlook is busy",
		}}}); err != nil {
			t.Fatal(err)
		}
	}
	poll.Eventually(t, "dead delivery", func() bool {
		st, err := e.calendar.GetSyncStatus(e.as("huber"), &calendarv1.GetSyncStatusRequest{})
		return err == nil && st.GetStatus().GetDeadCount() == 1 && st.GetStatus().GetPendingCount() == 0 &&
			slices.Contains(st.GetStatus().GetWarnings(), calendarv1.SyncWarning_SYNC_WARNING_DELIVERIES_DEAD)
	})
	poll.Eventually(t, "DeliveryFailed", func() bool {
		return len(e.events("postamt.calendar.v1.DeliveryFailed", func() proto.Message { return &calendarv1.DeliveryFailed{} })) == 1
	})
	poll.Eventually(t, "/metrics shows the dead delivery and nothing pending", func() bool {
		page := scrape(t, ops.URL)
		return strings.Contains(page, "\npostamt_calendar_pending_entries{target=\"agent\"} 0\n") &&
			strings.Contains(page, "\npostamt_calendar_dead_items{target=\"agent\"} 1\n")
	})
	log, err := e.calendar.ListSyncLog(e.as("huber"), &calendarv1.ListSyncLogRequest{PageSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, l := range log.GetEntries() {
		actions = append(actions, l.GetAction())
	}
	if want := []string{"DEAD", "DELIVERED", "RETRY"}; !slices.Equal(actions, want) || log.GetNextPageToken() == "" {
		t.Errorf("newest log lines = %v (next %q), want %v and more", actions, log.GetNextPageToken(), want)
	}
	older, err := e.calendar.ListSyncLog(e.as("huber"), &calendarv1.ListSyncLogRequest{PageSize: 10, PageToken: log.GetNextPageToken()})
	if err != nil || len(older.GetEntries()) < 2 || older.GetEntries()[len(older.GetEntries())-1].GetAction() != "QUEUED" {
		t.Errorf("older log lines = %v, %v", older, err)
	}
}

func TestConfigValidate(t *testing.T) {
	good := testConfig("127.0.0.1:1")
	if err := good.Validate(); err != nil {
		t.Fatalf("test config: %v", err)
	}
	for name, mutate := range map[string]func(*app.Config){
		"no mailbox":      func(c *app.Config) { c.MailboxAddr = "" },
		"bad retry":       func(c *app.Config) { c.PushRetry = "5s,soon" },
		"short lease":     func(c *app.Config) { c.PushLease = c.PushTimeout },
		"relative secret": func(c *app.Config) { c.SecretDir = "secrets" },
	} {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate = nil", name)
		}
	}
}

// TestListEntriesByRange: a range lists the entries starting in it and the series that began
// before it and still recur in it, in start order, across pages; a series that ended before the
// range, or stops recurring, is not listed.
func TestListEntriesByRange(t *testing.T) {
	e := startEnv(t, envOptions{})
	sek := e.as("maier")
	book := func(en *calendarv1.Entry) {
		t.Helper()
		if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: en}); err != nil {
			t.Fatalf("create %s: %v", en.GetEntryId(), err)
		}
	}
	weekly := appointment("weekly", "huber", "Jour fixe", 2, "Europe/Vienna") // 2026-03-02
	weekly.StartTime = timestamppb.New(time.Date(2026, 2, 2, 9, 0, 0, 0, vienna))
	weekly.EndTime = timestamppb.New(time.Date(2026, 2, 2, 10, 0, 0, 0, vienna))
	weekly.Rrule = "FREQ=WEEKLY;COUNT=10" // until 2026-04-06
	ended := appointment("ended", "huber", "Vorbei", 5, "Europe/Vienna")
	ended.StartTime = timestamppb.New(time.Date(2026, 1, 5, 9, 0, 0, 0, vienna))
	ended.EndTime = timestamppb.New(time.Date(2026, 1, 5, 10, 0, 0, 0, vienna))
	ended.Rrule = "FREQ=WEEKLY;UNTIL=20260131T000000Z"
	open := appointment("open", "huber", "Immer montags", 5, "Europe/Vienna")
	open.StartTime = timestamppb.New(time.Date(2025, 12, 1, 8, 0, 0, 0, vienna))
	open.EndTime = timestamppb.New(time.Date(2025, 12, 1, 9, 0, 0, 0, vienna))
	open.Rrule = "FREQ=WEEKLY"
	for _, en := range []*calendarv1.Entry{
		weekly, ended, open,
		appointment("march", "huber", "Mandant", 5, "Europe/Vienna"),
		deadline("frist", "huber", "Frist", 10),
		appointment("april", "huber", "Spaeter", 20, "Europe/Vienna"),
	} {
		book(en)
	}
	list := func(size int32) []string {
		t.Helper()
		var ids []string
		tok := ""
		for {
			r, err := e.calendar.ListEntries(sek, &calendarv1.ListEntriesRequest{
				OwnerUserId: "huber", StartTime: timestamppb.New(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)),
				EndTime: timestamppb.New(time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC)), PageSize: size, PageToken: tok,
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, en := range r.GetEntries() {
				ids = append(ids, en.GetEntryId())
			}
			if tok = r.GetNextPageToken(); tok == "" {
				return ids
			}
		}
	}
	want := []string{"open", "weekly", "march", "frist"}
	for _, size := range []int32{50, 1} {
		if got := list(size); !slices.Equal(got, want) {
			t.Errorf("page size %d: listed %v, want %v", size, got, want)
		}
	}
	// The weekly series becomes a single appointment in February: no longer in March.
	weekly.Rrule = ""
	if _, err := e.calendar.UpdateEntry(sek, &calendarv1.UpdateEntryRequest{Entry: weekly}); err != nil {
		t.Fatal(err)
	}
	if got, want := list(50), []string{"open", "march", "frist"}; !slices.Equal(got, want) {
		t.Errorf("after the update: listed %v, want %v", got, want)
	}
}

// TestListEntriesSeriesEastOfUTC: a series is found by its last occurrence as its own zone
// counts: BYDAY names Auckland's days, so the second occurrence of a Monday-and-Sunday series
// that starts on Monday 14 December, 09:00 NZDT (Sunday the 13th in UTC) is Sunday the 20th,
// 09:00 NZDT (the 19th, 20:00 UTC) — inside a range that begins after the first.
func TestListEntriesSeriesEastOfUTC(t *testing.T) {
	e := startEnv(t, envOptions{})
	sek := e.as("maier")
	nz := &calendarv1.Entry{
		EntryId: "nz1", OwnerUserId: "huber", Kind: calendarv1.EntryKind_ENTRY_KIND_APPOINTMENT, Summary: "Weekly call Auckland",
		StartTime: timestamppb.New(time.Date(2026, 12, 13, 20, 0, 0, 0, time.UTC)),
		EndTime:   timestamppb.New(time.Date(2026, 12, 13, 21, 0, 0, 0, time.UTC)),
		TimeZone:  "Pacific/Auckland", Rrule: "FREQ=WEEKLY;BYDAY=MO,SU;COUNT=2",
	}
	if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: nz}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		from, to time.Time
		want     []string
	}{
		{"the second occurrence", time.Date(2026, 12, 16, 0, 0, 0, 0, time.UTC), time.Date(2026, 12, 21, 0, 0, 0, 0, time.UTC), []string{"nz1"}},
		{"after the last occurrence", time.Date(2026, 12, 19, 20, 0, 1, 0, time.UTC), time.Date(2026, 12, 31, 0, 0, 0, 0, time.UTC), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := e.calendar.ListEntries(sek, &calendarv1.ListEntriesRequest{
				OwnerUserId: "huber", StartTime: timestamppb.New(tc.from), EndTime: timestamppb.New(tc.to),
			})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, en := range r.GetEntries() {
				got = append(got, en.GetEntryId())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("listed %v, want %v", got, tc.want)
			}
		})
	}
}

// TestManyAcksAtOnce: an agent that acknowledges a backlog as fast as it arrives (the acks are
// recorded in batches) leaves nothing pending, and a reconnect delivers nothing again; acks sent
// just before the agent closes its side are recorded too.
func TestManyAcksAtOnce(t *testing.T) {
	e := startEnv(t, envOptions{})
	sek := e.as("maier")
	const n = 300
	for i := range n {
		if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: deadline(fmt.Sprintf("frist-%03d", i), "huber", "Frist", 1+i%28)}); err != nil {
			t.Fatal(err)
		}
	}
	a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "outlook"})
	if err != nil {
		t.Fatal(err)
	}
	var last int64
	seen := map[string]bool{}
	for range n {
		d := a.next()
		if seen[d.GetEntry().GetEntryId()] {
			t.Fatalf("%s delivered twice", d.GetEntry().GetEntryId())
		}
		seen[d.GetEntry().GetEntryId()] = true
		a.ack(d, calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_APPLIED, "r-"+d.GetEntry().GetEntryId())
		last = d.GetPosition()
	}
	// The agent says goodbye right after its last ack (half-close): the acks still on their way
	// are recorded before the stream ends.
	if err := a.stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := a.ended(); !errors.Is(err, io.EOF) {
		t.Fatalf("stream ended with %v, want a clean end", err)
	}
	poll.Eventually(t, "every ack recorded", func() bool {
		st, err := e.calendar.GetSyncStatus(e.as("huber"), &calendarv1.GetSyncStatusRequest{})
		return err == nil && st.GetStatus().GetPendingCount() == 0 && st.GetStatus().GetAckedPosition() == last
	})
	b, w, err := e.connect("huber", &calendarv1.Hello{AgentId: "outlook"})
	if err != nil {
		t.Fatal(err)
	}
	if w.GetAckedPosition() != last {
		t.Errorf("Welcome acked position %d, want %d", w.GetAckedPosition(), last)
	}
	if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: deadline("neu", "huber", "Neu", 2)}); err != nil {
		t.Fatal(err)
	}
	if d := b.next(); d.GetEntry().GetEntryId() != "neu" {
		t.Errorf("after the reconnect the first delivery is %s, want the new entry", d.GetEntry().GetEntryId())
	}
}

// TestDrainEndsAgentStreams: an agent's stream never ends by itself, so a replica's drain ends it
// (UNAVAILABLE: reconnect, to another replica) instead of being held for the drain timeout (here
// an hour); the service then stops cleanly.
func TestDrainEndsAgentStreams(t *testing.T) {
	e := startEnv(t, envOptions{deps: func(d *app.Deps) { d.Server.DrainTimeout = time.Hour }})
	a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "outlook-pc-17"})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- e.stopCalendar() }()
	if err := a.ended(); status.Code(err) != codes.Unavailable {
		t.Errorf("the agent's stream ended with %v, want UNAVAILABLE", err)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("calendar stopped with %v", err)
		}
	case <-time.After(poll.Timeout):
		t.Fatal("the calendar service did not stop: the agent's stream held its drain")
	}
}
