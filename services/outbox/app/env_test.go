package app_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	mailboxapp "github.com/postamt/postamt/services/mailbox/app"
	"github.com/postamt/postamt/services/outbox/app"
)

// env is the suite as a user meets it: mailbox and outbox served over real gRPC on a spawned
// Redis and an embedded JetStream, mail leaving to an SMTP sink. The tenant "kanzlei" has the
// users max, martina (team "empfang", which martina leads) and eva, and the shared mailbox
// "info" where martina may read and send as, max may send on behalf (and read only what he sent),
// and eva has no right at all.
type env struct {
	t       *testing.T
	rdb     redis.UniversalClient
	js      jetstream.JetStream
	sink    *smtptest.Sink
	signer  *auth.Signer
	mailbox mailboxv1.MailboxServiceClient
	outbox  outboxv1.OutboxServiceClient
	// replica starts another outbox on the same Redis and NATS.
	replica func() outboxv1.OutboxServiceClient
	// metrics are the outboxes' registries, the first one's first.
	metrics []*prometheus.Registry
	// secrets are the outboxes' environment as connectors' env: references read it.
	secrets sync.Map
}

// sent is how many attempts an outbox replica recorded as sent, over every connector.
func sent(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	return counted(t, reg, "postamt_outbox_attempts_total", "outcome", "sent")
}

// counted sums the counter name's series whose label has value.
func counted(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

type envOption func(*app.Config)

func startEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	return startEnvPartitions(t, 0, opts...)
}

// startEnvPartitions is startEnv with both services on partitions partitions (REDIS_PARTITIONS;
// 0: the default).
func startEnvPartitions(t *testing.T, partitions int, opts ...envOption) *env {
	t.Helper()
	ns := natstest.Start(t)
	e := &env{t: t, rdb: redistest.Suite(t), js: ns.JetStream(t), sink: smtptest.Start(t)}
	verifier, signer := authtest.Keys(t)
	e.signer = signer
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	serverOpts := grpcserver.Options{ReadinessInterval: 50 * time.Millisecond, DrainDelay: time.Millisecond, DrainTimeout: time.Second}

	mb, err := mailboxapp.New(mailboxapp.Config{RelayBatch: 64, RelayClaimIdle: time.Second, SentView: true}, mailboxapp.Deps{
		Logger: logger, Redis: e.rdb, JS: e.js, Verifier: verifier, Metrics: prometheus.NewRegistry(), Server: serverOpts, Partitions: partitions,
	})
	if err != nil {
		t.Fatal(err)
	}
	mbAddr := servetest.Run(t, mb.Run)
	e.mailbox = mailboxv1.NewMailboxServiceClient(servetest.Dial(t, mbAddr))

	cfg := app.Config{
		MailboxAddr: mbAddr, DirectoryCacheTTL: 0, DefaultConnector: "default", DefaultUndoDelay: 0, MaxUndoDelay: 10 * time.Minute,
		MaxMessageBytes: 1 << 20, MaxRecipients: 50, ScheduleHorizon: 30 * 24 * time.Hour, Retention: time.Hour, Dispatch: true,
		ClaimBatch: 64, Lease: 10 * time.Second, ClaimAhead: 1, StopTimeout: 10 * time.Second, SMTPCommandTimeout: 2 * time.Second, SMTPSubmitTimeout: 3 * time.Second,
		SecretEnvPrefix: "POSTAMT_SMTP_", SecretDir: "/run/secrets/postamt", RelayBatch: 256, RelayClaimIdle: time.Second,
		MaxFilterScan: 10_000, MaxSelection: 100_000,
	}
	for _, o := range opts {
		o(&cfg)
	}
	start := func() *grpc.ClientConn {
		reg := prometheus.NewRegistry()
		e.metrics = append(e.metrics, reg)
		ob, err := app.New(cfg, app.Deps{
			Logger: logger, Redis: e.rdb, JS: e.js, Verifier: verifier, Signer: signer, Metrics: reg, Server: serverOpts,
			Getenv: func(k string) string {
				v, _ := e.secrets.Load(k)
				s, _ := v.(string)
				return s
			},
			Partitions: partitions,
		})
		if err != nil {
			t.Fatal(err)
		}
		return servetest.Dial(t, servetest.Run(t, ob.Run))
	}
	e.replica = func() outboxv1.OutboxServiceClient { return outboxv1.NewOutboxServiceClient(start()) }
	conn := start()
	e.outbox = outboxv1.NewOutboxServiceClient(conn)
	health := grpc_health_v1.NewHealthClient(conn)
	poll.Eventually(t, "outbox readiness", func() bool {
		r, err := health.Check(context.Background(), &grpc_health_v1.HealthCheckRequest{Service: grpcserver.ReadinessService})
		return err == nil && r.GetStatus() == grpc_health_v1.HealthCheckResponse_SERVING
	})
	e.seed()
	return e
}

// as is a request context for a user of kanzlei.
func (e *env) as(user string, teams []string, roles ...string) context.Context {
	return authtest.Outgoing(e.t, e.signer, auth.Principal{Tenant: "kanzlei", User: user, Teams: teams, Roles: roles})
}

func (e *env) admin() context.Context { return e.as("admin", nil, auth.RoleAdmin, "operator") }

func (e *env) service() context.Context {
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
	for _, u := range []struct{ id, name string }{{"max", "Max Mustermann"}, {"martina", "Martina Musterfrau"}, {"eva", "Eva Beispiel"}} {
		must(e.mailbox.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: u.id, DisplayName: u.name, Email: u.id + "@kanzlei.example"}}))
		must(e.mailbox.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
			MailboxId: "p-" + u.id, Address: u.id + "@kanzlei.example", DisplayName: u.name, Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL, OwnerUserId: u.id,
		}}))
	}
	must(e.mailbox.CreateTeam(ctx, &mailboxv1.CreateTeamRequest{Team: &mailboxv1.Team{TeamId: "empfang", DisplayName: "Empfang", MemberUserIds: []string{"martina", "max"}, LeadUserIds: []string{"martina"}}}))
	must(e.mailbox.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
		MailboxId: "info", Address: "info@kanzlei.example", DisplayName: "Kanzlei Muster", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED,
	}}))
	must(e.mailbox.AddMember(ctx, &mailboxv1.AddMemberRequest{MailboxId: "info", UserId: "martina", Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_READ, mailboxv1.Right_RIGHT_SEND_AS}}))
	must(e.mailbox.AddMember(ctx, &mailboxv1.AddMemberRequest{MailboxId: "info", UserId: "max", Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_SEND_ON_BEHALF}}))
	host, port := e.sinkHostPort()
	must(e.outbox.CreateConnector(ctx, &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
		ConnectorId: "default", Host: host, Port: port, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		RetryPattern: []*durationpb.Duration{durationpb.New(time.Minute), durationpb.New(5 * time.Minute)}, MaxAttempts: 3,
	}}))
}

func (e *env) sinkHostPort() (string, int32) {
	host, port, _ := net.SplitHostPort(e.sink.Addr())
	p, _ := strconv.Atoi(port)
	return host, int32(p)
}

// submit submits as user and fails the test on an error.
func (e *env) submit(ctx context.Context, req *outboxv1.SubmitEmailRequest) *outboxv1.Email {
	e.t.Helper()
	r, err := e.outbox.SubmitEmail(ctx, req)
	if err != nil {
		e.t.Fatalf("submit: %v", err)
	}
	return r.GetEmail()
}

// status polls an email until it reaches want.
func (e *env) waitStatus(ctx context.Context, id string, want outboxv1.EmailStatus) *outboxv1.Email {
	e.t.Helper()
	var got *outboxv1.Email
	poll.Eventually(e.t, "email "+id+" in "+want.String(), func() bool {
		r, err := e.outbox.GetEmail(ctx, &outboxv1.GetEmailRequest{EmailId: id})
		if err != nil {
			e.t.Fatalf("get %s: %v", id, err)
		}
		got = r.GetEmail()
		return got.GetStatus() == want
	})
	return got
}

// authtestOther is an admin of another tenant.
func authtestOther(e *env) context.Context {
	return authtest.Outgoing(e.t, e.signer, auth.Principal{Tenant: "andere", User: "eva", Roles: []string{auth.RoleAdmin}})
}
