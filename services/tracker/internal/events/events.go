// Package events defines what the tracker announces and what it consumes. EmailTracked is built
// here and written by the store in the same script as the tracked email; the relay publishes it
// to JetStream. The consumer side feeds the outbox's EmailSent into the one ingest path.
package events

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/eventbus"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
	"github.com/postamt/postamt/services/tracker/internal/wire"
)

// StreamName is the JetStream stream of tracker events.
const StreamName = "POSTAMT_TRACKER"

// StreamSubjects are the subjects StreamName holds.
var StreamSubjects = []string{"postamt.tracker.v1.>"}

// EmailTrackedSubject is the subject of EmailTracked.
const EmailTrackedSubject = "postamt.tracker.v1.EmailTracked"

// The outbox's stream and its EmailSent subject, which the tracker consumes with SentDurable.
// The stream belongs to the outbox; the tracker only ensures it exists so it can bind its
// durable consumer before the outbox first starts.
const (
	OutboxStreamName = "POSTAMT_OUTBOX"
	EmailSentSubject = "postamt.outbox.v1.EmailSent"
	SentDurable      = "tracker-sent"
)

// OutboxStreamSubjects are the subjects of the outbox's stream.
var OutboxStreamSubjects = []string{"postamt.outbox.v1.>"}

// MailboxStreamName is mailbox's stream, whose events drop the cached sync kinds.
const MailboxStreamName = "POSTAMT_MAILBOX"

// Event is an announcement ready for the store to append: its id becomes Nats-Msg-Id.
type Event struct {
	ID      string
	Subject string
	Msg     proto.Message
}

// EmailTracked announces a tracked email. A Message-ID is tracked once per tenant, so the id
// needs no version beyond 1.
func EmailTracked(tenant string, e *tracker.TrackedEmail) Event {
	return Event{
		ID:      tenant + ":tracked:" + e.MessageID + ":1",
		Subject: EmailTrackedSubject,
		Msg:     &trackerv1.EmailTracked{TenantId: tenant, TrackedEmail: wire.TrackedEmail(e)},
	}
}

// Ingester is the part of the tracker service the consumers need.
type Ingester interface {
	Ingest(ctx context.Context, tenant string, m *tracker.Message) (*tracker.Result, error)
}

// SentMessage turns the outbox's EmailSent into the message the rules evaluate, checked: an
// invalid one is errs.Invalid, which terminates the event instead of retrying it forever.
func SentMessage(ev *outboxv1.EmailSent) (*tracker.Message, error) {
	m := &tracker.Message{
		MessageID: ev.GetMessageId(), MailboxID: ev.GetMailboxId(), SenderUser: ev.GetSenderUserId(),
		From: ev.GetFromAddress(), To: ev.GetTo(), Cc: ev.GetCc(), Bcc: ev.GetBcc(), Subject: ev.GetSubject(),
		InReplyTo: ev.GetInReplyTo(), References: ev.GetReferences(), ThreadID: ev.GetConversationId(),
		Source: tracker.SourceOutbox, Teams: ev.GetTeamIds(), RegardingRecordID: ev.GetRegardingRecordId(),
	}
	if ev.GetSentTime() != nil {
		m.SentAt = ev.GetSentTime().AsTime().UTC()
	}
	if err := tracker.Check(m); err != nil {
		return nil, err
	}
	return m, nil
}

// SentHandler returns an eventbus handler that feeds the outbox's EmailSent events one at a time
// into the ingest path (the service runs SentConsumer, which evaluates them in batches). Redelivery is harmless: ingest is idempotent by (tenant, Message-ID). An event
// that cannot be decoded or is invalid is terminated (errs.Invalid); a failure to reach Redis or
// mailbox is retried by JetStream.
func SentHandler(svc Ingester) eventbus.Handler {
	return func(ctx context.Context, m eventbus.Message) error {
		tenant, msg, err := DecodeSent(m.Data)
		if err != nil {
			return err
		}
		if _, err := svc.Ingest(ctx, tenant, msg); err != nil {
			return fmt.Errorf("ingest EmailSent <%s>: %w", msg.MessageID, err)
		}
		return nil
	}
}
