package events_test

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/tracker/internal/events"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

type ingester struct {
	tenant string
	msg    *tracker.Message
	err    error
}

func (i *ingester) Ingest(_ context.Context, tenant string, m *tracker.Message) (*tracker.Result, error) {
	i.tenant, i.msg = tenant, m
	return &tracker.Result{}, i.err
}

func marshal(t *testing.T, ev *outboxv1.EmailSent) []byte {
	t.Helper()
	b, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSentHandler(t *testing.T) {
	ing := &ingester{}
	h := events.SentHandler(ing)
	ctx := context.Background()
	ev := &outboxv1.EmailSent{
		TenantId: "kanzlei", EmailId: "e1", MessageId: "<E1@Kanzlei.example>", MailboxId: "info", SenderUserId: "max",
		FromAddress: "Info@Kanzlei.example", To: []string{"Erika@Kunde.example"}, Bcc: []string{"akte@kanzlei.example"},
		Subject: "AW: Angebot", InReplyTo: "p@x", References: []string{"r@x", "p@x"}, ConversationId: "conv-1",
	}
	if err := h(ctx, eventbus.Message{Data: marshal(t, ev)}); err != nil {
		t.Fatal(err)
	}
	m := ing.msg
	if ing.tenant != "kanzlei" || m.MessageID != "E1@Kanzlei.example" || m.From != "info@kanzlei.example" || m.To[0] != "erika@kunde.example" ||
		m.Bcc[0] != "akte@kanzlei.example" || m.ThreadID != "conv-1" || m.Source != tracker.SourceOutbox || len(m.References) != 2 {
		t.Errorf("message %+v", m)
	}

	for name, data := range map[string][]byte{
		"not protobuf":   []byte("\xff\xff"),
		"no tenant":      marshal(t, &outboxv1.EmailSent{MessageId: "a@b", MailboxId: "info", FromAddress: "a@b"}),
		"bad message id": marshal(t, &outboxv1.EmailSent{TenantId: "kanzlei", MessageId: "a b", MailboxId: "info", FromAddress: "a@b"}),
	} {
		if err := h(ctx, eventbus.Message{Data: data}); errs.KindOf(err) != errs.KindInvalid {
			t.Errorf("%s: %v, want invalid (terminated)", name, err)
		}
	}

	ing.err = errs.Unavailable("down", 0, nil)
	if err := h(ctx, eventbus.Message{Data: marshal(t, ev)}); errs.KindOf(err) == errs.KindInvalid || !errors.Is(err, errs.ErrUnavailable) {
		t.Errorf("ingest failure = %v, want retried (not invalid)", err)
	}
}
