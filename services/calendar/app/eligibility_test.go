package app_test

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/testkit/poll"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/calendar/app"
)

// future moves an entry a month ahead of now: catching up queues current and future entries.
func future(en *calendarv1.Entry) *calendarv1.Entry {
	at := time.Now().AddDate(0, 1, 0)
	if en.GetDay() != nil {
		en.Day = &calendarv1.Date{Year: int32(at.Year()), Month: int32(at.Month()), Day: int32(at.Day())}
		return en
	}
	en.StartTime, en.EndTime = timestamppb.New(at), timestamppb.New(at.Add(time.Hour))
	return en
}

// status reads a user's sync status as an admin.
func (e *env) status(user string) *calendarv1.SyncStatus {
	e.t.Helper()
	r, err := e.calendar.GetSyncStatus(e.admin(), &calendarv1.GetSyncStatusRequest{UserId: user})
	if err != nil {
		e.t.Fatalf("GetSyncStatus(%s): %v", user, err)
	}
	return r.GetStatus()
}

// logActions returns the actions of a user's newest sync log lines, newest first.
func (e *env) logActions(user string) []string {
	e.t.Helper()
	r, err := e.calendar.ListSyncLog(e.admin(), &calendarv1.ListSyncLogRequest{UserId: user, PageSize: 100})
	if err != nil {
		e.t.Fatalf("ListSyncLog(%s): %v", user, err)
	}
	var out []string
	for _, l := range r.GetEntries() {
		out = append(out, l.GetAction())
	}
	return out
}

// TestBecomingEligibleQueuesWhatWaits (issue 15): entries booked while synchronisation did not
// apply to their owner are queued as soon as it does — the usernames are corrected in mailbox,
// the tenant switches live sync on, the user moves from server push to the live agent — and
// GetSyncStatus counts them while they wait, for eligible and non-eligible users alike.
func TestBecomingEligibleQueuesWhatWaits(t *testing.T) {
	t.Run("practice username corrected", func(t *testing.T) {
		e := startEnv(t, envOptions{})
		if _, err := e.calendar.CreateEntry(e.as("huber"), &calendarv1.CreateEntryRequest{Entry: future(deadline("frist-m", "maier", "Klagsfrist", 31))}); err != nil {
			t.Fatal(err)
		}
		// Booked and cancelled while nothing was delivered: neither waits nor is queued later.
		if _, err := e.calendar.CreateEntry(e.as("huber"), &calendarv1.CreateEntryRequest{Entry: future(deadline("frist-c", "maier", "Irrtum", 30))}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.calendar.CancelEntry(e.as("huber"), &calendarv1.CancelEntryRequest{EntryId: "frist-c"}); err != nil {
			t.Fatal(err)
		}
		if st := e.status("maier"); st.GetApplicability() != calendarv1.SyncApplicability_SYNC_APPLICABILITY_NOT_APPLICABLE || st.GetPendingCount() != 1 || len(st.GetWarnings()) != 0 {
			t.Errorf("status before the correction = %v, want NOT_APPLICABLE with 1 entry waiting and no warning", st)
		}
		if _, err := e.mailbox.UpdateUser(e.admin(), &mailboxv1.UpdateUserRequest{
			User:       &mailboxv1.User{UserId: "maier", PracticeUsername: `KANZLEI\maier`},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"practice_username"}},
		}); err != nil {
			t.Fatal(err)
		}
		// Mailbox's UserChanged event alone queues the deadline (the sync log reads no user).
		poll.Eventually(t, "the deadline queued on the user event", func() bool {
			return slices.Contains(e.logActions("maier"), "QUEUED")
		})
		st := e.status("maier")
		if st.GetApplicability() != calendarv1.SyncApplicability_SYNC_APPLICABILITY_APPLICABLE || st.GetPendingCount() != 1 ||
			!slices.Contains(st.GetWarnings(), calendarv1.SyncWarning_SYNC_WARNING_AGENT_NEVER_CONNECTED) {
			t.Errorf("status after the correction = %v, want APPLICABLE, 1 pending, agent never connected", st)
		}
		a, _, err := e.connect("maier", &calendarv1.Hello{AgentId: "pc-maier"})
		if err != nil {
			t.Fatal(err)
		}
		if d := a.next(); d.GetEntry().GetEntryId() != "frist-m" {
			t.Errorf("first delivery = %v, want frist-m", d)
		}
	})

	t.Run("tenant switches live sync on", func(t *testing.T) {
		e := startEnv(t, envOptions{})
		setLive := func(on bool) {
			t.Helper()
			if _, err := e.calendar.UpdateTenantSettings(e.admin(), &calendarv1.UpdateTenantSettingsRequest{Settings: &calendarv1.TenantSettings{LiveSyncEnabled: on}}); err != nil {
				t.Fatal(err)
			}
		}
		setLive(false)
		if _, err := e.calendar.CreateEntry(e.as("maier"), &calendarv1.CreateEntryRequest{Entry: future(deadline("frist-h", "huber", "Berufungsfrist", 30))}); err != nil {
			t.Fatal(err)
		}
		if st := e.status("huber"); st.GetApplicability() != calendarv1.SyncApplicability_SYNC_APPLICABILITY_TENANT_DISABLED || st.GetPendingCount() != 1 {
			t.Errorf("status while switched off = %v, want TENANT_DISABLED with 1 entry waiting", st)
		}
		setLive(true)
		if !slices.Contains(e.logActions("huber"), "QUEUED") {
			t.Errorf("sync log after the switch = %v, want the deadline QUEUED", e.logActions("huber"))
		}
		a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc-huber"})
		if err != nil {
			t.Fatal(err)
		}
		if d := a.next(); d.GetEntry().GetEntryId() != "frist-h" {
			t.Errorf("first delivery = %v, want frist-h", d)
		}
	})

	t.Run("server push to live agent", func(t *testing.T) {
		e := startEnv(t, envOptions{cfg: func(c *app.Config) { c.Push = false }})
		settings := func(mode calendarv1.SyncMode) {
			t.Helper()
			if _, err := e.calendar.UpdateUserSettings(e.admin(), &calendarv1.UpdateUserSettingsRequest{Settings: &calendarv1.UserSettings{
				UserId: "anwalt", Mode: mode, SyncLogEnabled: true,
				Caldav: &calendarv1.CalDAVTarget{CalendarUrl: "https://dav.invalid/anwalt/", Username: "anwalt", PasswordRef: "env:POSTAMT_CALDAV_KANZLEI__ANWALT"},
			}}); err != nil {
				t.Fatal(err)
			}
		}
		settings(calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH)
		if _, err := e.calendar.CreateEntry(e.as("maier"), &calendarv1.CreateEntryRequest{Entry: future(appointment("termin-a", "anwalt", "Verhandlung", 20, "Europe/Vienna"))}); err != nil {
			t.Fatal(err)
		}
		settings(calendarv1.SyncMode_SYNC_MODE_LIVE_AGENT)
		a, _, err := e.connect("anwalt", &calendarv1.Hello{AgentId: "pc-anwalt"})
		if err != nil {
			t.Fatal(err)
		}
		if d := a.next(); d.GetEntry().GetEntryId() != "termin-a" {
			t.Errorf("first delivery = %v, want termin-a", d)
		}
	})
}
