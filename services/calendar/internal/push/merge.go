package push

import (
	"strings"

	"github.com/postamt/postamt/services/calendar/internal/calendar"
	"github.com/postamt/postamt/services/calendar/internal/ical"
)

// merged is the result of a three-way merge of one entry's fields.
type merged struct {
	// change is the merged content, as a revision would carry it.
	change calendar.CalendarChange
	// fromCalendar is true when some field takes the calendar's value: Postamt must adopt the
	// merge as a new revision. False means our revision is the result and is written as is.
	fromCalendar bool
	// detail names every field that differed and which side it came from (the sync log line).
	detail string
	// warning names the contested fields only: changed on both sides, or changed in the
	// calendar and overruled (the entry's warning). Empty when nothing was contested.
	warning string
}

// threeWay merges our revision and the calendar's version (theirs) against base, the object
// Postamt last pushed or adopted (nil when unknown: every difference then counts as changed on
// both sides). Per field (summary, description, location, time):
//   - equal on both sides, or changed in Postamt only: ours;
//   - changed in the calendar only: theirs for appointments; ours for deadlines (a deadline
//     must not change in a calendar app), which is contested;
//   - changed on both sides: the calendar wins for appointments (the owner, who attends, edited
//     their own appointment); Postamt wins for deadlines. Contested either way.
func threeWay(kind ical.Kind, base *ical.Fields, ours, theirs ical.Fields) merged {
	m := merged{change: calendar.CalendarChange{
		Summary: ours.Summary, Desc: ours.Desc, Location: ours.Location, Start: ours.Start, End: ours.End,
	}}
	var detail, warning []string
	field := func(name, b, o, t string, take func()) {
		switch {
		case o == t:
			return
		case base != nil && t == b:
			detail = append(detail, name+": changed in Postamt, kept")
			return
		}
		both := base == nil || o != b
		var note string
		switch {
		case kind == ical.Appointment && both:
			note = name + ": changed on both sides, calendar won"
		case kind == ical.Appointment:
			detail = append(detail, name+": changed in the calendar, kept")
			take()
			m.fromCalendar = true
			return
		case both:
			note = name + ": changed on both sides, Postamt won (deadline)"
		default:
			note = name + ": changed in the calendar, Postamt won (deadline)"
		}
		if kind == ical.Appointment {
			take()
			m.fromCalendar = true
		}
		detail, warning = append(detail, note), append(warning, note)
	}
	var b ical.Fields
	if base != nil {
		b = *base
	}
	field("summary", b.Summary, ours.Summary, theirs.Summary, func() { m.change.Summary = theirs.Summary })
	field("description", b.Desc, ours.Desc, theirs.Desc, func() { m.change.Desc = theirs.Desc })
	field("location", b.Location, ours.Location, theirs.Location, func() { m.change.Location = theirs.Location })
	bt := ""
	if base != nil {
		bt = b.Time()
	}
	field("time", bt, ours.Time(), theirs.Time(), func() { m.change.Start, m.change.End = theirs.Start, theirs.End })
	if len(detail) == 0 {
		detail = append(detail, "no field differs")
	}
	m.detail, m.warning = strings.Join(detail, "; "), strings.Join(warning, "; ")
	return m
}

// fieldsOf is the merge view of one of our revisions.
func fieldsOf(rev *calendar.Revision, seq int) ical.Fields {
	e := rev.Entry
	f := ical.Fields{Sequence: seq, Summary: e.Summary, Desc: e.Desc, Location: e.Location}
	if e.Kind.AllDay() {
		f.Day = e.Day
	} else {
		f.Start, f.End = e.Start, e.End
	}
	return f
}
