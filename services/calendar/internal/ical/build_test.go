package ical_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	goical "github.com/emersion/go-ical"

	"github.com/postamt/postamt/services/calendar/internal/ical"
)

// stamp is the revision time of every entry in these tests.
func stamp() time.Time { return time.Date(2026, 2, 20, 8, 30, 0, 0, time.UTC) }

func newBuilder(t *testing.T, cfg ical.Config) *ical.Builder {
	t.Helper()
	b, err := ical.NewBuilder(cfg)
	if err != nil {
		t.Fatalf("NewBuilder: %v", err)
	}
	return b
}

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// golden compares got with testdata/name.ics; UPDATE_GOLDEN=1 rewrites the file instead.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".ics")
	if os.Getenv("UPDATE_GOLDEN") == "1" {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (UPDATE_GOLDEN=1 rewrites it)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestBuildGolden(t *testing.T) {
	berlin, sydney := mustZone(t, "Europe/Berlin"), mustZone(t, "Australia/Sydney")
	deadlineUID := ical.StableUID("tenant-a", "frist-1")
	german := ical.Config{Categories: ical.Categories{Deadline: "Frist", PreliminaryDeadline: "Vorfrist", Done: "Erledigt"}}
	tests := []struct {
		name  string
		cfg   ical.Config
		entry ical.Entry
	}{
		{
			name: "appointment_windows_zone_weekly",
			entry: ical.Entry{
				UID: ical.StableUID("tenant-a", "termin-1"), Sequence: 0, Stamp: stamp(), Kind: ical.Appointment,
				Summary:     "Besprechung Verlassenschaft Huber; Unterlagen mitbringen, bitte",
				Description: "Zeile eins\r\nZeile zwei mit Umlauten: äöüß — und ein langer Satz, der über die Zeilengrenze von fünfundsiebzig Oktetten hinausgeht.",
				Location:    "Kanzlei, Besprechungsraum 2",
				Start:       time.Date(2026, 3, 10, 9, 0, 0, 0, berlin), End: time.Date(2026, 3, 10, 10, 30, 0, 0, berlin),
				TimeZone: "W. Europe Standard Time",
				RRule:    "rrule:freq=weekly;byday=tu;count=6",
				// given out of order and twice: written sorted, once
				ExceptStarts: []time.Time{time.Date(2026, 3, 24, 9, 0, 0, 0, berlin), time.Date(2026, 3, 17, 8, 0, 0, 0, time.UTC), time.Date(2026, 3, 24, 9, 0, 0, 0, berlin)},
			},
		},
		{
			name: "appointment_update_southern_hemisphere",
			entry: ical.Entry{
				UID: ical.StableUID("tenant-a", "termin-2"), Sequence: 3, Stamp: stamp(), Kind: ical.Appointment,
				Summary: "Call with Sydney office",
				Start:   time.Date(2026, 4, 2, 8, 0, 0, 0, sydney), End: time.Date(2026, 4, 2, 9, 0, 0, 0, sydney),
				TimeZone: "Australia/Sydney",
			},
		},
		{
			name: "appointment_cancelled_utc",
			entry: ical.Entry{
				UID: "ext-123@example.org", Sequence: 1, Stamp: stamp(), Kind: ical.Appointment, Cancelled: true,
				Summary: "Cancelled hearing",
				Start:   time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC), End: time.Date(2026, 5, 4, 13, 0, 0, 0, time.UTC),
				TimeZone: "UTC",
			},
		},
		{
			name: "appointment_no_dst_zone",
			entry: ical.Entry{
				UID: "kolkata@example.org", Stamp: stamp(), Kind: ical.Appointment, Summary: "Review",
				Start: time.Date(2026, 6, 1, 4, 30, 0, 0, time.UTC), End: time.Date(2026, 6, 1, 5, 30, 0, 0, time.UTC),
				TimeZone: "India Standard Time",
			},
		},
		{
			name: "appointment_irregular_zone",
			entry: ical.Entry{
				UID: "casablanca@example.org", Stamp: stamp(), Kind: ical.Appointment, Summary: "Rendez-vous",
				Start: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC), End: time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC),
				TimeZone: "Africa/Casablanca",
			},
		},
		{
			name: "deadline_open",
			entry: ical.Entry{
				UID: deadlineUID, Sequence: 0, Stamp: stamp(), Kind: ical.Deadline,
				Summary: "Berufungsfrist 4 Ob 12/26", Day: ical.Date{Year: 2026, Month: time.March, Day: 31},
				Related: []ical.Relation{{UID: ical.StableUID("tenant-a", "vorfrist-1"), Type: ical.RelChild}},
			},
		},
		{
			name: "preliminary_deadline_done_german",
			cfg:  german,
			entry: ical.Entry{
				UID: ical.StableUID("tenant-a", "vorfrist-1"), Sequence: 2, Stamp: stamp(), Kind: ical.PreliminaryDeadline,
				Summary: "Vorfrist: Berufung 4 Ob 12/26", Day: ical.Date{Year: 2026, Month: time.March, Day: 24}, Done: true,
				Related: []ical.Relation{{UID: deadlineUID, Type: ical.RelParent}},
			},
		},
		{
			name: "deadline_monthly_with_exceptions",
			entry: ical.Entry{
				UID: "ust@example.org", Stamp: stamp(), Kind: ical.Deadline, Summary: "UVA",
				Day:        ical.Date{Year: 2026, Month: time.January, Day: 15},
				RRule:      "FREQ=MONTHLY;UNTIL=20261215",
				ExceptDays: []ical.Date{{Year: 2026, Month: time.August, Day: 15}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBuilder(t, tt.cfg)
			got, err := b.Build(tt.entry)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			golden(t, tt.name, got)
			checkWellFormed(t, got)

			again, err := b.Build(tt.entry)
			if err != nil || !bytes.Equal(again, got) {
				t.Errorf("second Build differs (err %v): output must be deterministic", err)
			}
			info, err := ical.Inspect(got)
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			want := ical.Info{UID: tt.entry.UID, Sequence: tt.entry.Sequence, Stamp: stamp(), Kind: tt.entry.Kind.String(), Summary: tt.entry.Summary}
			if info != want {
				t.Errorf("Inspect = %+v, want %+v", info, want)
			}
		})
	}
}

// checkWellFormed checks RFC 5545 line rules and that go-ical decodes the object again.
func checkWellFormed(t *testing.T, b []byte) {
	t.Helper()
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		t.Error("object does not end with CRLF")
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\r\n"), "\r\n") {
		if len(line) > 75 {
			t.Errorf("line of %d octets, want at most 75: %q", len(line), line)
		}
		if !utf8.ValidString(line) {
			t.Errorf("line splits a UTF-8 sequence: %q", line)
		}
		if strings.ContainsAny(line, "\r\n") {
			t.Errorf("bare CR or LF in %q", line)
		}
	}
	if _, err := goical.NewDecoder(bytes.NewReader(b)).Decode(); err != nil {
		t.Errorf("go-ical cannot decode the output: %v", err)
	}
}

// TestRecurrenceKeepsWallClock decodes a weekly appointment that crosses the start of summer
// time and checks the occurrences stay at 09:00 Vienna time, minus the exception.
func TestRecurrenceKeepsWallClock(t *testing.T) {
	vienna := mustZone(t, "Europe/Vienna")
	b := newBuilder(t, ical.Config{})
	out, err := b.Build(ical.Entry{
		UID: "weekly@example.org", Stamp: stamp(), Kind: ical.Appointment, Summary: "Jour fixe",
		Start: time.Date(2026, 3, 16, 9, 0, 0, 0, vienna), End: time.Date(2026, 3, 16, 9, 30, 0, 0, vienna),
		TimeZone: "Europe/Vienna", RRule: "FREQ=WEEKLY;COUNT=4",
		ExceptStarts: []time.Time{time.Date(2026, 3, 23, 9, 0, 0, 0, vienna)},
	})
	if err != nil {
		t.Fatal(err)
	}
	cal, err := goical.NewDecoder(bytes.NewReader(out)).Decode()
	if err != nil {
		t.Fatal(err)
	}
	set, err := cal.Events()[0].RecurrenceSet(vienna)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range set.All() {
		got = append(got, o.In(vienna).Format("2006-01-02 15:04 MST"))
	}
	want := []string{"2026-03-16 09:00 CET", "2026-03-30 09:00 CEST", "2026-04-06 09:00 CEST"}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("occurrences = %v, want %v", got, want)
	}
}

func TestValidate(t *testing.T) {
	berlin := mustZone(t, "Europe/Berlin")
	appt := func(mod func(*ical.Entry)) ical.Entry {
		e := ical.Entry{
			UID: "a@example.org", Stamp: stamp(), Kind: ical.Appointment, Summary: "S",
			Start: time.Date(2026, 3, 10, 9, 0, 0, 0, berlin), End: time.Date(2026, 3, 10, 10, 0, 0, 0, berlin),
			TimeZone: "Europe/Berlin",
		}
		mod(&e)
		return e
	}
	deadline := func(mod func(*ical.Entry)) ical.Entry {
		e := ical.Entry{UID: "d@example.org", Stamp: stamp(), Kind: ical.Deadline, Summary: "S", Day: ical.Date{Year: 2026, Month: 3, Day: 31}}
		mod(&e)
		return e
	}
	tests := []struct {
		name      string
		entry     ical.Entry
		wantField string
		wantErr   error
	}{
		{"end before start", appt(func(e *ical.Entry) { e.End = e.Start.Add(-time.Minute) }), "end", ical.ErrEndBeforeStart},
		{"unknown IANA zone", appt(func(e *ical.Entry) { e.TimeZone = "Europe/Atlantis" }), "time_zone", ical.ErrUnknownTimeZone},
		{"unmapped Windows zone", appt(func(e *ical.Entry) { e.TimeZone = "Atlantis Standard Time" }), "time_zone", ical.ErrUnknownTimeZone},
		{"missing zone", appt(func(e *ical.Entry) { e.TimeZone = "" }), "time_zone", ical.ErrRequired},
		{"server's Local zone", appt(func(e *ical.Entry) { e.TimeZone = "Local" }), "time_zone", ical.ErrUnknownTimeZone},
		{"missing start", appt(func(e *ical.Entry) { e.Start = time.Time{} }), "start", ical.ErrRequired},
		{"invalid rrule", appt(func(e *ical.Entry) { e.RRule = "FREQ=FORTNIGHTLY" }), "rrule", ical.ErrInvalidRRule},
		{"exceptions without rrule", appt(func(e *ical.Entry) { e.ExceptStarts = []time.Time{e.Start} }), "except_starts", ical.ErrInvalid},
		{"day on an appointment", appt(func(e *ical.Entry) { e.Day = ical.Date{Year: 2026, Month: 1, Day: 1} }), "day", ical.ErrNotForKind},
		{"done on an appointment", appt(func(e *ical.Entry) { e.Done = true }), "done", ical.ErrNotForKind},
		{"missing summary", appt(func(e *ical.Entry) { e.Summary = " " }), "summary", ical.ErrRequired},
		{"control character", appt(func(e *ical.Entry) { e.Summary = "a\x00b" }), "summary", ical.ErrInvalid},
		{"not UTF-8", appt(func(e *ical.Entry) { e.Location = "\xff" }), "location", ical.ErrInvalid},
		{"description too long", appt(func(e *ical.Entry) { e.Description = strings.Repeat("x", 33<<10) }), "description", ical.ErrTooLong},
		{"missing uid", appt(func(e *ical.Entry) { e.UID = "" }), "uid", ical.ErrRequired},
		{"uid with space", appt(func(e *ical.Entry) { e.UID = "a b" }), "uid", ical.ErrInvalid},
		{"negative sequence", appt(func(e *ical.Entry) { e.Sequence = -1 }), "sequence", ical.ErrInvalid},
		{"missing stamp", appt(func(e *ical.Entry) { e.Stamp = time.Time{} }), "stamp", ical.ErrRequired},
		{"missing kind", appt(func(e *ical.Entry) { e.Kind = ical.KindUnspecified }), "kind", ical.ErrRequired},
		{"unknown kind", appt(func(e *ical.Entry) { e.Kind = 42 }), "kind", ical.ErrInvalid},
		{"related to itself", appt(func(e *ical.Entry) { e.Related = []ical.Relation{{UID: e.UID, Type: ical.RelParent}} }), "related", ical.ErrInvalid},
		{"unknown relation type", appt(func(e *ical.Entry) { e.Related = []ical.Relation{{UID: "x@y", Type: "COUSIN"}} }), "related", ical.ErrInvalid},
		{"deadline without day", deadline(func(e *ical.Entry) { e.Day = ical.Date{} }), "day", ical.ErrRequired},
		{"deadline on 31 February", deadline(func(e *ical.Entry) { e.Day = ical.Date{Year: 2026, Month: 2, Day: 31} }), "day", ical.ErrInvalid},
		{"deadline with a zone", deadline(func(e *ical.Entry) { e.TimeZone = "Europe/Berlin" }), "time_zone", ical.ErrNotForKind},
		{"deadline with a start", deadline(func(e *ical.Entry) { e.Start = stamp() }), "start", ical.ErrNotForKind},
		{"deadline rrule with hours", deadline(func(e *ical.Entry) { e.RRule = "FREQ=DAILY;BYHOUR=9" }), "rrule", ical.ErrInvalidRRule},
		{"deadline rrule until a date-time", deadline(func(e *ical.Entry) { e.RRule = "FREQ=DAILY;UNTIL=20260501T000000Z" }), "rrule", ical.ErrInvalidRRule},
		{"deadline exceptions without rrule", deadline(func(e *ical.Entry) { e.ExceptDays = []ical.Date{e.Day} }), "except_days", ical.ErrInvalid},
		// iCalendar writes four-digit years: what would leave 1..9999 is refused, not written as
		// DTEND;VALUE=DATE:100000101 for a server to reject.
		{"deadline whose exclusive end is in the year 10000", deadline(func(e *ical.Entry) { e.Day = ical.Date{Year: 9999, Month: 12, Day: 31} }), "day", ical.ErrInvalid},
		{"end in the year 10000 on the zone's clock", appt(func(e *ical.Entry) {
			e.Start, e.End = time.Date(9999, 12, 31, 20, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
		}), "end", ical.ErrInvalid},
		{"start in the year 0 on the zone's clock", appt(func(e *ical.Entry) {
			e.TimeZone = "America/New_York"
			e.Start, e.End = time.Date(1, 1, 1, 2, 0, 0, 0, time.UTC), time.Date(1, 1, 1, 12, 0, 0, 0, time.UTC)
		}), "start", ical.ErrInvalid},
		{"start after 9999 in UTC", appt(func(e *ical.Entry) { e.Start = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }), "start", ical.ErrInvalid},
		{"exception in the year 10000 on the zone's clock", appt(func(e *ical.Entry) {
			e.RRule = "FREQ=YEARLY"
			e.ExceptStarts = []time.Time{time.Date(9999, 12, 31, 23, 30, 0, 0, time.UTC)}
		}), "except_starts", ical.ErrInvalid},
		{"rrule until the year 0", appt(func(e *ical.Entry) { e.RRule = "FREQ=DAILY;UNTIL=00001231T000000Z" }), "rrule", ical.ErrInvalidRRule},
		{"rrule until the year 10000", appt(func(e *ical.Entry) { e.RRule = "FREQ=DAILY;UNTIL=100000101T000000Z" }), "rrule", ical.ErrInvalidRRule},
	}
	b := newBuilder(t, ical.Config{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := b.Validate(tt.entry)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Validate = %v, want %v", err, tt.wantErr)
			}
			var fe *ical.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.wantField {
				t.Errorf("Validate = %v, want a FieldError for %q", err, tt.wantField)
			}
			if _, err := b.Build(tt.entry); !errors.Is(err, tt.wantErr) {
				t.Errorf("Build = %v, want %v", err, tt.wantErr)
			}
		})
	}

	t.Run("reports every invalid field", func(t *testing.T) {
		err := b.Validate(ical.Entry{Kind: ical.Appointment, TimeZone: "Nowhere"})
		var ve *ical.ValidationError
		if !errors.As(err, &ve) {
			t.Fatalf("Validate = %v, want a *ValidationError", err)
		}
		var got []string
		for _, f := range ve.Fields {
			got = append(got, f.Field)
		}
		want := "uid stamp summary time_zone start end"
		if strings.Join(got, " ") != want {
			t.Errorf("fields = %v, want %s", got, want)
		}
	})
	t.Run("a valid entry passes", func(t *testing.T) {
		if err := b.Validate(appt(func(*ical.Entry) {})); err != nil {
			t.Errorf("Validate = %v, want nil", err)
		}
	})
	t.Run("the last days iCalendar can write pass", func(t *testing.T) {
		for _, e := range []ical.Entry{
			deadline(func(e *ical.Entry) { e.Day = ical.Date{Year: 9998, Month: 12, Day: 31} }),
			deadline(func(e *ical.Entry) { e.Day = ical.Date{Year: 1, Month: 1, Day: 1} }),
			appt(func(e *ical.Entry) {
				e.Start, e.End = time.Date(9999, 12, 31, 20, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 22, 59, 59, 0, time.UTC)
			}),
		} {
			ics, err := b.Build(e)
			if err != nil {
				t.Errorf("Build(%v %v %v) = %v, want nil", e.Day, e.Start, e.End, err)
			}
			for _, line := range strings.Split(string(ics), "\r\n") {
				if v, ok := strings.CutPrefix(line, "DTEND"); ok && len(v[strings.LastIndex(v, ":")+1:]) > len("99991231T235959") {
					t.Errorf("Build wrote %s", line)
				}
			}
		}
	})
	t.Run("zero-length appointment passes", func(t *testing.T) {
		if err := b.Validate(appt(func(e *ical.Entry) { e.End = e.Start })); err != nil {
			t.Errorf("Validate = %v, want nil", err)
		}
	})
}

func TestStableUID(t *testing.T) {
	a := ical.StableUID("tenant-a", "e1")
	if got := ical.StableUID("tenant-a", "e1"); got != a {
		t.Errorf("StableUID not stable: %q then %q", a, got)
	}
	for _, other := range []string{ical.StableUID("tenant-b", "e1"), ical.StableUID("tenant-a", "e2"), ical.StableUID("tenant-ae", "1")} {
		if other == a {
			t.Errorf("StableUID collision: %q", a)
		}
	}
	if strings.Contains(a, "tenant") || !strings.HasSuffix(a, "@postamt") {
		t.Errorf("StableUID = %q, want a hash ending in @postamt", a)
	}
}

func TestInspect(t *testing.T) {
	b := newBuilder(t, ical.Config{})
	e := ical.Entry{UID: "i@example.org", Sequence: 4, Stamp: stamp(), Kind: ical.Deadline, Summary: "Frist", Day: ical.Date{Year: 2026, Month: 1, Day: 2}}
	ours, err := b.Build(e)
	if err != nil {
		t.Fatal(err)
	}
	mine, err := ical.Inspect(ours)
	if err != nil {
		t.Fatal(err)
	}
	e.Sequence++
	newer, _ := b.Build(e)
	next, err := ical.Inspect(newer)
	if err != nil {
		t.Fatal(err)
	}
	if !mine.SameRevision(mine) || mine.SameRevision(next) {
		t.Errorf("SameRevision: same = %v, next = %v; want true, false", mine.SameRevision(mine), mine.SameRevision(next))
	}

	foreign := "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:f@x\r\nDTSTAMP:20260101T000000Z\r\n" +
		"RECURRENCE-ID:20260102T000000Z\r\nSUMMARY:override\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:f@x\r\n" +
		"DTSTAMP:20260101T000000Z\r\nSUMMARY:master\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
	got, err := ical.Inspect([]byte(foreign))
	if err != nil {
		t.Fatal(err)
	}
	if want := (ical.Info{UID: "f@x", Stamp: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Summary: "master"}); got != want {
		t.Errorf("Inspect(foreign) = %+v, want %+v", got, want)
	}

	for name, data := range map[string]string{
		"not iCalendar": "hello",
		"no event":      "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VTODO\r\nUID:t\r\nDTSTAMP:20260101T000000Z\r\nEND:VTODO\r\nEND:VCALENDAR\r\n",
	} {
		if _, err := ical.Inspect([]byte(data)); err == nil {
			t.Errorf("Inspect(%s) = nil error, want one", name)
		}
	}
}

// TestSecondOccurrenceOfAClockTime: the night summer time ends, 02:30 happens twice in Vienna. An
// appointment at the second 02:30 (CET) was written as 02:30 with a TZID, which every reader
// takes for the first (CEST), an hour early (found by FuzzBuild); it is written in UTC now and
// reads back exactly, while the first 02:30 keeps its TZID.
func TestSecondOccurrenceOfAClockTime(t *testing.T) {
	vienna := mustZone(t, "Europe/Vienna")
	zones, err := ical.NewZones()
	if err != nil {
		t.Fatal(err)
	}
	b := newBuilder(t, ical.Config{Zones: zones})
	first := time.Date(2026, 10, 25, 0, 30, 0, 0, time.UTC).In(vienna) // 02:30 CEST
	for _, start := range []time.Time{first, first.Add(time.Hour)} {
		out, err := b.Build(ical.Entry{
			UID: "night@example.org", Stamp: stamp(), Kind: ical.Appointment, Summary: "Nachtdienst",
			Start: start, End: start.Add(30 * time.Minute), TimeZone: "Europe/Vienna",
		})
		if err != nil {
			t.Fatal(err)
		}
		f, err := ical.ReadFields(out, zones)
		if err != nil {
			t.Fatal(err)
		}
		if !f.Start.Equal(start) || !f.End.Equal(start.Add(30*time.Minute)) {
			t.Errorf("%s came back as %s – %s", start.Format("15:04 MST"), f.Start.In(vienna).Format("15:04 MST"), f.End.In(vienna).Format("15:04 MST"))
		}
		utc := bytes.Contains(out, []byte("DTSTART:20261025T013000Z"))
		if second := start.Sub(first) > 0; utc != second {
			t.Errorf("%s written in UTC: %v, want %v\n%s", start.Format("15:04 MST"), utc, second, out)
		}
	}
}
