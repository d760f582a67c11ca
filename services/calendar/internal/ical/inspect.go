package ical

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"time"

	goical "github.com/emersion/go-ical"
)

// Info is what the service needs to know about an object found on a calendar server — after a
// 412 Precondition Failed, to decide whether the object there is a revision of ours (a retry
// of a write whose answer was lost) or a change made by someone else that needs a merge.
type Info struct {
	// UID of the event.
	UID string
	// Sequence is its SEQUENCE, 0 when absent.
	Sequence int
	// Stamp is its DTSTAMP (zero when absent or malformed).
	Stamp time.Time
	// Kind is its X-POSTAMT-KIND, empty for events not written by us or stripped by a client.
	Kind string
	// Summary is its title.
	Summary string
}

// SameRevision reports whether i and other describe the same revision of the same entry —
// the same UID, SEQUENCE and DTSTAMP. Servers may re-serialise what they store, so objects
// are compared by these properties, not by their bytes.
func (i Info) SameRevision(other Info) bool {
	return i.UID == other.UID && i.Sequence == other.Sequence && i.Stamp.Equal(other.Stamp)
}

// ErrNoEvent says an iCalendar object holds no VEVENT.
var ErrNoEvent = errors.New("ical: no VEVENT in the object")

// Inspect decodes an iCalendar object and reports on its main VEVENT (the one without a
// RECURRENCE-ID; overrides of single occurrences are skipped).
func Inspect(data []byte) (Info, error) {
	cal, err := decode(data)
	if err != nil {
		return Info{}, err
	}
	for _, ev := range cal.Events() {
		if ev.Props.Get(goical.PropRecurrenceID) != nil {
			continue
		}
		var info Info
		if info.UID, err = ev.Props.Text(goical.PropUID); err != nil {
			return Info{}, fmt.Errorf("ical: UID: %w", err)
		}
		if p := ev.Props.Get(goical.PropSequence); p != nil {
			if info.Sequence, err = strconv.Atoi(p.Value); err != nil {
				return Info{}, fmt.Errorf("ical: SEQUENCE: %w", err)
			}
		}
		if p := ev.Props.Get(goical.PropDateTimeStamp); p != nil {
			info.Stamp, _ = p.DateTime(time.UTC) // a malformed stamp only makes SameRevision false
		}
		if p := ev.Props.Get(PropKind); p != nil {
			info.Kind = p.Value
		}
		info.Summary, _ = ev.Props.Text(goical.PropSummary) // absent or odd: no title
		return info, nil
	}
	return Info{}, ErrNoEvent
}

// decode parses an iCalendar object from a calendar server. go-ical panics on some malformed
// content lines (a parameter without a value at the end of a line: "X;P="); such an object
// is an error like any other malformed one, not the end of the push worker.
func decode(data []byte) (cal *goical.Calendar, err error) {
	defer func() {
		if r := recover(); r != nil {
			cal, err = nil, fmt.Errorf("ical: decode: malformed object (%v)", r)
		}
	}()
	cal, err = goical.NewDecoder(bytes.NewReader(data)).Decode()
	if err != nil {
		return nil, fmt.Errorf("ical: decode: %w", err)
	}
	return cal, nil
}
