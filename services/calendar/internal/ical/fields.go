package ical

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"time"

	goical "github.com/emersion/go-ical"
)

// Fields are the properties of an event that a three-way merge after a CalDAV 412 compares:
// what a person may change in their calendar app and Postamt also keeps. Everything else
// (RRULE, EXDATE, done, status, links) is Postamt's alone and is not read back.
type Fields struct {
	// Sequence is the SEQUENCE, 0 when absent.
	Sequence int
	Summary  string
	Desc     string
	Location string
	// Start and End are the instants of a timed event (End from DTEND or DURATION).
	Start, End time.Time
	// Day is the DTSTART day of an all-day event.
	Day Date
}

// Time is the comparable form of the event's time: the instants of a timed event or the day
// of an all-day one. Two clients that write the same instant in different zones compare equal.
func (f Fields) Time() string {
	if !f.Day.IsZero() {
		return f.Day.String()
	}
	return f.Start.UTC().Format(time.RFC3339) + "/" + f.End.UTC().Format(time.RFC3339)
}

// ReadFields decodes the main VEVENT of an iCalendar object (the one without RECURRENCE-ID).
// TZIDs are resolved with zones, so Windows zone names written by Outlook are understood; an
// unknown TZID is an error rather than a guess.
func ReadFields(data []byte, zones *Zones) (Fields, error) {
	cal, err := decode(data)
	if err != nil {
		return Fields{}, err
	}
	for _, ev := range cal.Events() {
		if ev.Props.Get(goical.PropRecurrenceID) != nil {
			continue
		}
		var f Fields
		if p := ev.Props.Get(goical.PropSequence); p != nil {
			if f.Sequence, err = strconv.Atoi(p.Value); err != nil {
				return Fields{}, fmt.Errorf("ical: SEQUENCE: %w", err)
			}
		}
		f.Summary, _ = ev.Props.Text(goical.PropSummary) // absent: empty
		f.Desc, _ = ev.Props.Text(goical.PropDescription)
		f.Location, _ = ev.Props.Text(goical.PropLocation)
		start := ev.Props.Get(goical.PropDateTimeStart)
		if start == nil {
			return Fields{}, errors.New("ical: no DTSTART")
		}
		if start.ValueType() == goical.ValueDate || len(start.Value) == len("20060102") {
			t, err := time.Parse("20060102", start.Value)
			if err != nil {
				return Fields{}, fmt.Errorf("ical: DTSTART: %w", err)
			}
			f.Day = DateOf(t)
			return f, nil
		}
		if f.Start, err = instant(start, zones); err != nil {
			return Fields{}, fmt.Errorf("ical: DTSTART: %w", err)
		}
		switch end, dur := ev.Props.Get(goical.PropDateTimeEnd), ev.Props.Get(goical.PropDuration); {
		case end != nil:
			if f.End, err = instant(end, zones); err != nil {
				return Fields{}, fmt.Errorf("ical: DTEND: %w", err)
			}
		case dur != nil:
			d, err := dur.Duration()
			if err != nil {
				return Fields{}, fmt.Errorf("ical: DURATION: %w", err)
			}
			f.End = f.Start.Add(d)
		default:
			f.End = f.Start
		}
		return f, nil
	}
	return Fields{}, ErrNoEvent
}

// instant reads a DATE-TIME property: UTC ("Z"), with a TZID, or floating (read as UTC).
func instant(p *goical.Prop, zones *Zones) (time.Time, error) {
	const local = "20060102T150405"
	if len(p.Value) == len(local)+1 && p.Value[len(local)] == 'Z' {
		return time.Parse(local+"Z", p.Value)
	}
	loc := time.UTC
	if tzid := p.Params.Get(goical.PropTimezoneID); tzid != "" {
		l, err := zones.Load(tzid)
		if err != nil {
			return time.Time{}, err
		}
		loc = l
	}
	wall, err := time.Parse(local, p.Value)
	if err != nil {
		return time.Time{}, err
	}
	return clockTime(wall, loc), nil
}

// clockTime is the instant at which loc's clocks show wall's clock time (wall is read in UTC),
// as RFC 5545 §3.3.5 has it: a time that happens twice (clocks set back) is the first, a time
// that does not happen (clocks set forward) is read with the offset before the gap. Not
// time.Date, which leaves the choice open and picks the second east of UTC (02:30 on the night
// summer time ends in Berlin became 02:30 CET, not CEST).
func clockTime(wall time.Time, loc *time.Location) time.Time {
	offsetAt := func(t time.Time) time.Duration { _, off := t.In(loc).Zone(); return time.Duration(off) * time.Second }
	// Zones do not change twice within two days: the offsets a day either side are the two a
	// clock time near a change can have.
	before, after := offsetAt(wall.Add(-26*time.Hour)), offsetAt(wall.Add(26*time.Hour))
	first, second := wall.Add(-before), wall.Add(-after)
	if second.Before(first) {
		first, second = second, first
	}
	for _, t := range []time.Time{first, second} {
		if offsetAt(t) == wall.Sub(t) {
			return t.In(loc)
		}
	}
	return wall.Add(-before).In(loc) // in the gap
}

// WithSequence returns an object built by Builder.Build with its SEQUENCE replaced by seq.
// The push writes a SEQUENCE above the revision's own when the calendar already holds a
// higher one (RFC 5545 §3.8.7.4: it never goes down); the rest of the object is unchanged.
func WithSequence(ics []byte, seq int) ([]byte, error) {
	i := bytes.Index(ics, []byte("\r\nSEQUENCE:"))
	if i < 0 {
		return nil, errors.New("ical: no SEQUENCE line to replace")
	}
	start := i + len("\r\nSEQUENCE:")
	end := bytes.Index(ics[start:], []byte("\r\n"))
	if end < 0 {
		return nil, errors.New("ical: unterminated SEQUENCE line")
	}
	out := make([]byte, 0, len(ics)+4)
	out = append(out, ics[:start]...)
	out = strconv.AppendInt(out, int64(seq), 10)
	return append(out, ics[start+end:]...), nil
}
