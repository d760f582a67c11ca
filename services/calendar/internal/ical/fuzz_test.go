package ical

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzValidateRRule: whatever rule a caller sends, ValidateRRule never panics and either refuses
// it with ErrInvalidRRule or returns a rule that it accepts again unchanged (the stored form is
// stable), that has no "RRULE:" prefix and holds only rule characters, and whose series end
// SeriesEnd can tell without error: the UNTIL, or the start of the last of COUNT occurrences,
// never before the start.
func FuzzValidateRRule(f *testing.F) {
	for _, r := range []string{
		"FREQ=WEEKLY;COUNT=10", " rrule:freq=monthly;bymonthday=-1 ", "FREQ=DAILY;UNTIL=20260331T090000Z",
		"FREQ=YEARLY;UNTIL=20300310", "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1", "FREQ=YEARLY;BYEASTER=0",
		"FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30;COUNT=3", "FREQ=MONTHLY;BYDAY=5FR;COUNT=12", "FREQ=YEARLY;BYWEEKNO=53;BYDAY=MO;COUNT=2",
		"FREQ=DAILY;INTERVAL=99999999999999999999", "FREQ=WEEKLY;WKST=SU;BYDAY=+1MO", "FREQ=DAILY;BYHOUR=9;BYMINUTE=30;BYSECOND=60",
	} {
		f.Add(r, false, int64(1773133200)) // 2026-03-10 09:00 UTC
		f.Add(r, true, int64(1773100800))  // 2026-03-10
	}
	f.Add("FREQ=YEARLY;COUNT=5", false, int64(253402300799)) // 9999-12-31 23:59:59
	f.Add("FREQ=DAILY;COUNT=2", false, int64(-62135596800))  // 0001-01-01
	f.Fuzz(func(t *testing.T, rule string, allDay bool, unix int64) {
		start := time.Unix(unix, 0).UTC()
		if y := start.Year(); y < 1 || y > 9999 {
			return // Validate refuses such starts before the rule is looked at
		}
		if allDay {
			start = DateOf(start).midnight()
		}
		got, err := ValidateRRule(rule, allDay, start)
		if err != nil {
			if !errors.Is(err, ErrInvalidRRule) {
				t.Fatalf("ValidateRRule(%q) = %v, not ErrInvalidRRule", rule, err)
			}
			return
		}
		if again, err := ValidateRRule(got, allDay, start); err != nil || again != got {
			t.Fatalf("ValidateRRule(%q) = %q, which gives %q, %v", rule, got, again, err)
		}
		if strings.HasPrefix(got, "RRULE:") || strings.ContainsFunc(got, func(r rune) bool {
			return !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("=;,+-", r))
		}) {
			t.Fatalf("ValidateRRule(%q) = %q", rule, got)
		}
		timer := time.AfterFunc(10*time.Second, func() { panic("SeriesEnd(" + got + ") takes over 10s") })
		last, ok, err := SeriesEnd(got, start, start.Location())
		timer.Stop()
		bounded := strings.Contains(got, "UNTIL=") || strings.Contains(got, "COUNT=")
		switch {
		case err != nil:
			t.Fatalf("SeriesEnd(%q) of a validated rule: %v", got, err)
		case ok && !bounded:
			t.Fatalf("SeriesEnd(%q) = %v, but the rule has no end", got, last)
		case !ok && strings.Contains(got, "UNTIL="):
			t.Fatalf("SeriesEnd(%q) does not give its UNTIL", got)
		case ok && last.Before(start):
			t.Fatalf("SeriesEnd(%q, %v) = %v, before the start", got, start, last)
		}
	})
}

// FuzzReadFields: whatever a calendar server returns as an object, Inspect and ReadFields (the
// merge after a 412) never panic; an object both read is read alike (the same SEQUENCE and
// title), and the time ReadFields gives is a time (Fields.Time) a merge can compare.
func FuzzReadFields(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.ics"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART;TZID=W. Europe Standard Time:20260310T090000\r\nDURATION:PT1H\r\nSEQUENCE:2\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"))
	f.Add([]byte("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART;VALUE=DATE:20260229\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"))
	f.Add([]byte("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nRECURRENCE-ID:20260310T090000Z\r\nDTSTART:20260310T090000Z\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART:20260310T090000Z\r\nDURATION:-P1W2DT3H\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"))
	f.Add([]byte("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART;TZID=Local:20260310T090000\r\nSEQUENCE:99999999999999999999\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		zones := fuzzZones(t)
		info, ierr := Inspect(data)
		fields, ferr := ReadFields(data, zones)
		if ierr == nil && ferr == nil && (info.Sequence != fields.Sequence || info.Summary != fields.Summary) {
			t.Fatalf("Inspect %+v and ReadFields %+v disagree", info, fields)
		}
		if ferr == nil {
			_ = fields.Time()
		}
	})
}

var fuzzZoneCache *Zones

func fuzzZones(t *testing.T) *Zones {
	if fuzzZoneCache == nil {
		z, err := NewZones()
		if err != nil {
			t.Fatal(err)
		}
		fuzzZoneCache = z
	}
	return fuzzZoneCache
}

// fuzzZoneNames are the zones FuzzBuild and FuzzVTimezone pick from: ordinary ones, ones with
// unusual rules (negative DST, half-hour DST, DST abolished, Ramadan changes), a Windows name.
var fuzzZoneNames = []string{
	"Europe/Vienna", "Europe/Berlin", "UTC", "Europe/Dublin", "Africa/Casablanca", "America/Santiago",
	"Pacific/Chatham", "Australia/Lord_Howe", "Asia/Tehran", "America/Sao_Paulo", "Asia/Kolkata",
	"America/New_York", "Pacific/Apia", "W. Europe Standard Time",
}

// FuzzBuild: an entry Validate accepts is encoded as an object every line of which ends in CRLF
// and is at most 75 octets (RFC 5545 §3.1), deterministically; Inspect and ReadFields read back
// its UID, SEQUENCE, DTSTAMP, kind, texts (line breaks as LF) and time — the instants of an
// appointment unless its clock time is one a change to standard time repeats, which RFC 5545
// reads as the first; and WithSequence replaces its SEQUENCE and nothing else.
func FuzzBuild(f *testing.F) {
	f.Add("Besprechung Verlassenschaft Huber; Unterlagen mitbringen, bitte", "Zeile eins\nZeile zwei: äöüß", "Kanzlei, Raum 2", "a81e814f8c8af096769a9955b255ec51@postamt",
		uint8(0), int64(1773133200), int64(5400), "FREQ=WEEKLY;BYDAY=TU;COUNT=6", 0, true)
	f.Add("Frist", "", "", "uid-1", uint8(1), int64(1773100800), int64(0), "", 3, false)
	f.Add("Vorfrist\r\nzwei", "a\rb", "\\;,:", "uid-2", uint8(2), int64(1798675200), int64(0), "FREQ=YEARLY;UNTIL=20300310", 1, false)
	f.Add(strings.Repeat("ä", 400), strings.Repeat("€ ", 1000), strings.Repeat("x", 1024), strings.Repeat("u", 255), uint8(0), int64(1792807200), int64(3600), "", 7, false)
	// The night summer time ends in Vienna (zone 0) and New York (zone 11 · 3): 02:30 CEST and
	// 02:30 CET, 01:30 EDT and 01:30 EST; the second of each cannot be written with a TZID, so a
	// single entry writes it in UTC.
	f.Add("Termin bei Nacht", "", "", "uid-3", uint8(0), int64(1792888200), int64(1800), "", 0, false)
	f.Add("Termin bei Nacht", "", "", "uid-3", uint8(0), int64(1792891800), int64(1800), "", 0, false)
	f.Add("Night call", "", "", "uid-4", uint8(33), int64(1793511000), int64(1800), "", 0, false)
	f.Add("Night call", "", "", "uid-4", uint8(33), int64(1793514600), int64(1800), "", 0, false)
	f.Fuzz(func(t *testing.T, summary, desc, location, uid string, kindZone uint8, startUnix, duration int64, rrule string, seq int, cancelled bool) {
		b, err := NewBuilder(Config{Zones: fuzzZones(t)})
		if err != nil {
			t.Fatal(err)
		}
		kind := Kind(1 + kindZone%3)
		start := time.Unix(startUnix, 0)
		e := Entry{UID: uid, Sequence: seq, Stamp: time.Date(2026, 2, 20, 8, 30, 0, 0, time.UTC), Kind: kind,
			Summary: summary, Description: desc, Location: location, RRule: rrule, Cancelled: cancelled}
		var loc *time.Location
		if kind == Appointment {
			e.TimeZone = fuzzZoneNames[int(kindZone/3)%len(fuzzZoneNames)]
			if loc, err = fuzzZones(t).Load(e.TimeZone); err != nil {
				t.Fatal(err)
			}
			e.Start, e.End = start, start.Add(time.Duration(duration)*time.Second)
		} else {
			e.Day = DateOf(start.UTC())
		}
		if b.Validate(e) != nil {
			return
		}
		ics, err := b.Build(e)
		if err != nil {
			t.Fatalf("Build of a valid entry: %v", err)
		}
		if again, _ := b.Build(e); !bytes.Equal(again, ics) {
			t.Fatal("Build is not deterministic")
		}
		for i, line := range strings.SplitAfter(string(ics), "\n") {
			if line == "" {
				continue
			}
			body, ok := strings.CutSuffix(line, "\r\n")
			if !ok || strings.ContainsRune(body, '\r') || len(body) > foldLimit || !utf8.ValidString(body) {
				t.Fatalf("line %d: %q", i+1, line)
			}
		}

		info, err := Inspect(ics)
		if err != nil {
			t.Fatalf("Inspect: %v\n%s", err, ics)
		}
		if info.UID != uid || info.Sequence != seq || !info.Stamp.Equal(e.Stamp) || info.Kind != kind.String() || info.Summary != text(summary) {
			t.Fatalf("Inspect = %+v for %+v", info, e)
		}
		fields, err := ReadFields(ics, fuzzZones(t))
		if err != nil {
			t.Fatalf("ReadFields: %v\n%s", err, ics)
		}
		if fields.Sequence != seq || fields.Summary != text(summary) || fields.Desc != text(desc) || fields.Location != text(location) {
			t.Fatalf("ReadFields = %+v for %+v", fields, e)
		}
		if kind == Appointment {
			// A single entry comes back exactly (exact writes the second of a doubled clock
			// time in UTC); a series' DTSTART keeps its TZID, so only there may it be the first.
			series := strings.TrimSpace(rrule) != ""
			if !(series && ambiguous(e.Start, loc)) && !fields.Start.Equal(e.Start.Truncate(time.Second)) ||
				!(series && ambiguous(e.End, loc)) && !fields.End.Equal(e.End.Truncate(time.Second)) {
				t.Fatalf("times %v – %v in %s came back as %v – %v", e.Start, e.End, loc, fields.Start, fields.End)
			}
		} else if fields.Day != e.Day {
			t.Fatalf("day %v came back as %v", e.Day, fields.Day)
		}

		resequenced, err := WithSequence(ics, seq+1)
		if err != nil {
			t.Fatalf("WithSequence: %v", err)
		}
		if info2, err := Inspect(resequenced); err != nil || info2.Sequence != seq+1 || info2.UID != uid || info2.Summary != info.Summary {
			t.Fatalf("after WithSequence: %+v, %v", info2, err)
		}
	})
}

// ambiguous reports whether t cannot be written as a clock time in loc: its clock time happens
// twice (a change that sets the clocks back), and read with a TZID it is the first (RFC 5545
// §3.3.5), which t is not.
func ambiguous(t time.Time, loc *time.Location) bool {
	w := t.In(loc)
	wall := time.Date(w.Year(), w.Month(), w.Day(), w.Hour(), w.Minute(), w.Second(), 0, time.UTC)
	return !clockTime(wall, loc).Equal(t.Truncate(time.Second))
}

// FuzzVTimezone: for any zone FuzzBuild picks and any start, the VTIMEZONE written describes the
// zone as a calendar client expands it: its offsets are Go's every three hours through the
// event's year and the next.
func FuzzVTimezone(f *testing.F) {
	for i := range fuzzZoneNames {
		f.Add(uint8(i), int64(1782907200)) // 2026-07-01
	}
	f.Add(uint8(4), int64(1940000000))
	f.Add(uint8(6), int64(-1000000000))
	f.Fuzz(func(t *testing.T, zone uint8, unix int64) {
		name := fuzzZoneNames[int(zone)%len(fuzzZoneNames)]
		loc, err := fuzzZones(t).Load(name)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Unix(unix, 0).In(loc)
		if start.Year() < 1971 || start.Year() > 2100 {
			return // the observances start in 1970
		}
		tz := vtimezone(loc, loc.String(), start)
		end := time.Date(start.Year()+2, time.January, 1, 0, 0, 0, 0, loc)
		ons := onsets(t, tz, end.AddDate(0, 1, 0))
		if len(ons) == 0 {
			t.Fatalf("%s: no observances", name)
		}
		for at := time.Date(start.Year(), time.January, 1, 0, 0, 0, 0, loc); at.Before(end); at = at.Add(3 * time.Hour) {
			_, want := at.Zone()
			got := ons[0].offset
			for _, o := range ons {
				if o.at.After(at) {
					break
				}
				got = o.offset
			}
			if got != want {
				t.Fatalf("%s (start %v): offset at %s = %s, want %s", name, start, at.UTC().Format(time.RFC3339), utcOffset(got), utcOffset(want))
			}
		}
	})
}
