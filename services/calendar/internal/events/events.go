// Package events defines what the calendar announces: EntryChanged, EntryDelivered and
// DeliveryFailed. The store writes each in the same script as the state it announces; the relay
// publishes them to JetStream.
package events

import (
	"strconv"

	"google.golang.org/protobuf/proto"

	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
	"github.com/postamt/postamt/services/calendar/internal/wire"
)

// StreamName is the JetStream stream of calendar events.
const StreamName = "POSTAMT_CALENDAR"

// StreamSubjects are the subjects StreamName holds.
var StreamSubjects = []string{"postamt.calendar.v1.>"}

// Subjects of the events.
const (
	EntryChangedSubject   = "postamt.calendar.v1.EntryChanged"
	EntryDeliveredSubject = "postamt.calendar.v1.EntryDelivered"
	DeliveryFailedSubject = "postamt.calendar.v1.DeliveryFailed"
)

// MailboxStreamName is mailbox's stream, whose events drop cached users.
const MailboxStreamName = "POSTAMT_MAILBOX"

// Event is an announcement ready for the store to append: its id becomes Nats-Msg-Id.
type Event struct {
	ID      string
	Subject string
	Msg     proto.Message
}

// EntryChanged announces a revision and where it was queued.
func EntryChanged(tenant string, e *calendar.Entry, target calendar.Target) Event {
	return Event{
		ID:      tenant + ":entry:" + e.ID + ":" + strconv.FormatInt(e.Revision, 10),
		Subject: EntryChangedSubject,
		Msg:     &calendarv1.EntryChanged{TenantId: tenant, Entry: wire.Entry(tenant, e), Target: string(target)},
	}
}

func deliveryID(kind, tenant, user string, target calendar.Target, pos int64) string {
	return tenant + ":" + kind + ":" + user + ":" + string(target) + ":" + strconv.FormatInt(pos, 10)
}

// EntryDelivered announces a delivery that reached the calendar.
func EntryDelivered(tenant, user string, a calendar.AckInput) Event {
	return Event{
		ID:      deliveryID("delivered", tenant, user, a.Target, a.Position),
		Subject: EntryDeliveredSubject,
		Msg: &calendarv1.EntryDelivered{
			TenantId: tenant, UserId: user, EntryId: a.EntryID, Revision: a.Revision, Target: string(a.Target),
			Position: a.Position, Outcome: wire.Outcome(a.Outcome), RemoteId: a.RemoteID, RemoteVersion: a.RemoteVersion,
		},
	}
}

// DeliveryFailed announces a delivery given up after attempts.
func DeliveryFailed(tenant, user string, a calendar.AckInput, attempts int) Event {
	return Event{
		ID:      deliveryID("failed", tenant, user, a.Target, a.Position),
		Subject: DeliveryFailedSubject,
		Msg: &calendarv1.DeliveryFailed{
			TenantId: tenant, UserId: user, EntryId: a.EntryID, Revision: a.Revision, Target: string(a.Target),
			Position: a.Position, Attempts: int32(attempts), Error: a.Message,
		},
	}
}
