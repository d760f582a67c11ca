package app_test

import (
	"context"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/testkit/fieldtest"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/app"
)

// TestHeaderFieldsRefuseLineBreaks: CR, LF, CRLF and NUL in every one-line field of the calendar
// API — an entry's summary and location (iCalendar would escape a line break, but they are
// titles), ids, the zone and rule, a CalDAV target's user name and URL, the agent's id — is
// INVALID_ARGUMENT naming the field, and nothing is stored. The description may have lines.
func TestHeaderFieldsRefuseLineBreaks(t *testing.T) {
	e := startEnv(t, envOptions{})
	sek, admin := e.as("maier"), e.admin()
	cal := e.calendar
	if _, err := cal.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: appointment("a-1", "huber", "Termin", 10, "Europe/Vienna")}); err != nil {
		t.Fatal(err)
	}
	if _, err := cal.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: deadline("frist-1", "huber", "Frist", 31)}); err != nil {
		t.Fatal(err)
	}
	create := func(ctx context.Context, edit func(*calendarv1.Entry)) error {
		en := appointment("neu", "huber", "Besprechung", 12, "Europe/Vienna")
		en.Location = "Besprechungsraum 2"
		edit(en)
		_, err := cal.CreateEntry(ctx, &calendarv1.CreateEntryRequest{Entry: en})
		return err
	}
	update := func(ctx context.Context, edit func(*calendarv1.Entry)) error {
		en := appointment("a-1", "huber", "Termin", 10, "Europe/Vienna")
		edit(en)
		_, err := cal.UpdateEntry(ctx, &calendarv1.UpdateEntryRequest{Entry: en})
		return err
	}
	push := func(ctx context.Context, edit func(*calendarv1.CalDAVTarget)) error {
		target := &calendarv1.CalDAVTarget{CalendarUrl: "https://dav.kanzlei.example/huber/postamt/", Username: "huber", PasswordRef: "env:POSTAMT_CALDAV_HUBER"}
		edit(target)
		_, err := cal.UpdateUserSettings(ctx, &calendarv1.UpdateUserSettingsRequest{Settings: &calendarv1.UserSettings{
			UserId: "huber", Mode: calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH, Caldav: target, SyncLogEnabled: true,
		}})
		return err
	}
	for _, tc := range []struct {
		rpc, field string
		as         context.Context
		call       func(ctx context.Context, bad func(string) string) error
	}{
		{"CreateEntry", "entry.entry_id", sek, func(ctx context.Context, bad func(string) string) error {
			return create(ctx, func(en *calendarv1.Entry) { en.EntryId = bad(en.EntryId) })
		}},
		{"CreateEntry", "entry.owner_user_id", sek, func(ctx context.Context, bad func(string) string) error {
			return create(ctx, func(en *calendarv1.Entry) { en.OwnerUserId = bad(en.OwnerUserId) })
		}},
		{"CreateEntry", "entry.summary", sek, func(ctx context.Context, bad func(string) string) error {
			return create(ctx, func(en *calendarv1.Entry) { en.Summary = bad(en.Summary) })
		}},
		{"CreateEntry", "entry.location", sek, func(ctx context.Context, bad func(string) string) error {
			return create(ctx, func(en *calendarv1.Entry) { en.Location = bad(en.Location) })
		}},
		{"CreateEntry", "entry.time_zone", sek, func(ctx context.Context, bad func(string) string) error {
			return create(ctx, func(en *calendarv1.Entry) { en.TimeZone = bad(en.TimeZone) })
		}},
		{"CreateEntry", "entry.rrule", sek, func(ctx context.Context, bad func(string) string) error {
			return create(ctx, func(en *calendarv1.Entry) { en.Rrule = bad("FREQ=WEEKLY;COUNT=3") })
		}},
		{"CreateEntry", "entry.deadline_entry_id", sek, func(ctx context.Context, bad func(string) string) error {
			en := deadline("vorfrist", "huber", "Vorfrist", 20)
			en.Kind, en.DeadlineEntryId = calendarv1.EntryKind_ENTRY_KIND_PRELIMINARY_DEADLINE, bad("frist-1")
			_, err := cal.CreateEntry(ctx, &calendarv1.CreateEntryRequest{Entry: en})
			return err
		}},
		{"UpdateEntry", "entry.summary", sek, func(ctx context.Context, bad func(string) string) error {
			return update(ctx, func(en *calendarv1.Entry) { en.Summary = bad(en.Summary) })
		}},
		{"UpdateEntry", "entry.location", sek, func(ctx context.Context, bad func(string) string) error {
			return update(ctx, func(en *calendarv1.Entry) { en.Location = bad("Gericht, Saal 3") })
		}},
		{"UpdateEntry", "entry_id", sek, func(ctx context.Context, bad func(string) string) error {
			return update(ctx, func(en *calendarv1.Entry) { en.EntryId = bad(en.EntryId) })
		}},
		{"CancelEntry", "entry_id", sek, func(ctx context.Context, bad func(string) string) error {
			_, err := cal.CancelEntry(ctx, &calendarv1.CancelEntryRequest{EntryId: bad("a-1")})
			return err
		}},
		{"MarkDone", "entry_id", sek, func(ctx context.Context, bad func(string) string) error {
			_, err := cal.MarkDone(ctx, &calendarv1.MarkDoneRequest{EntryId: bad("frist-1"), Done: true})
			return err
		}},
		{"UpdateUserSettings", "settings.caldav.username", admin, func(ctx context.Context, bad func(string) string) error {
			return push(ctx, func(t *calendarv1.CalDAVTarget) { t.Username = bad(t.Username) })
		}},
		{"UpdateUserSettings", "settings.caldav.calendar_url", admin, func(ctx context.Context, bad func(string) string) error {
			return push(ctx, func(t *calendarv1.CalDAVTarget) { t.CalendarUrl = bad(t.CalendarUrl) })
		}},
		{"UpdateUserSettings", "settings.user_id", admin, func(ctx context.Context, bad func(string) string) error {
			_, err := cal.UpdateUserSettings(ctx, &calendarv1.UpdateUserSettingsRequest{Settings: &calendarv1.UserSettings{UserId: bad("huber"), Mode: calendarv1.SyncMode_SYNC_MODE_OFF}})
			return err
		}},
		{"Connect", "hello.agent_id", nil, func(_ context.Context, bad func(string) string) error {
			_, _, err := e.connect("huber", &calendarv1.Hello{AgentId: bad("outlook-pc-17")})
			return err
		}},
	} {
		for _, b := range fieldtest.Breakers {
			for _, bad := range []struct {
				name string
				f    func(string) string
			}{{"inside", b.Break}, {"header injected", b.Inject}} {
				t.Run(tc.rpc+"/"+tc.field+"/"+b.Name+" "+bad.name, func(t *testing.T) {
					before := e.snapshot(admin)
					fieldtest.WantViolation(t, tc.call(tc.as, bad.f), tc.field)
					fieldtest.Unchanged(t, before, e.snapshot(admin))
				})
			}
		}
	}
	t.Run("the description may have lines", func(t *testing.T) {
		if err := update(sek, func(en *calendarv1.Entry) { en.Description = "Erste Zeile\r\nZweite Zeile\nDritte" }); err != nil {
			t.Fatal(err)
		}
		if err := update(sek, func(en *calendarv1.Entry) { en.Description = "NUL\x00" }); err == nil {
			t.Fatal("a NUL in the description was taken")
		}
	})
}

// TestAckRefusesLineBreaks: an agent's Ack whose remote id or version has CR, LF or NUL (they
// are kept together on one line and handed back in later deliveries) ends the stream with
// INVALID_ARGUMENT naming the field, and the delivery stays unacknowledged.
func TestAckRefusesLineBreaks(t *testing.T) {
	// Every refused Ack ends a stream that had the delivery: more than the default unanswered
	// handouts.
	e := startEnv(t, envOptions{cfg: func(c *app.Config) { c.AgentMaxUnanswered = 1000 }})
	if _, err := e.calendar.CreateEntry(e.as("maier"), &calendarv1.CreateEntryRequest{Entry: deadline("frist-1", "huber", "Frist", 31)}); err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"ack.remote_id", "ack.remote_version"} {
		for _, b := range fieldtest.Breakers {
			t.Run(field+"/"+b.Name, func(t *testing.T) {
				a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc"})
				if err != nil {
					t.Fatal(err)
				}
				defer a.close()
				d := a.next()
				ack := &calendarv1.Ack{Position: d.GetPosition(), Outcome: calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_APPLIED, RemoteId: "entry-17", RemoteVersion: "ck-1"}
				if field == "ack.remote_id" {
					ack.RemoteId = b.Break(ack.RemoteId)
				} else {
					ack.RemoteVersion = b.Inject(ack.RemoteVersion)
				}
				if err := a.stream.Send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Ack{Ack: ack}}); err != nil {
					t.Fatal(err)
				}
				fieldtest.WantViolation(t, a.ended(), field)
				st, err := e.calendar.GetSyncStatus(e.as("huber"), &calendarv1.GetSyncStatusRequest{})
				if err != nil {
					t.Fatal(err)
				}
				if s := st.GetStatus(); s.GetAckedPosition() != 0 || s.GetPendingCount() != 1 || s.GetDeadCount() != 0 {
					t.Errorf("after a refused Ack: acked %d, pending %d, dead %d; want 0, 1, 0", s.GetAckedPosition(), s.GetPendingCount(), s.GetDeadCount())
				}
			})
		}
	}
}

// snapshot is what the calendar stores for huber and the tenant, as the API shows it.
func (e *env) snapshot(ctx context.Context) []proto.Message {
	e.t.Helper()
	var out []proto.Message
	add := func(m proto.Message, err error) {
		e.t.Helper()
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, m)
	}
	add(e.calendar.ListEntries(ctx, &calendarv1.ListEntriesRequest{OwnerUserId: "huber", PageSize: 500, IncludeCancelled: true}))
	add(e.calendar.GetUserSettings(ctx, &calendarv1.GetUserSettingsRequest{UserId: "huber"}))
	add(e.calendar.GetTenantSettings(ctx, &calendarv1.GetTenantSettingsRequest{}))
	return out
}
