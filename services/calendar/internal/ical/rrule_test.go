package ical_test

import (
	"errors"
	"testing"
	"time"

	"github.com/postamt/postamt/services/calendar/internal/ical"
)

func TestValidateRRule(t *testing.T) {
	timed := time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		rule   string
		allDay bool
		want   string // normalised rule; empty when an error is wanted
	}{
		{"weekly count", "FREQ=WEEKLY;COUNT=10", false, "FREQ=WEEKLY;COUNT=10"},
		{"prefix and case are normalised", " rrule:freq=monthly;bymonthday=-1 ", false, "FREQ=MONTHLY;BYMONTHDAY=-1"},
		{"until in UTC", "FREQ=DAILY;UNTIL=20260331T090000Z", false, "FREQ=DAILY;UNTIL=20260331T090000Z"},
		{"all-day until a date", "FREQ=YEARLY;UNTIL=20300310", true, "FREQ=YEARLY;UNTIL=20300310"},
		{"all-day until its own day", "FREQ=DAILY;UNTIL=20260310", true, "FREQ=DAILY;UNTIL=20260310"},
		{"by set position", "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1", false, "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1"},

		{"numbered weekdays of a month", "FREQ=MONTHLY;BYDAY=2MO,-1FR,+5SU", false, "FREQ=MONTHLY;BYDAY=2MO,-1FR,+5SU"},
		{"numbered weekday of a year", "FREQ=YEARLY;BYDAY=20MO,-53TU", false, "FREQ=YEARLY;BYDAY=20MO,-53TU"},
		{"numbered weekday of a month of a year", "FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU", false, "FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU"},

		{"empty", "  ", false, ""},
		// rrule-go takes any number and panics expanding the series (found by FuzzValidateRRule).
		{"eighth Friday of a month", "FREQ=MONTHLY;BYDAY=8FR;COUNT=1", false, ""},
		{"sixth-last Monday of a month", "FREQ=MONTHLY;BYDAY=-6MO", false, ""},
		{"sixth Monday of a month of a year", "FREQ=YEARLY;BYMONTH=3;BYDAY=6MO", false, ""},
		{"54th Monday of a year", "FREQ=YEARLY;BYDAY=54MO", false, ""},
		{"zeroth Monday", "FREQ=MONTHLY;BYDAY=0MO", false, ""},
		{"numbered weekday in a weekly rule", "FREQ=WEEKLY;BYDAY=1MO", false, ""},
		{"numbered weekday beside BYWEEKNO", "FREQ=YEARLY;BYWEEKNO=20;BYDAY=1MO", false, ""},
		{"no FREQ", "COUNT=3", false, ""},
		{"unknown FREQ", "FREQ=FORTNIGHTLY", false, ""},
		{"sub-daily FREQ", "FREQ=HOURLY", false, ""},
		{"unknown part", "FREQ=DAILY;FOO=1", false, ""},
		{"DTSTART inside the rule", "FREQ=DAILY;DTSTART=20260101T000000Z", false, ""},
		{"BYEASTER", "FREQ=YEARLY;BYEASTER=0", false, ""},
		{"duplicate part", "FREQ=DAILY;COUNT=2;COUNT=3", false, ""},
		{"COUNT and UNTIL", "FREQ=DAILY;COUNT=2;UNTIL=20260401T000000Z", false, ""},
		{"zero COUNT", "FREQ=DAILY;COUNT=0", false, ""},
		{"negative INTERVAL", "FREQ=DAILY;INTERVAL=-2", false, ""},
		{"BYMONTH out of range", "FREQ=YEARLY;BYMONTH=13", false, ""},
		{"bad weekday", "FREQ=WEEKLY;BYDAY=XX", false, ""},
		{"missing value", "FREQ=DAILY;COUNT=", false, ""},
		{"not NAME=VALUE", "FREQ=DAILY;COUNT", false, ""},
		{"line break", "FREQ=DAILY\nRRULE:FREQ=WEEKLY", false, ""},
		{"timed until without Z", "FREQ=DAILY;UNTIL=20260401T000000", false, ""},
		{"timed until a date", "FREQ=DAILY;UNTIL=20260401", false, ""},
		{"all-day until a date-time", "FREQ=DAILY;UNTIL=20260401T000000Z", true, ""},
		{"until before start", "FREQ=DAILY;UNTIL=20260301T000000Z", false, ""},
		{"all-day BYHOUR", "FREQ=DAILY;BYHOUR=9", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ical.ValidateRRule(tt.rule, tt.allDay, timed)
			if tt.want == "" {
				if !errors.Is(err, ical.ErrInvalidRRule) {
					t.Errorf("ValidateRRule(%q) = %q, %v; want ErrInvalidRRule", tt.rule, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ValidateRRule(%q) = %q, %v; want %q", tt.rule, got, err, tt.want)
			}
		})
	}
}
