package ical

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	goical "github.com/emersion/go-ical"
)

// MediaType is the Content-Type of the objects Build returns.
const MediaType = "text/calendar; charset=utf-8"

// Property names of our own (RFC 5545 §3.8.8.2), read back by Inspect.
const (
	// PropKind carries Kind.String(), so a reader can tell our deadlines from other events.
	PropKind = "X-POSTAMT-KIND"
	// PropDone carries TRUE or FALSE on all-day entries.
	PropDone = "X-POSTAMT-DONE"
)

// Categories are the CATEGORIES labels of all-day entries as users see them; they are
// configurable because users read them in their own language ("Frist", "Vorfrist",
// "Erledigt").
type Categories struct {
	// Deadline labels deadlines; default "Deadline".
	Deadline string
	// PreliminaryDeadline labels preliminary deadlines; default "Preliminary deadline".
	PreliminaryDeadline string
	// Done is added to done entries; default "Done".
	Done string
}

// Config configures a Builder. The zero value is usable.
type Config struct {
	// Zones resolves time zone names; nil means NewZones().
	Zones *Zones
	// ProdID is the PRODID of every object; default "-//Postamt//Calendar//EN".
	ProdID string
	// Categories are the labels of all-day entries; empty fields take their defaults.
	Categories Categories
}

// Builder validates entries and encodes them as iCalendar objects. It is safe for concurrent
// use.
type Builder struct {
	zones      *Zones
	prodID     string
	categories Categories
}

// NewBuilder returns a Builder for cfg.
func NewBuilder(cfg Config) (*Builder, error) {
	b := &Builder{zones: cfg.Zones, prodID: cfg.ProdID, categories: cfg.Categories}
	if b.zones == nil {
		z, err := NewZones()
		if err != nil {
			return nil, err
		}
		b.zones = z
	}
	if b.prodID == "" {
		b.prodID = "-//Postamt//Calendar//EN"
	}
	if strings.ContainsAny(b.prodID, "\r\n") {
		return nil, errors.New("ical: ProdID contains a line break")
	}
	if b.categories.Deadline == "" {
		b.categories.Deadline = "Deadline"
	}
	if b.categories.PreliminaryDeadline == "" {
		b.categories.PreliminaryDeadline = "Preliminary deadline"
	}
	if b.categories.Done == "" {
		b.categories.Done = "Done"
	}
	return b, nil
}

// Zones is the resolver the Builder uses, for callers that need a zone outside an entry.
func (b *Builder) Zones() *Zones { return b.zones }

// checked is an entry that passed Validate, with what validation resolved.
type checked struct {
	loc   *time.Location // appointments only
	rrule string         // normalised, or empty
}

// Validate checks e and returns a *ValidationError listing every invalid field, or nil.
func (b *Builder) Validate(e Entry) error {
	_, err := b.check(e)
	return err
}

func (b *Builder) check(e Entry) (checked, error) {
	var c checked
	var fields []*FieldError
	fail := func(field string, err error) { fields = append(fields, &FieldError{Field: field, Err: err}) }

	if f := checkUID("uid", e.UID); f != nil {
		fields = append(fields, f)
	}
	if e.Sequence < 0 {
		fail("sequence", fmt.Errorf("%w: negative", ErrInvalid))
	}
	if e.Stamp.IsZero() {
		fail("stamp", ErrRequired)
	}
	for _, f := range []*FieldError{
		checkText("summary", e.Summary, maxSummaryLen, true),
		checkText("description", e.Description, maxDescriptionLen, false),
		checkText("location", e.Location, maxLocationLen, false),
	} {
		if f != nil {
			fields = append(fields, f)
		}
	}

	var start time.Time // the first occurrence, for the rule
	switch {
	case e.Kind == Appointment:
		if !e.Day.IsZero() {
			fail("day", ErrNotForKind)
		}
		if e.Done {
			fail("done", ErrNotForKind)
		}
		if len(e.ExceptDays) > 0 {
			fail("except_days", ErrNotForKind)
		}
		if e.TimeZone == "" {
			fail("time_zone", ErrRequired)
		} else if loc, err := b.zones.Load(e.TimeZone); err != nil {
			fail("time_zone", err)
		} else {
			c.loc = loc
		}
		switch {
		case e.Start.IsZero():
			fail("start", ErrRequired)
		case !inRangeIn(e.Start, c.loc):
			fail("start", errOutOfRange)
		}
		switch {
		case e.End.IsZero():
			fail("end", ErrRequired)
		case !inRangeIn(e.End, c.loc):
			fail("end", errOutOfRange)
		case !e.Start.IsZero() && e.End.Before(e.Start):
			fail("end", ErrEndBeforeStart)
		}
		if len(e.ExceptStarts) > maxExceptions {
			fail("except_starts", fmt.Errorf("%w: more than %d", ErrTooLong, maxExceptions))
		}
		for _, x := range e.ExceptStarts {
			if !inRangeIn(x, c.loc) {
				fail("except_starts", fmt.Errorf("%w: %s", errOutOfRange, x.UTC().Format(time.RFC3339)))
				break
			}
		}
		if len(e.ExceptStarts) > 0 && e.RRule == "" {
			fail("except_starts", fmt.Errorf("%w: exceptions need a recurrence rule", ErrInvalid))
		}
		start = e.Start
	case e.Kind.AllDay():
		if !e.Start.IsZero() {
			fail("start", ErrNotForKind)
		}
		if !e.End.IsZero() {
			fail("end", ErrNotForKind)
		}
		if e.TimeZone != "" {
			fail("time_zone", ErrNotForKind)
		}
		if len(e.ExceptStarts) > 0 {
			fail("except_starts", ErrNotForKind)
		}
		switch {
		case e.Day.IsZero():
			fail("day", ErrRequired)
		case !e.Day.Valid():
			fail("day", fmt.Errorf("%w: no such day %s", ErrInvalid, e.Day))
		case !e.Day.AddDays(1).Valid():
			// DTEND is the next day (exclusive), which must be a DATE too.
			fail("day", fmt.Errorf("%w: the last day is 9998-12-31 (the event ends on the next day, which iCalendar must be able to write)", ErrInvalid))
		}
		if len(e.ExceptDays) > maxExceptions {
			fail("except_days", fmt.Errorf("%w: more than %d", ErrTooLong, maxExceptions))
		}
		for _, d := range e.ExceptDays {
			if !d.Valid() {
				fail("except_days", fmt.Errorf("%w: no such day %s", ErrInvalid, d))
				break
			}
		}
		if len(e.ExceptDays) > 0 && e.RRule == "" {
			fail("except_days", fmt.Errorf("%w: exceptions need a recurrence rule", ErrInvalid))
		}
		start = e.Day.midnight()
	case e.Kind == KindUnspecified:
		fail("kind", ErrRequired)
	default:
		fail("kind", fmt.Errorf("%w: %v", ErrInvalid, e.Kind))
	}

	if e.RRule != "" && !start.IsZero() && (e.Kind.AllDay() || c.loc != nil) {
		if c.loc != nil {
			start = start.In(c.loc)
		}
		rule, err := ValidateRRule(e.RRule, e.Kind.AllDay(), start)
		if err != nil {
			fail("rrule", err)
		}
		c.rrule = rule
	}

	if len(e.Related) > maxRelations {
		fail("related", fmt.Errorf("%w: more than %d", ErrTooLong, maxRelations))
	}
	for _, r := range e.Related {
		if f := checkUID("related", r.UID); f != nil {
			fields = append(fields, f)
			break
		}
		if r.Type != RelParent && r.Type != RelChild && r.Type != RelSibling {
			fail("related", fmt.Errorf("%w: relation type %q", ErrInvalid, r.Type))
			break
		}
		if r.UID == e.UID {
			fail("related", fmt.Errorf("%w: an entry related to itself", ErrInvalid))
			break
		}
	}

	if len(fields) > 0 {
		return checked{}, &ValidationError{Fields: fields}
	}
	return c, nil
}

// errOutOfRange says an instant cannot be written as an iCalendar DATE-TIME.
var errOutOfRange = fmt.Errorf("%w: out of range: iCalendar writes years 1-9999, in UTC and on the clock of the entry's time zone", ErrInvalid)

// inRange reports whether t can be written as an iCalendar DATE-TIME in UTC (years 1..9999).
func inRange(t time.Time) bool { y := t.UTC().Year(); return y >= 1 && y <= 9999 }

// inRangeIn reports whether t can be written as an iCalendar DATE-TIME both in UTC and on the
// clock of loc (when known), where an appointment's times are written: 9999-12-31T23:30:00Z is
// in the year 10000 in Vienna, 0001-01-01T02:00:00Z in the year 0 in New York.
func inRangeIn(t time.Time, loc *time.Location) bool {
	if !inRange(t) {
		return false
	}
	if loc == nil {
		return true
	}
	y := t.In(loc).Year()
	return y >= 1 && y <= 9999
}

// checkUID accepts printable ASCII without spaces, the characters every client copes with.
func checkUID(field, uid string) *FieldError {
	switch {
	case uid == "":
		return &FieldError{Field: field, Err: ErrRequired}
	case len(uid) > maxUIDLen:
		return &FieldError{Field: field, Err: fmt.Errorf("%w: more than %d bytes", ErrTooLong, maxUIDLen)}
	}
	for i := 0; i < len(uid); i++ {
		if uid[i] <= ' ' || uid[i] > '~' {
			return &FieldError{Field: field, Err: fmt.Errorf("%w: a UID is printable ASCII without spaces", ErrInvalid)}
		}
	}
	return nil
}

// checkText accepts UTF-8 without control characters other than tab and line breaks.
func checkText(field, s string, limit int, required bool) *FieldError {
	switch {
	case required && strings.TrimSpace(s) == "":
		return &FieldError{Field: field, Err: ErrRequired}
	case len(s) > limit:
		return &FieldError{Field: field, Err: fmt.Errorf("%w: more than %d bytes", ErrTooLong, limit)}
	case !utf8.ValidString(s):
		return &FieldError{Field: field, Err: fmt.Errorf("%w: not UTF-8", ErrInvalid)}
	}
	for _, r := range s {
		if (r < ' ' && r != '\t' && r != '\n' && r != '\r') || r == 0x7f {
			return &FieldError{Field: field, Err: fmt.Errorf("%w: control character %U", ErrInvalid, r)}
		}
	}
	return nil
}

// Build validates e and encodes it as a VCALENDAR holding one VEVENT (and, for appointments,
// the VTIMEZONE of its zone), ready to be stored on a CalDAV server or sent to an agent. The
// output is deterministic: the same entry gives the same bytes.
func (b *Builder) Build(e Entry) ([]byte, error) {
	c, err := b.check(e)
	if err != nil {
		return nil, err
	}
	cal := goical.NewCalendar()
	cal.Props.SetText(goical.PropProductID, b.prodID)
	cal.Props.SetText(goical.PropVersion, "2.0")
	cal.Props.SetText(goical.PropCalendarScale, "GREGORIAN")

	ev := goical.NewEvent()
	p := ev.Props
	p.SetText(goical.PropUID, e.UID)
	p.SetDateTime(goical.PropDateTimeStamp, e.Stamp.UTC())
	p.SetDateTime(goical.PropLastModified, e.Stamp.UTC())
	setRaw(p, goical.PropSequence, strconv.Itoa(e.Sequence))
	p.SetText(goical.PropSummary, text(e.Summary))
	if e.Description != "" {
		p.SetText(goical.PropDescription, text(e.Description))
	}
	if e.Location != "" {
		p.SetText(goical.PropLocation, text(e.Location))
	}
	status := "CONFIRMED"
	if e.Cancelled {
		status = "CANCELLED"
	}
	setRaw(p, goical.PropStatus, status)
	setRaw(p, PropKind, e.Kind.String())

	if e.Kind == Appointment {
		start, end := inZone(e.Start, c.loc), inZone(e.End, c.loc)
		if c.rrule == "" {
			start, end = exact(start), exact(end)
		}
		p.SetDateTime(goical.PropDateTimeStart, start)
		p.SetDateTime(goical.PropDateTimeEnd, end)
		setRaw(p, goical.PropTransparency, "OPAQUE")
		if c.rrule != "" {
			for _, x := range sortedTimes(e.ExceptStarts) {
				exdate := goical.NewProp(goical.PropExceptionDates)
				exdate.SetDateTime(inZone(x, c.loc))
				p.Add(exdate)
			}
		}
		if c.loc != time.UTC {
			cal.Children = append(cal.Children, vtimezone(c.loc, c.loc.String(), e.Start))
		}
	} else {
		p.SetDate(goical.PropDateTimeStart, e.Day.midnight())
		p.SetDate(goical.PropDateTimeEnd, e.Day.AddDays(1).midnight()) // DTEND is exclusive
		setRaw(p, goical.PropTransparency, "TRANSPARENT")              // a deadline blocks no time
		for _, d := range sortedDays(e.ExceptDays) {
			exdate := goical.NewProp(goical.PropExceptionDates)
			exdate.SetDate(d.midnight())
			p.Add(exdate)
		}
		cats := []string{b.categories.Deadline}
		if e.Kind == PreliminaryDeadline {
			cats[0] = b.categories.PreliminaryDeadline
		}
		done := "FALSE"
		if e.Done {
			cats, done = append(cats, b.categories.Done), "TRUE"
		}
		cat := goical.NewProp(goical.PropCategories)
		cat.SetTextList(cats)
		p.Set(cat)
		setRaw(p, PropDone, done)
	}
	if c.rrule != "" {
		rule := goical.NewProp(goical.PropRecurrenceRule)
		rule.SetValueType(goical.ValueRecurrence)
		rule.Value = c.rrule
		p.Set(rule)
	}
	for _, r := range e.Related {
		rel := goical.NewProp(goical.PropRelatedTo)
		rel.SetText(r.UID)
		rel.Params.Set(goical.ParamRelationshipType, string(r.Type))
		p.Add(rel)
	}
	cal.Children = append(cal.Children, ev.Component)

	var buf bytes.Buffer
	if err := goical.NewEncoder(&buf).Encode(cal); err != nil {
		return nil, fmt.Errorf("ical: encode: %w", err)
	}
	return fold(buf.Bytes()), nil
}

// setRaw sets a property whose value needs no TEXT escaping (numbers, enumerations).
func setRaw(p goical.Props, name, value string) {
	p.Set(&goical.Prop{Name: name, Params: goical.Params{}, Value: value})
}

// text turns CRLF into LF: go-ical escapes LF as \n but refuses CR.
func text(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\r", "\n")
}

// inZone is t on loc's clock, truncated to the second iCalendar can express. For UTC go-ical
// writes the Z form without a TZID.
func inZone(t time.Time, loc *time.Location) time.Time { return t.In(loc).Truncate(time.Second) }

// exact is t (on its zone's clock) unless a reader would take its clock time for another instant:
// the second time a clock time happens, the night the clocks are set back, reads with a TZID as
// the first (RFC 5545 §3.3.5, clockTime), an hour early. Such a time is written in UTC instead,
// which every reader takes exactly. Only for a single entry: a series' DTSTART keeps its TZID,
// since its recurrences follow the zone's clock (its first occurrence reads as the first of the
// two times).
func exact(t time.Time) time.Time {
	wall := time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), 0, time.UTC)
	if clockTime(wall, t.Location()).Equal(t) {
		return t
	}
	return t.UTC()
}

func sortedTimes(ts []time.Time) []time.Time {
	out := slices.Clone(ts)
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return slices.CompactFunc(out, func(a, b time.Time) bool { return a.Equal(b) })
}

func sortedDays(ds []Date) []Date {
	out := slices.Clone(ds)
	slices.SortFunc(out, func(a, b Date) int { return a.midnight().Compare(b.midnight()) })
	return slices.Compact(out)
}

// foldLimit is the longest content line RFC 5545 §3.1 allows, in octets without the CRLF.
const foldLimit = 75

// fold breaks content lines longer than 75 octets into continuation lines starting with a
// space, never inside a UTF-8 sequence. go-ical writes each property on one line however long.
func fold(b []byte) []byte {
	var out bytes.Buffer
	out.Grow(len(b) + len(b)/foldLimit*3)
	for len(b) > 0 {
		line, rest, _ := bytes.Cut(b, []byte("\r\n"))
		b = rest
		limit := foldLimit
		for len(line) > limit {
			cut := limit
			for cut > 0 && !utf8.RuneStart(line[cut]) {
				cut--
			}
			out.Write(line[:cut])
			out.WriteString("\r\n ")
			line = line[cut:]
			limit = foldLimit - 1 // the leading space counts
		}
		out.Write(line)
		out.WriteString("\r\n")
	}
	return out.Bytes()
}
