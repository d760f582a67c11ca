package ical

import (
	"testing"
	"time"
)

// TestReadFieldsClockTimesAroundChanges: a DTSTART with a TZID whose clock time happens twice is
// the first of them, one that does not happen is read with the offset before the gap (RFC 5545
// §3.3.5, whose examples these are, with Berlin). time.ParseInLocation gave the second east of
// UTC: 02:30 on the night summer time ends in Berlin was read an hour late (found by FuzzBuild).
func TestReadFieldsClockTimesAroundChanges(t *testing.T) {
	tests := []struct{ tzid, value, want string }{
		{"America/New_York", "20071104T013000", "2007-11-04T05:30:00Z"}, // 1:30 EDT
		{"America/New_York", "20070311T023000", "2007-03-11T07:30:00Z"}, // 3:30 EDT
		{"Europe/Berlin", "20261025T023000", "2026-10-25T00:30:00Z"},    // 2:30 CEST
		{"Europe/Berlin", "20260329T023000", "2026-03-29T01:30:00Z"},    // 3:30 CEST
		{"Europe/Berlin", "20260710T090000", "2026-07-10T07:00:00Z"},
		{"W. Europe Standard Time", "20261025T023000", "2026-10-25T00:30:00Z"},
		{"Australia/Lord_Howe", "20260405T014500", "2026-04-04T14:45:00Z"}, // +11 before the half-hour change
	}
	z, err := NewZones()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.tzid+" "+tt.value, func(t *testing.T) {
			ics := "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTAMP:20260101T000000Z\r\n" +
				"DTSTART;TZID=" + tt.tzid + ":" + tt.value + "\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
			f, err := ReadFields([]byte(ics), z)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Start.UTC().Format(time.RFC3339); got != tt.want {
				t.Errorf("DTSTART = %s, want %s", got, tt.want)
			}
		})
	}
}

// TestMalformedObjectsAreErrors: go-ical panics on some content lines; Inspect and ReadFields
// return an error instead (found by FuzzReadFields).
func TestMalformedObjectsAreErrors(t *testing.T) {
	z, err := NewZones()
	if err != nil {
		t.Fatal(err)
	}
	for _, data := range []string{"0;0=", "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY;X=\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"} {
		if _, err := Inspect([]byte(data)); err == nil {
			t.Errorf("Inspect(%q) = nil error", data)
		}
		if _, err := ReadFields([]byte(data), z); err == nil {
			t.Errorf("ReadFields(%q) = nil error", data)
		}
	}
}
