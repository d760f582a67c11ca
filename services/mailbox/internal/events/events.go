// Package events defines what the mailbox service announces and what it consumes. Announcements
// are built here and written by the store in the same transaction as the change; the relay
// publishes them to JetStream. The consumer side applies the outbox's EmailSent to the sent view.
package events

import (
	"context"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
	"github.com/postamt/postamt/services/mailbox/internal/wire"
)

// StreamName is the JetStream stream of mailbox events.
const StreamName = "POSTAMT_MAILBOX"

// StreamSubjects are the subjects StreamName holds.
var StreamSubjects = []string{"postamt.mailbox.v1.>"}

// OutboxStreamName and EmailSentSubject name what the sent view consumes. The stream belongs to
// the outbox; mailbox only ensures it exists so it can bind its durable consumer first.
const (
	OutboxStreamName = "POSTAMT_OUTBOX"
	EmailSentSubject = "postamt.outbox.v1.EmailSent"
	SentViewDurable  = "mailbox-sent-view"
)

// OutboxStreamSubjects are the subjects of the outbox's stream.
var OutboxStreamSubjects = []string{"postamt.outbox.v1.>"}

// Change says what happened to an entity.
type Change int

// The changes.
const (
	Created Change = iota + 1
	Updated
	Deleted
)

func (c Change) pb() mailboxv1.ChangeType { return mailboxv1.ChangeType(c) }

// Event is an announcement ready for the store to append: its id becomes Nats-Msg-Id, so a
// re-published entry is deduplicated by JetStream.
type Event struct {
	ID      string
	Subject string
	Msg     proto.Message
}

func subject(m proto.Message) string { return string(proto.MessageName(m)) }

func newEvent(id string, version int64, m proto.Message) Event {
	return Event{ID: id + ":" + strconv.FormatInt(version, 10), Subject: subject(m), Msg: m}
}

// TenantChanged announces a tenant change.
func TenantChanged(c Change, t *mailbox.Tenant) Event {
	return newEvent("tenant:"+t.ID, t.Version, &mailboxv1.TenantChanged{Change: c.pb(), Tenant: wire.Tenant(t)})
}

// UserChanged announces a user change (a default sender reset included).
func UserChanged(tenant string, c Change, u *mailbox.User) Event {
	return newEvent(tenant+":user:"+u.ID, u.Version, &mailboxv1.UserChanged{TenantId: tenant, Change: c.pb(), User: wire.User(u)})
}

// TeamChanged announces a team change.
func TeamChanged(tenant string, c Change, t *mailbox.Team) Event {
	return newEvent(tenant+":team:"+t.ID, t.Version, &mailboxv1.TeamChanged{TenantId: tenant, Change: c.pb(), Team: wire.Team(t)})
}

// MailboxChanged announces a mailbox change.
func MailboxChanged(tenant string, c Change, m *mailbox.Mailbox) Event {
	return newEvent(tenant+":mailbox:"+m.ID, m.Version, &mailboxv1.MailboxChanged{TenantId: tenant, Change: c.pb(), Mailbox: wire.Mailbox(m)})
}

// MembershipChanged announces a membership change; its id uses the mailbox version, which every
// membership change increases, and a suffix so one transaction can announce several.
func MembershipChanged(tenant string, c Change, m *mailbox.Member, mailboxVersion int64) Event {
	return newEvent(tenant+":mailbox:"+m.MailboxID+":member:"+m.UserID, mailboxVersion, &mailboxv1.MembershipChanged{
		TenantId: tenant, Change: c.pb(), Member: wire.Member(m), MailboxVersion: mailboxVersion,
	})
}

// SentApplier is the part of the mailbox service the sent-view consumer needs.
type SentApplier interface {
	ApplySent(ctx context.Context, tenant string, item *mailbox.SentItem) (bool, error)
}

// SentViewHandler returns the consumer handler that applies the outbox's EmailSent events to the
// sent view. Redelivery is harmless: ApplySent is idempotent by (tenant, email id). A message that
// cannot be decoded or is invalid is terminated (errs.Invalid), never retried forever.
func SentViewHandler(svc SentApplier) func(ctx context.Context, m eventbus.Message) error {
	return func(ctx context.Context, m eventbus.Message) error {
		var ev outboxv1.EmailSent
		if err := proto.Unmarshal(m.Data, &ev); err != nil {
			return errs.Invalid("data", "not an EmailSent message: "+err.Error())
		}
		item := &mailbox.SentItem{
			EmailID: ev.GetEmailId(), MessageID: ev.GetMessageId(), MailboxID: ev.GetMailboxId(),
			FromAddress: ev.GetFromAddress(), SenderUser: ev.GetSenderUserId(), SenderName: ev.GetSenderDisplayName(),
			Subject: ev.GetSubject(), To: ev.GetTo(), Mode: wire.SendModeFrom(int32(ev.GetMode())),
		}
		if ev.GetSentTime() != nil {
			item.SentAt = ev.GetSentTime().AsTime()
		}
		if _, err := svc.ApplySent(ctx, ev.GetTenantId(), item); err != nil {
			return fmt.Errorf("apply EmailSent %s: %w", ev.GetEmailId(), err)
		}
		return nil
	}
}
