package app_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	mailboxapp "github.com/postamt/postamt/services/mailbox/app"
	"github.com/postamt/postamt/services/tracker/app"
)

// env is the tracker as a user meets it: mailbox and tracker served over real gRPC on a spawned
// Redis and an embedded JetStream, the journaling endpoint on a real SMTP socket. The tenant
// "kanzlei" has the users max and eva; max's mailbox p-max synchronises with Exchange, eva's
// p-eva has no server-side sync. The journal address journal-max@tracker.kanzlei.example stands
// for p-max.
type env struct {
	t           *testing.T
	rdb         redis.UniversalClient
	js          jetstream.JetStream
	signer      *auth.Signer
	mailbox     mailboxv1.MailboxServiceClient
	tracker     trackerv1.TrackerServiceClient
	journalAddr string
	// mailboxAddr, trackerAddr, verifier and logger let a test start more of the suite beside
	// (the outbox).
	mailboxAddr string
	trackerAddr string
	verifier    *auth.Verifier
	logger      *slog.Logger
}

func startEnv(t *testing.T) *env {
	t.Helper()
	ns := natstest.Start(t)
	e := &env{t: t, rdb: redistest.Suite(t), js: ns.JetStream(t)}
	verifier, signer := authtest.Keys(t)
	e.signer = signer
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	serverOpts := grpcserver.Options{ReadinessInterval: 50 * time.Millisecond, DrainDelay: time.Millisecond, DrainTimeout: time.Second}

	mb, err := mailboxapp.New(mailboxapp.Config{RelayBatch: 64, RelayClaimIdle: time.Second, SentView: false}, mailboxapp.Deps{
		Logger: logger, Redis: e.rdb, JS: e.js, Verifier: verifier, Metrics: prometheus.NewRegistry(), Server: serverOpts,
	})
	if err != nil {
		t.Fatal(err)
	}
	mbAddr := servetest.Run(t, mb.Run)
	e.mailbox = mailboxv1.NewMailboxServiceClient(servetest.Dial(t, mbAddr))
	e.mailboxAddr, e.verifier, e.logger = mbAddr, verifier, logger

	journalLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.journalAddr = journalLis.Addr().String()
	cfg := app.Config{
		MailboxAddr: mbAddr, SyncKindCacheTTL: time.Hour, DecisionRetention: time.Hour, ConsumeSent: true,
		RelayBatch: 256, RelayClaimIdle: time.Second, JournalDomain: "tracker.kanzlei.example",
		JournalAddresses: "journal-max@tracker.kanzlei.example=kanzlei/p-max/max", JournalMaxBytes: 64 << 10,
	}
	tr, err := app.New(cfg, app.Deps{
		Logger: logger, Redis: e.rdb, JS: e.js, Verifier: verifier, Signer: signer, Metrics: prometheus.NewRegistry(),
		Server: serverOpts, JournalListener: journalLis,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.trackerAddr = servetest.Run(t, tr.Run)
	conn := servetest.Dial(t, e.trackerAddr)
	e.tracker = trackerv1.NewTrackerServiceClient(conn)
	health := grpc_health_v1.NewHealthClient(conn)
	poll.Eventually(t, "tracker readiness", func() bool {
		r, err := health.Check(context.Background(), &grpc_health_v1.HealthCheckRequest{Service: grpcserver.ReadinessService})
		return err == nil && r.GetStatus() == grpc_health_v1.HealthCheckResponse_SERVING
	})
	e.seed()
	return e
}

func (e *env) as(user string, roles ...string) context.Context {
	return authtest.Outgoing(e.t, e.signer, auth.Principal{Tenant: "kanzlei", User: user, Roles: roles})
}

func (e *env) admin() context.Context { return e.as("admin", auth.RoleAdmin, "operator") }

// crm is the CRM's (or server-side sync's) service credential.
func (e *env) crm() context.Context {
	return authtest.Outgoing(e.t, e.signer, auth.Principal{Tenant: "kanzlei", Service: "crm"})
}

func (e *env) seed() {
	t := e.t
	t.Helper()
	ctx := e.admin()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(e.mailbox.CreateTenant(ctx, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "kanzlei"}}))
	for _, u := range []struct {
		id   string
		sync mailboxv1.SyncKind
	}{{"max", mailboxv1.SyncKind_SYNC_KIND_EXCHANGE}, {"eva", mailboxv1.SyncKind_SYNC_KIND_NONE}} {
		must(e.mailbox.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: u.id, DisplayName: u.id, Email: u.id + "@kanzlei.example"}}))
		must(e.mailbox.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
			MailboxId: "p-" + u.id, Address: u.id + "@kanzlei.example", DisplayName: u.id, Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL,
			OwnerUserId: u.id, SyncKind: u.sync,
		}}))
	}
	must(e.tracker.UpdateOrgSettings(ctx, &trackerv1.UpdateOrgSettingsRequest{
		Settings:   &trackerv1.OrgSettings{AutoTrackSentFolderItems: true},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"auto_track_sent_folder_items"}},
	}))
	for _, r := range []*trackerv1.Record{
		{RecordId: "c-1", Kind: trackerv1.RecordKind_RECORD_KIND_CONTACT, DisplayName: "Erika Mustermann", EmailAddresses: []string{"erika@kunde.example"}},
		{RecordId: "a-1", Kind: trackerv1.RecordKind_RECORD_KIND_ACCOUNT, DisplayName: "Muster AG", EmailAddresses: []string{"office@muster.example"}},
	} {
		must(e.tracker.UpsertRecord(e.crm(), &trackerv1.UpsertRecordRequest{Record: r}))
	}
}

// setOption sets a user's acceptance option as the user.
func (e *env) setOption(user string, opt int32) {
	e.t.Helper()
	if _, err := e.tracker.UpdateUserSettings(e.as(user), &trackerv1.UpdateUserSettingsRequest{Settings: &trackerv1.UserSettings{AcceptanceOption: &opt}}); err != nil {
		e.t.Fatal(err)
	}
}

// trackedEvents returns the EmailTracked events on JetStream so far, in order.
func (e *env) trackedEvents() []*trackerv1.EmailTracked {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, "POSTAMT_TRACKER")
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*trackerv1.EmailTracked
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if m.Subject != "postamt.tracker.v1.EmailTracked" {
			continue
		}
		var ev trackerv1.EmailTracked
		if err := proto.Unmarshal(m.Data, &ev); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, &ev)
	}
	return out
}

// waitTracked polls until n EmailTracked events are on JetStream and returns them.
func (e *env) waitTracked(n int) []*trackerv1.EmailTracked {
	e.t.Helper()
	var got []*trackerv1.EmailTracked
	poll.Eventually(e.t, "EmailTracked events on JetStream", func() bool {
		got = e.trackedEvents()
		return len(got) >= n
	})
	return got
}

// authtestOutgoingOther is an admin of another tenant.
func authtestOutgoingOther(e *env) context.Context {
	return authtest.Outgoing(e.t, e.signer, auth.Principal{Tenant: "andere", User: "eva", Roles: []string{auth.RoleAdmin}})
}
