package events

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
)

// recorder stands in for the service in these unit tests of pure mapping logic.
type recorder struct {
	tenant string
	item   *mailbox.SentItem
}

func (r *recorder) ApplySent(_ context.Context, tenant string, item *mailbox.SentItem) (bool, error) {
	r.tenant, r.item = tenant, item
	return true, nil
}

func TestSentViewHandler(t *testing.T) {
	sent := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	data, err := proto.Marshal(&outboxv1.EmailSent{
		TenantId: "kanzlei", EmailId: "e1", MessageId: "e1@x", SenderUserId: "martina", SenderDisplayName: "Martina",
		MailboxId: "info", FromAddress: "info@kanzlei.example", Mode: outboxv1.SendMode_SEND_MODE_ON_BEHALF,
		To: []string{"a@example.com"}, Subject: "Hallo", SentTime: timestamppb.New(sent),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("maps every field", func(t *testing.T) {
		var r recorder
		if err := SentViewHandler(&r)(context.Background(), eventbus.Message{Data: data}); err != nil {
			t.Fatal(err)
		}
		it := r.item
		if r.tenant != "kanzlei" || it.EmailID != "e1" || it.SenderName != "Martina" || it.Mode != mailbox.SendOnBehalf ||
			!it.SentAt.Equal(sent) || it.To[0] != "a@example.com" || it.MailboxID != "info" {
			t.Errorf("applied %q %+v", r.tenant, it)
		}
	})
	t.Run("garbage is terminated, not retried", func(t *testing.T) {
		var r recorder
		err := SentViewHandler(&r)(context.Background(), eventbus.Message{Data: []byte{0xff, 0xff}})
		if errs.KindOf(err) != errs.KindInvalid {
			t.Errorf("error = %v, want an invalid-kind error", err)
		}
	})
	t.Run("no sent time stays zero so validation rejects it", func(t *testing.T) {
		b, _ := proto.Marshal(&outboxv1.EmailSent{TenantId: "kanzlei", EmailId: "e2"})
		var r recorder
		if err := SentViewHandler(&r)(context.Background(), eventbus.Message{Data: b}); err != nil {
			t.Fatal(err)
		}
		if !r.item.SentAt.IsZero() {
			t.Errorf("SentAt = %v, want zero", r.item.SentAt)
		}
	})
}

func TestEventIDs(t *testing.T) {
	u := &mailbox.User{ID: "max", Version: 3}
	ev := UserChanged("kanzlei", Updated, u)
	if ev.ID != "kanzlei:user:max:3" || ev.Subject != "postamt.mailbox.v1.UserChanged" {
		t.Errorf("event = %s %s", ev.ID, ev.Subject)
	}
	m := MembershipChanged("kanzlei", Deleted, &mailbox.Member{MailboxID: "info", UserID: "max"}, 7)
	if m.ID != "kanzlei:mailbox:info:member:max:7" {
		t.Errorf("membership event id = %s", m.ID)
	}
}
