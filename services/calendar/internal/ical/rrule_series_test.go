package ical

import (
	"testing"
	"time"
)

func TestSeriesEnd(t *testing.T) {
	start := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		rule string
		want time.Time
		ok   bool
	}{
		{"FREQ=WEEKLY;COUNT=3", start.AddDate(0, 0, 14), true},
		{"FREQ=DAILY;UNTIL=20260310T090000Z", time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC), true},
		{"FREQ=MONTHLY", time.Time{}, false},
	} {
		got, ok, err := SeriesEnd(tc.rule, start)
		if err != nil || ok != tc.ok || !got.Equal(tc.want) {
			t.Errorf("SeriesEnd(%q) = %v, %v, %v; want %v, %v", tc.rule, got, ok, err, tc.want, tc.ok)
		}
	}
}
