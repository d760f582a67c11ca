package service

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/eventbus"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// Watcher streams the changes of a view as they are published: from the outbox's JetStream
// stream, so every replica's changes reach every watcher, with the same events other services
// consume. Each watch is an ordered ephemeral consumer that starts at new messages.
type Watcher struct {
	js  jetstream.JetStream
	svc *Service
}

// NewWatcher returns a Watcher over js.
func NewWatcher(js jetstream.JetStream, svc *Service) *Watcher { return &Watcher{js: js, svc: svc} }

var watchSubjects = []string{wire.SubjectSubmitted, wire.SubjectStatusChanged, wire.SubjectSent, wire.SubjectFailed, wire.SubjectCancelled}

// Watch calls send with every email of the caller's view (and filter) that changes, until ctx
// ends or send fails. Emails leaving the outbox (SENT, CANCELLED) are sent too, so a list can
// drop them; a status filter limits the changes to those statuses.
func (w *Watcher) Watch(ctx context.Context, p auth.Principal, view outboxv1.View, f *outboxv1.EmailFilter, send func(*outboxv1.Email) error) error {
	q, err := w.svc.resolve(ctx, p, view, f)
	if err != nil {
		return err
	}
	cons, err := w.js.OrderedConsumer(ctx, wire.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: watchSubjects, DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fmt.Errorf("watch outbox stream: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("watch outbox stream: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("watch outbox stream: %w", err)
		}
		if m.Headers().Get(eventbus.HeaderTenant) != p.Tenant {
			continue
		}
		e := emailOf(m.Subject(), m.Data())
		if e == nil {
			continue
		}
		if len(q.idx.Statuses) > 0 && !slices.Contains(q.idx.Statuses, outbox.Status(e.GetStatus())) {
			continue
		}
		if !q.match(e) {
			continue
		}
		rec, err := w.svc.ledger.Get(ctx, e.GetEmailId())
		if err != nil {
			continue // gone after its retention: nothing to show
		}
		if !slices.ContainsFunc(rec.Buckets, func(b string) bool { return slices.Contains(q.idx.Buckets, b) }) {
			continue
		}
		if err := send(e); err != nil {
			return err
		}
	}
}

// emailOf decodes the email an outbox event carries, or nil.
func emailOf(subject string, data []byte) *outboxv1.Email {
	var msg interface {
		proto.Message
		GetEmail() *outboxv1.Email
	}
	switch subject {
	case wire.SubjectSubmitted:
		msg = &outboxv1.EmailSubmitted{}
	case wire.SubjectStatusChanged:
		msg = &outboxv1.EmailStatusChanged{}
	case wire.SubjectFailed:
		msg = &outboxv1.EmailFailed{}
	case wire.SubjectCancelled:
		msg = &outboxv1.EmailCancelled{}
	case wire.SubjectSent:
		var s outboxv1.EmailSent
		if proto.Unmarshal(data, &s) != nil {
			return nil
		}
		return &outboxv1.Email{
			EmailId: s.GetEmailId(), Status: outboxv1.EmailStatus_EMAIL_STATUS_SENT, MessageId: s.GetMessageId(),
			SenderUserId: s.GetSenderUserId(), MailboxId: s.GetMailboxId(), FromAddress: s.GetFromAddress(),
			SendMode: s.GetMode(), To: s.GetTo(), Cc: s.GetCc(), Bcc: s.GetBcc(), Subject: s.GetSubject(),
			ConnectorId: s.GetConnectorId(), SystemGenerated: s.GetSystemGenerated(), AttemptCount: s.GetAttempt(),
			SentTime: s.GetSentTime(), SizeBytes: s.GetSizeBytes(), Version: s.GetVersion(),
		}
	default:
		return nil
	}
	if proto.Unmarshal(data, msg) != nil {
		return nil
	}
	return msg.GetEmail()
}
