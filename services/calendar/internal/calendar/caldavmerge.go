package calendar

import (
	"context"
	"time"

	"github.com/postamt/postamt/internal/auth"
)

// MergeService is the service name that revisions adopted from a CalDAV calendar carry as
// their updater ("service:caldav-merge"), so the history shows the change came from the
// calendar and not from a member of staff.
const MergeService = "caldav-merge"

// CalendarChange is what a three-way merge after a CalDAV 412 kept from the calendar's side:
// the content fields a person may edit in a calendar app. The time is given as instants and
// is written in the entry's own zone.
type CalendarChange struct {
	Summary, Desc, Location string
	// Start and End replace an appointment's times; ignored for all-day entries.
	Start, End time.Time
}

// AdoptCalendarChange writes the result of a CalDAV merge as the entry's next revision on top
// of revision prev, so that Postamt shows what the calendar holds (GetEntry no longer says
// 09:00 when the calendar says 14:00). It is an ordinary revision — a revision bump, an
// EntryChanged event and a queue item — whose push then carries the merged object back with a
// SEQUENCE above the calendar's. It fails with ABORTED when the entry moved past prev
// meanwhile; the newer revision's push merges again.
func (s *Service) AdoptCalendarChange(ctx context.Context, tenant, id string, prev int64, c CalendarChange) (*Entry, error) {
	p := auth.Principal{Tenant: tenant, Service: MergeService}
	return s.change(ctx, p, id, prev, func(cur, next *Entry) (bool, error) {
		if cur.Cancelled {
			return false, nil // a cancellation wins over any calendar edit
		}
		next.Summary, next.Desc, next.Location = c.Summary, c.Desc, c.Location
		if !cur.Kind.AllDay() {
			next.Start, next.End = c.Start, c.End
		}
		return true, nil
	})
}
