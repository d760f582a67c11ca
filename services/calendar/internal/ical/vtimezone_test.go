package ical

import (
	"slices"
	"strconv"
	"testing"
	"time"

	goical "github.com/emersion/go-ical"
	"github.com/teambition/rrule-go"
)

// onset is when an observance of a VTIMEZONE begins and the offset it sets.
type onset struct {
	at     time.Time
	offset int
}

// parseOffset reads a UTC-OFFSET (+HHMM or +HHMMSS) in seconds.
func parseOffset(t *testing.T, v string) int {
	t.Helper()
	sign := 1
	if v[0] == '-' {
		sign = -1
	}
	h, _ := strconv.Atoi(v[1:3])
	m, _ := strconv.Atoi(v[3:5])
	s := 0
	if len(v) == 7 {
		s, _ = strconv.Atoi(v[5:7])
	}
	return sign * (h*3600 + m*60 + s)
}

// onsets expands a VTIMEZONE the way a calendar client does: every observance's DTSTART and
// RRULE occurrences, read on the clock of TZOFFSETFROM, up to until.
func onsets(t *testing.T, tz *goical.Component, until time.Time) []onset {
	t.Helper()
	var out []onset
	for _, obs := range tz.Children {
		from := parseOffset(t, obs.Props.Get(goical.PropTimezoneOffsetFrom).Value)
		to := parseOffset(t, obs.Props.Get(goical.PropTimezoneOffsetTo).Value)
		wall, err := time.Parse(localFormat, obs.Props.Get(goical.PropDateTimeStart).Value)
		if err != nil {
			t.Fatal(err)
		}
		walls := []time.Time{wall}
		if p := obs.Props.Get(goical.PropRecurrenceRule); p != nil {
			opt, err := rrule.StrToROption(p.Value)
			if err != nil {
				t.Fatalf("observance RRULE %q: %v", p.Value, err)
			}
			opt.Dtstart, opt.Until = wall, until
			r, err := rrule.NewRRule(*opt)
			if err != nil {
				t.Fatal(err)
			}
			walls = r.All()
		}
		for _, w := range walls {
			out = append(out, onset{at: w.Add(-time.Duration(from) * time.Second), offset: to})
		}
	}
	slices.SortFunc(out, func(a, b onset) int { return a.at.Compare(b.at) })
	return out
}

// TestVTimezoneMatchesGo expands the VTIMEZONE of every zone the Windows table maps to, and
// of some with unusual rules, and checks it gives Go's UTC offset every three hours through
// the event's year and the next.
func TestVTimezoneMatchesGo(t *testing.T) {
	z, err := NewZones()
	if err != nil {
		t.Fatal(err)
	}
	names := []string{
		"Europe/Dublin",       // negative DST in tzdata
		"Africa/Casablanca",   // Ramadan changes, no yearly rule
		"America/Santiago",    // southern hemisphere, Saturday-night changes
		"Pacific/Chatham",     // +1245 / +1345
		"Australia/Lord_Howe", // half-hour DST
		"Asia/Tehran",         // DST abolished in 2022
		"America/Sao_Paulo",   // DST abolished in 2019
		"Europe/Vienna",
	}
	for _, iana := range z.windows {
		names = append(names, iana)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	for _, year := range []int{2026, 2031} {
		for _, name := range names {
			loc, err := time.LoadLocation(name)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			start := time.Date(year, time.July, 1, 12, 0, 0, 0, loc)
			end := time.Date(year+2, time.January, 1, 0, 0, 0, 0, loc)
			tz := vtimezone(loc, name, start)
			ons := onsets(t, tz, end.AddDate(0, 1, 0))
			if len(ons) == 0 {
				t.Fatalf("%s: no observances", name)
			}
			for at := time.Date(year, time.January, 1, 0, 0, 0, 0, loc); at.Before(end); at = at.Add(3 * time.Hour) {
				_, want := at.Zone()
				got := ons[0].offset
				for _, o := range ons {
					if o.at.After(at) {
						break
					}
					got = o.offset
				}
				if got != want {
					t.Errorf("%s (%d): offset at %s = %s, want %s", name, year, at.UTC().Format(time.RFC3339), utcOffset(got), utcOffset(want))
					break
				}
			}
		}
	}
}

func TestVTimezoneShape(t *testing.T) {
	tests := []struct {
		zone      string
		wantRules int // observances with an RRULE
		wantObs   int
	}{
		{"Europe/Berlin", 2, 2},
		{"Australia/Sydney", 2, 2},
		{"Asia/Kolkata", 0, 1},
		{"Africa/Casablanca", 0, 5},
	}
	for _, tt := range tests {
		t.Run(tt.zone, func(t *testing.T) {
			loc, err := time.LoadLocation(tt.zone)
			if err != nil {
				t.Fatal(err)
			}
			tz := vtimezone(loc, tt.zone, time.Date(2026, 3, 1, 0, 0, 0, 0, loc))
			rules := 0
			for _, c := range tz.Children {
				if c.Props.Get(goical.PropRecurrenceRule) != nil {
					rules++
				}
			}
			if len(tz.Children) != tt.wantObs || rules != tt.wantRules {
				t.Errorf("observances = %d with %d rules, want %d with %d", len(tz.Children), rules, tt.wantObs, tt.wantRules)
			}
		})
	}
}

func TestNthWeekday(t *testing.T) {
	tests := []struct {
		year  int
		month time.Month
		wd    time.Weekday
		n     int
		want  int
	}{
		{2026, time.March, time.Sunday, -1, 29},
		{2027, time.March, time.Sunday, -1, 28},
		{2026, time.March, time.Sunday, 2, 8},
		{2026, time.November, time.Sunday, 1, 1},
		{2026, time.March, time.Sunday, 5, 29},
		{2026, time.February, time.Monday, 5, 0},
		{1970, time.October, time.Sunday, -1, 25},
	}
	for _, tt := range tests {
		if got := nthWeekday(tt.year, tt.month, tt.wd, tt.n); got != tt.want {
			t.Errorf("nthWeekday(%d, %v, %v, %d) = %d, want %d", tt.year, tt.month, tt.wd, tt.n, got, tt.want)
		}
	}
}

func TestUTCOffset(t *testing.T) {
	for sec, want := range map[int]string{0: "+0000", 3600: "+0100", -18000: "-0500", 19800: "+0530", 45900: "+1245", -3723: "-010203"} {
		if got := utcOffset(sec); got != want {
			t.Errorf("utcOffset(%d) = %q, want %q", sec, got, want)
		}
	}
}

func TestFold(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"short line unchanged", "A:b\r\n", "A:b\r\n"},
		{"exactly 75 octets", "A:" + rep("x", 73) + "\r\n", "A:" + rep("x", 73) + "\r\n"},
		{"76 octets fold once", "A:" + rep("x", 74) + "\r\n", "A:" + rep("x", 73) + "\r\n x\r\n"},
		{"continuations hold 74 octets", "A:" + rep("x", 73+74+1) + "\r\n", "A:" + rep("x", 73) + "\r\n " + rep("x", 74) + "\r\n x\r\n"},
		{"never inside a UTF-8 sequence", "A:" + rep("x", 72) + "ä" + "\r\n", "A:" + rep("x", 72) + "\r\n ä\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(fold([]byte(tt.in))); got != tt.want {
				t.Errorf("fold = %q, want %q", got, tt.want)
			}
		})
	}
}

func rep(s string, n int) string {
	b := make([]byte, 0, len(s)*n)
	for range n {
		b = append(b, s...)
	}
	return string(b)
}
