package ical

import (
	"testing"
	"time"
)

func TestSeriesEnd(t *testing.T) {
	auckland, err := time.LoadLocation("Pacific/Auckland")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	// Monday 14 December 2026, 09:00 in Auckland: still Sunday 13 December in UTC.
	nz := time.Date(2026, 12, 13, 20, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		rule  string
		start time.Time
		loc   *time.Location
		want  time.Time
		ok    bool
	}{
		{"count", "FREQ=WEEKLY;COUNT=3", start, time.UTC, start.AddDate(0, 0, 14), true},
		{"until", "FREQ=DAILY;UNTIL=20260310T090000Z", start, time.UTC, time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC), true},
		{"open-ended", "FREQ=MONTHLY", start, time.UTC, time.Time{}, false},
		// BYDAY names Auckland's days: Monday the 14th, then Sunday the 20th at 09:00 NZDT. On
		// UTC's clock the same rule would end on Monday the 14th, 20:00 UTC.
		{"local weekdays east of UTC", "FREQ=WEEKLY;BYDAY=MO,SU;COUNT=2", nz, auckland, time.Date(2026, 12, 19, 20, 0, 0, 0, time.UTC), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := SeriesEnd(tc.rule, tc.start, tc.loc)
			if err != nil || ok != tc.ok || !got.Equal(tc.want) {
				t.Errorf("SeriesEnd(%q, %v, %v) = %v, %v, %v; want %v, %v", tc.rule, tc.start, tc.loc, got, ok, err, tc.want, tc.ok)
			}
		})
	}
	if _, _, err := SeriesEnd("FREQ=DAILY;COUNT=2", start, nil); err == nil {
		t.Error("SeriesEnd without a zone = nil error")
	}
}
