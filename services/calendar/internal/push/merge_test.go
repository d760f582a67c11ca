package push

import (
	"strings"
	"testing"

	"github.com/postamt/postamt/services/calendar/internal/ical"
)

func TestThreeWay(t *testing.T) {
	base := ical.Fields{Summary: "S", Location: "L", Day: ical.Date{Year: 2026, Month: 3, Day: 10}}
	with := func(f func(*ical.Fields)) ical.Fields { c := base; f(&c); return c }
	tests := []struct {
		name          string
		kind          ical.Kind
		base          *ical.Fields
		ours, theirs  ical.Fields
		wantLocation  string
		wantCalendar  bool
		wantWarning   string
		wantDetailHas string
	}{
		{"calendar only, appointment", ical.Appointment, &base, base, with(func(f *ical.Fields) { f.Location = "X" }), "X", true, "", "location: changed in the calendar, kept"},
		{"postamt only", ical.Appointment, &base, with(func(f *ical.Fields) { f.Location = "P" }), base, "P", false, "", "location: changed in Postamt, kept"},
		{"both, appointment", ical.Appointment, &base, with(func(f *ical.Fields) { f.Location = "P" }), with(func(f *ical.Fields) { f.Location = "X" }), "X", true, "location: changed on both sides, calendar won", ""},
		{"both, deadline", ical.Deadline, &base, with(func(f *ical.Fields) { f.Location = "P" }), with(func(f *ical.Fields) { f.Location = "X" }), "P", false, "location: changed on both sides, Postamt won (deadline)", ""},
		{"calendar only, deadline", ical.Deadline, &base, base, with(func(f *ical.Fields) { f.Location = "X" }), "L", false, "location: changed in the calendar, Postamt won (deadline)", ""},
		{"no base", ical.Appointment, nil, with(func(f *ical.Fields) { f.Location = "P" }), with(func(f *ical.Fields) { f.Location = "X" }), "X", true, "location: changed on both sides, calendar won", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := threeWay(tt.kind, tt.base, tt.ours, tt.theirs)
			if got, want := m.change.Location, tt.wantLocation; got != want {
				t.Errorf("location = %q, want %q", got, want)
			}
			if got, want := m.fromCalendar, tt.wantCalendar; got != want {
				t.Errorf("fromCalendar = %v, want %v", got, want)
			}
			if got, want := m.warning, tt.wantWarning; got != want {
				t.Errorf("warning = %q, want %q", got, want)
			}
			if !strings.Contains(m.detail, tt.wantDetailHas) {
				t.Errorf("detail = %q, want it to contain %q", m.detail, tt.wantDetailHas)
			}
		})
	}
}

func TestWithSequence(t *testing.T) {
	got, err := ical.WithSequence([]byte("BEGIN:VEVENT\r\nSEQUENCE:3\r\nSUMMARY:x\r\nEND:VEVENT\r\n"), 8)
	if err != nil {
		t.Fatal(err)
	}
	if want := "BEGIN:VEVENT\r\nSEQUENCE:8\r\nSUMMARY:x\r\nEND:VEVENT\r\n"; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
