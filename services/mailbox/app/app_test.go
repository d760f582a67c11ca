package app_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/mailbox/app"
)

// TestEndToEnd runs the wired service on a spawned Redis and an embedded JetStream: events of
// admin changes leave through the relay, and an EmailSent published as the outbox would publish
// it shows up in every member's sent view.
func TestEndToEnd(t *testing.T) {
	rdb := redistest.Suite(t)
	ns := natstest.Start(t)
	js := ns.JetStream(t)
	verifier, signer := authtest.Keys(t)
	a, err := app.New(app.Config{RelayBatch: 64, RelayClaimIdle: time.Second, SentView: true}, app.Deps{
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Redis:    rdb,
		JS:       js,
		Verifier: verifier,
		Metrics:  prometheus.NewRegistry(),
		Server:   grpcserver.Options{ReadinessInterval: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	conn := servetest.Dial(t, servetest.Run(t, a.Run))
	ctx := context.Background()
	health := grpc_health_v1.NewHealthClient(conn)
	poll.Eventually(t, "readiness", func() bool {
		r, err := health.Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: grpcserver.ReadinessService})
		return err == nil && r.GetStatus() == grpc_health_v1.HealthCheckResponse_SERVING
	})

	as := func(tenant, user string, roles ...string) context.Context {
		return authtest.Outgoing(t, signer, auth.Principal{Tenant: tenant, User: user, Roles: roles})
	}
	c := mailboxv1.NewMailboxServiceClient(conn)
	admin := as("kanzlei", "admin", "admin", "operator")
	steps := []func() error{
		func() error {
			_, err := c.CreateTenant(admin, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "kanzlei"}})
			return err
		},
		func() error {
			_, err := c.CreateUser(admin, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: "max", DisplayName: "Max Mustermann", Email: "max@kanzlei.example"}})
			return err
		},
		func() error {
			_, err := c.CreateUser(admin, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: "martina", DisplayName: "Martina Musterfrau", Email: "martina@kanzlei.example"}})
			return err
		},
		func() error {
			_, err := c.CreateMailbox(admin, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
				MailboxId: "info", Address: "info@kanzlei.example", DisplayName: "Kanzlei Muster", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED,
			}})
			return err
		},
		func() error {
			_, err := c.AddMember(admin, &mailboxv1.AddMemberRequest{MailboxId: "info", UserId: "max", Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_READ}})
			return err
		},
		func() error {
			_, err := c.AddMember(admin, &mailboxv1.AddMemberRequest{MailboxId: "info", UserId: "martina", Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_SEND_AS}})
			return err
		},
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}

	t.Run("membership events leave through the relay", func(t *testing.T) {
		cons, err := js.OrderedConsumer(ctx, "POSTAMT_MAILBOX", jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{"postamt.mailbox.v1.MembershipChanged"},
		})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		poll.Eventually(t, "two MembershipChanged events", func() bool {
			msgs, err := cons.FetchNoWait(10)
			if err != nil {
				return false
			}
			for m := range msgs.Messages() {
				var ev mailboxv1.MembershipChanged
				if err := proto.Unmarshal(m.Data(), &ev); err != nil {
					t.Fatal(err)
				}
				if ev.GetTenantId() != "kanzlei" || m.Headers().Get(jetstream.MsgIDHeader) == "" {
					t.Errorf("event %v with headers %v", &ev, m.Headers())
				}
				got = append(got, ev.GetMember().GetUserId())
			}
			return len(got) >= 2
		})
		if len(got) != 2 || got[0] != "max" || got[1] != "martina" {
			t.Errorf("members in events = %v, want [max martina]", got)
		}
	})

	t.Run("an EmailSent from JetStream reaches every member's sent view", func(t *testing.T) {
		ev := &outboxv1.EmailSent{
			TenantId: "kanzlei", EmailId: "e-1", Version: 4, MessageId: "e-1@kanzlei.example", SenderUserId: "martina",
			SenderDisplayName: "Martina Musterfrau", MailboxId: "info", FromAddress: "info@kanzlei.example",
			Mode: outboxv1.SendMode_SEND_MODE_SEND_AS, To: []string{"client@example.com"}, Subject: "Ihr Termin",
			SentTime: timestamppb.New(time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)),
		}
		data, err := proto.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		// Published twice under different ids (as after a relay crash past the dedupe window):
		// the view must still hold it once.
		for _, id := range []string{"kanzlei:email:e-1:4", "kanzlei:email:e-1:4-again"} {
			msg := &nats.Msg{Subject: "postamt.outbox.v1.EmailSent", Data: data, Header: nats.Header{}}
			msg.Header.Set(jetstream.MsgIDHeader, id)
			if _, err := js.PublishMsg(ctx, msg); err != nil {
				t.Fatal(err)
			}
		}
		// Both deliveries applied (acknowledged by the sent-view consumer) before the views are read,
		// so a second copy would show.
		poll.Eventually(t, "both deliveries acknowledged", func() bool {
			cons, err := js.Consumer(ctx, "POSTAMT_OUTBOX", "mailbox-sent-view")
			if err != nil {
				return false
			}
			info, err := cons.Info(ctx)
			return err == nil && info.AckFloor.Stream >= 2
		})
		for _, user := range []string{"max", "martina"} {
			var items []*mailboxv1.SentItem
			poll.Eventually(t, "the sent item in "+user+"'s view", func() bool {
				r, err := c.ListSentItems(as("kanzlei", user), &mailboxv1.ListSentItemsRequest{})
				if err != nil {
					t.Fatal(err)
				}
				items = r.GetItems()
				return len(items) > 0
			})
			if len(items) != 1 || items[0].GetAttribution() != "sent by Martina Musterfrau via info@kanzlei.example" {
				t.Errorf("%s's view = %v", user, items)
			}
		}
	})

	// The outbox's EmailSent names the sender by user id only; the name comes from mailbox's own
	// directory, looked up when the item is written (issue 14).
	t.Run("an on-behalf send as the outbox publishes it is attributed by the sender's display name", func(t *testing.T) {
		ev := &outboxv1.EmailSent{
			TenantId: "kanzlei", EmailId: "e-2", Version: 4, MessageId: "e-2@kanzlei.example", SenderUserId: "martina",
			MailboxId: "info", FromAddress: "info@kanzlei.example", Mode: outboxv1.SendMode_SEND_MODE_ON_BEHALF,
			To: []string{"client@example.com"}, Subject: "Ihre Unterlagen",
			SentTime: timestamppb.New(time.Date(2026, 11, 22, 11, 0, 0, 0, time.UTC)),
		}
		data, err := proto.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		msg := &nats.Msg{Subject: "postamt.outbox.v1.EmailSent", Data: data, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, "kanzlei:email:e-2:4")
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
		for _, user := range []string{"max", "martina"} {
			var got *mailboxv1.SentItem
			poll.Eventually(t, "e-2 in "+user+"'s view", func() bool {
				r, err := c.ListSentItems(as("kanzlei", user), &mailboxv1.ListSentItemsRequest{})
				if err != nil {
					t.Fatal(err)
				}
				for _, it := range r.GetItems() {
					if it.GetEmailId() == "e-2" {
						got = it
					}
				}
				return got != nil
			})
			if got.GetSentByDisplayName() != "Martina Musterfrau" || got.GetSentByUserId() != "martina" ||
				got.GetAttribution() != "sent by Martina Musterfrau via info@kanzlei.example" ||
				got.GetMode() != mailboxv1.SendMode_SEND_MODE_ON_BEHALF {
				t.Errorf("%s's view shows %v, want sent_by_display_name Martina Musterfrau and the attribution by name", user, got)
			}
		}
	})
}

// TestStreamReplicas: the replica count (NATS_STREAM_REPLICAS) reaches JetStream when the
// service ensures its streams. A single embedded server cannot keep three copies and says so, and
// the service does not start; with the count at 0 it starts on the same server.
func TestStreamReplicas(t *testing.T) {
	rdb := redistest.Suite(t)
	ns := natstest.Start(t)
	verifier, _ := authtest.Keys(t)
	for _, replicas := range []int{3, 0} {
		a, err := app.New(app.Config{RelayBatch: 64, RelayClaimIdle: time.Second}, app.Deps{
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Redis: rdb, JS: ns.JetStream(t),
			Verifier: verifier, Metrics: prometheus.NewRegistry(), StreamReplicas: replicas,
		})
		if err != nil {
			t.Fatal(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = a.Run(ctx, lis)
		cancel()
		t.Logf("replicas %d: Run = %v", replicas, err)
		switch {
		case replicas == 3 && (err == nil || !strings.Contains(strings.ToLower(err.Error()), "replicas")):
			t.Errorf("with 3 replicas on one server: Run = %v, want an error about replicas", err)
		case replicas == 0 && err != nil:
			t.Errorf("with 0 replicas: Run = %v, want a clean stop when the context ends", err)
		}
	}
}
