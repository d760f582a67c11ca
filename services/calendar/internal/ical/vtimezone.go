package ical

import (
	"fmt"
	"time"

	goical "github.com/emersion/go-ical"
)

// Go's time package does not expose a zone's transition table, so VTIMEZONE components are
// derived by probing: find the instants in the years around an event at which the UTC offset
// (or the daylight flag) changes, then describe them as yearly rules when the years agree.

// transition is one change of a zone's offset.
type transition struct {
	at       time.Time // first instant (UTC) with the new offset
	from, to int       // UTC offsets in seconds before and after
	name     string    // abbreviation after, e.g. "CEST"
	dst      bool      // daylight saving time after
}

// wall is the local clock time at which the transition happens, on the clock before it (the
// form RFC 5545 wants in an observance's DTSTART).
func (tr transition) wall() time.Time {
	return tr.at.Add(time.Duration(tr.from) * time.Second).UTC()
}

// zoneState is what a transition changes.
type zoneState struct {
	offset int
	dst    bool
}

func stateAt(loc *time.Location, unix int64) zoneState {
	t := time.Unix(unix, 0).In(loc)
	_, off := t.Zone()
	return zoneState{offset: off, dst: t.IsDST()}
}

// transitions lists the offset changes of loc in [from, to). Zones do not change twice within
// a day, so a daily probe followed by a binary search finds each one to the second.
func transitions(loc *time.Location, from, to time.Time) []transition {
	const day = 24 * 60 * 60
	var out []transition
	lo := from.Unix()
	prev := stateAt(loc, lo)
	for t := lo + day; t < to.Unix()+day; t += day {
		cur := stateAt(loc, t)
		if cur == prev {
			continue
		}
		a, b := t-day, t // state(a) == prev, state(b) != prev
		for b-a > 1 {
			mid := a + (b-a)/2
			if stateAt(loc, mid) == prev {
				a = mid
			} else {
				b = mid
			}
		}
		at := time.Unix(b, 0).UTC()
		if !at.Before(to) {
			break
		}
		name, _ := at.In(loc).Zone()
		after := stateAt(loc, b)
		out = append(out, transition{at: at, from: prev.offset, to: after.offset, name: name, dst: after.dst})
		prev = after
		t = b // continue probing from the transition
	}
	return out
}

// ruleYears is how many years after the event's year a derived yearly rule must predict
// before it is trusted; three years tell "last Sunday" from "fourth Sunday".
const ruleYears = 3

// vtimezone describes loc around start (the first occurrence of an event) as a VTIMEZONE with
// TZID tzid. Zones with daylight saving time get one STANDARD and one DAYLIGHT observance with
// yearly rules (as Outlook and Thunderbird write them); zones whose changes follow no such
// rule (e.g. Africa/Casablanca) get the explicit changes of the event's year and the next;
// zones without changes get one observance.
func vtimezone(loc *time.Location, tzid string, start time.Time) *goical.Component {
	year := start.In(loc).Year()
	from := time.Date(year, time.January, 1, 0, 0, 0, 0, loc)
	trs := transitions(loc, from, time.Date(year+1+ruleYears, time.January, 1, 0, 0, 0, 0, loc))

	tz := goical.NewComponent(goical.CompTimezone)
	tz.Props.SetText(goical.PropTimezoneID, tzid)

	var first []transition // the changes in the event's year
	for _, tr := range trs {
		if tr.wall().Year() == year {
			first = append(first, tr)
		}
	}
	if len(trs) == 0 {
		// One offset throughout: a single observance from the epoch on.
		name, off := start.In(loc).Zone()
		tz.Children = append(tz.Children, observance(start.In(loc).IsDST(), "19700101T000000", off, off, name, ""))
		return tz
	}
	if rules, ok := yearlyRules(first, trs, year); ok {
		for i, tr := range first {
			w := tr.wall()
			d := nthWeekday(1970, w.Month(), w.Weekday(), rules[i])
			dtstart := time.Date(1970, w.Month(), d, w.Hour(), w.Minute(), w.Second(), 0, time.UTC)
			rrule := fmt.Sprintf("FREQ=YEARLY;BYMONTH=%d;BYDAY=%d%s", int(w.Month()), rules[i], weekdayCode(w.Weekday()))
			tz.Children = append(tz.Children, observance(tr.dst, dtstart.Format(localFormat), tr.from, tr.to, tr.name, rrule))
		}
		return tz
	}
	// No yearly pattern: the state at the start of the year from the epoch on, then every
	// change of this year and the next as it happens.
	jan := stateAt(loc, from.Unix())
	name, _ := from.Zone()
	tz.Children = append(tz.Children, observance(jan.dst, "19700101T000000", jan.offset, jan.offset, name, ""))
	for _, tr := range trs {
		if tr.wall().Year() > year+1 {
			break
		}
		tz.Children = append(tz.Children, observance(tr.dst, tr.wall().Format(localFormat), tr.from, tr.to, tr.name, ""))
	}
	return tz
}

// localFormat is an iCalendar local (floating) DATE-TIME.
const localFormat = "20060102T150405"

// yearlyRules finds, for each change in the event's year, the BYDAY ordinal (1..5, or -1 for
// the last) of a yearly rule "the nth weekday of the month at this clock time" that also
// predicts the same change in each of the following ruleYears years. It fails when any change
// has no such rule or the years have different numbers of changes.
func yearlyRules(first, all []transition, year int) ([]int, bool) {
	if len(all) != len(first)*(ruleYears+1) {
		return nil, false
	}
	rules := make([]int, len(first))
	for i, tr := range first {
		w := tr.wall()
		candidates := []int{(w.Day()-1)/7 + 1}
		if w.Day()+7 > daysIn(w.Year(), w.Month()) {
			candidates = append([]int{-1}, candidates...)
		}
		found := false
		for _, n := range candidates {
			// The rule must also have a day in 1970, where its observance starts.
			if nthWeekday(1970, w.Month(), w.Weekday(), n) != 0 && predicts(tr, n, all, year) {
				rules[i], found = n, true
				break
			}
		}
		if !found {
			return nil, false
		}
	}
	return rules, true
}

// predicts reports whether the rule "nth weekday of tr's month at tr's clock time, same
// offsets" matches a change in every one of the ruleYears years after year.
func predicts(tr transition, n int, all []transition, year int) bool {
	w := tr.wall()
	for y := year + 1; y <= year+ruleYears; y++ {
		d := nthWeekday(y, w.Month(), w.Weekday(), n)
		if d == 0 {
			return false
		}
		want := time.Date(y, w.Month(), d, w.Hour(), w.Minute(), w.Second(), 0, time.UTC)
		match := false
		for _, o := range all {
			if o.wall().Equal(want) && o.from == tr.from && o.to == tr.to {
				match = true
				break
			}
		}
		if !match {
			return false
		}
	}
	return true
}

// nthWeekday is the day of month of the nth wd in month of year, counting from the end for
// n == -1, or 0 when there is no such day (a fifth Monday).
func nthWeekday(year int, month time.Month, wd time.Weekday, n int) int {
	if n == -1 {
		last := daysIn(year, month)
		lw := time.Date(year, month, last, 0, 0, 0, 0, time.UTC).Weekday()
		return last - (int(lw)-int(wd)+7)%7
	}
	fw := time.Date(year, month, 1, 0, 0, 0, 0, time.UTC).Weekday()
	d := 1 + (int(wd)-int(fw)+7)%7 + (n-1)*7
	if d > daysIn(year, month) {
		return 0
	}
	return d
}

func daysIn(year int, month time.Month) int {
	return time.Date(year, month+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

func weekdayCode(wd time.Weekday) string {
	return [...]string{"SU", "MO", "TU", "WE", "TH", "FR", "SA"}[wd]
}

// observance builds a STANDARD or DAYLIGHT sub-component.
func observance(dst bool, dtstart string, from, to int, name, rrule string) *goical.Component {
	c := goical.NewComponent(goical.CompTimezoneStandard)
	if dst {
		c = goical.NewComponent(goical.CompTimezoneDaylight)
	}
	c.Props.Set(&goical.Prop{Name: goical.PropDateTimeStart, Params: goical.Params{}, Value: dtstart})
	c.Props.Set(&goical.Prop{Name: goical.PropTimezoneOffsetFrom, Params: goical.Params{}, Value: utcOffset(from)})
	c.Props.Set(&goical.Prop{Name: goical.PropTimezoneOffsetTo, Params: goical.Params{}, Value: utcOffset(to)})
	if name != "" {
		c.Props.SetText(goical.PropTimezoneName, name)
	}
	if rrule != "" {
		c.Props.Set(&goical.Prop{Name: goical.PropRecurrenceRule, Params: goical.Params{}, Value: rrule})
	}
	return c
}

// utcOffset formats seconds east of UTC as an iCalendar UTC-OFFSET: +HHMM, or +HHMMSS when
// the seconds are not zero.
func utcOffset(sec int) string {
	sign := '+'
	if sec < 0 {
		sign, sec = '-', -sec
	}
	h, m, s := sec/3600, sec/60%60, sec%60
	if s != 0 {
		return fmt.Sprintf("%c%02d%02d%02d", sign, h, m, s)
	}
	return fmt.Sprintf("%c%02d%02d", sign, h, m)
}
