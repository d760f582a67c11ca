package app_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/calendar/app"
	mailboxapp "github.com/postamt/postamt/services/mailbox/app"
)

// env is the calendar as its users meet it: mailbox and calendar served over real gRPC on a
// spawned Redis and an embedded JetStream. Tenant "kanzlei" has
//   - huber, a lawyer whose practice username (huber@kanzlei.example) names the same login as
//     the directory username (KANZLEI\Huber): live sync applies;
//   - maier, a secretary whose usernames differ (smaier vs KANZLEI\maier): it does not;
//   - anwalt, who uses server-side push;
//   - admin.
type env struct {
	t        *testing.T
	rdb      *redis.Client
	js       jetstream.JetStream
	signer   *auth.Signer
	mailbox  mailboxv1.MailboxServiceClient
	calendar calendarv1.CalendarServiceClient
	// stopCalendar stops the calendar service (a drain, as at a pod's end) and returns what its
	// Run returned; cleanup calls it too.
	stopCalendar func() error
}

// envOptions adjust the calendar's configuration and dependencies.
type envOptions struct {
	cfg  func(*app.Config)
	deps func(*app.Deps)
}

func testConfig(mailboxAddr string) app.Config {
	return app.Config{
		MailboxAddr: mailboxAddr, UserCacheTTL: time.Hour, Heartbeat: time.Second, AgentMaxAttempts: 3, AgentMaxUnanswered: 3, DeliveryBatch: 64,
		Push: true, PushRetry: "50ms,100ms,200ms,400ms", PushMaxAttempts: 100, PushTimeout: 2 * time.Second, PushLease: 10 * time.Second,
		SecretEnvPrefix: "POSTAMT_CALDAV_", SecretDir: "/run/secrets/postamt", SyncLogMaxLines: 1000, SyncLogRetention: 24 * time.Hour,
		RelayBatch: 256, RelayClaimIdle: time.Second, MetricsInterval: 100 * time.Millisecond,
	}
}

func startEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	rs := redistest.Start(t)
	ns := natstest.Start(t)
	e := &env{t: t, rdb: rs.Client(t), js: ns.JetStream(t)}
	verifier, signer := authtest.Keys(t)
	e.signer = signer
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	serverOpts := grpcserver.Options{ReadinessInterval: 50 * time.Millisecond, DrainDelay: time.Millisecond, DrainTimeout: time.Second}

	mb, err := mailboxapp.New(mailboxapp.Config{RelayBatch: 64, RelayClaimIdle: time.Second}, mailboxapp.Deps{
		Logger: logger, Redis: e.rdb, JS: e.js, Verifier: verifier, Metrics: prometheus.NewRegistry(), Server: serverOpts,
	})
	if err != nil {
		t.Fatal(err)
	}
	mbAddr := servetest.Run(t, mb.Run)
	e.mailbox = mailboxv1.NewMailboxServiceClient(servetest.Dial(t, mbAddr))

	cfg := testConfig(mbAddr)
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	deps := app.Deps{
		Logger: logger, Redis: e.rdb, JS: e.js, Verifier: verifier, Signer: signer, Metrics: prometheus.NewRegistry(), Server: serverOpts,
	}
	if o.deps != nil {
		o.deps(&deps)
	}
	cal, err := app.New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	calAddr, stop := servetest.Start(t, cal.Run)
	e.stopCalendar = stop
	conn := servetest.Dial(t, calAddr)
	e.calendar = calendarv1.NewCalendarServiceClient(conn)
	health := grpc_health_v1.NewHealthClient(conn)
	poll.Eventually(t, "calendar readiness", func() bool {
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

// other is a user of another tenant.
func (e *env) other() context.Context {
	return authtest.Outgoing(e.t, e.signer, auth.Principal{Tenant: "andere", User: "huber", Roles: []string{auth.RoleAdmin}})
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
	operator := authtest.Outgoing(e.t, e.signer, auth.Principal{Tenant: "andere", User: "op", Roles: []string{"operator"}})
	must(e.mailbox.CreateTenant(operator, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "andere"}}))
	for _, u := range []*mailboxv1.User{
		{UserId: "huber", DisplayName: "Dr. Huber", Email: "huber@kanzlei.example", DirectoryUsername: `KANZLEI\Huber`, PracticeUsername: "huber@kanzlei.example"},
		{UserId: "maier", DisplayName: "Sabine Maier", Email: "maier@kanzlei.example", DirectoryUsername: `KANZLEI\maier`, PracticeUsername: "smaier"},
		{UserId: "anwalt", DisplayName: "Anwalt", Email: "anwalt@kanzlei.example", DirectoryUsername: `KANZLEI\anwalt`, PracticeUsername: "anwalt"},
		{UserId: "admin", DisplayName: "Admin", Email: "admin@kanzlei.example"},
	} {
		must(e.mailbox.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: u}))
	}
	must(e.calendar.UpdateTenantSettings(ctx, &calendarv1.UpdateTenantSettingsRequest{Settings: &calendarv1.TenantSettings{LiveSyncEnabled: true}}))
}

// events returns the calendar events on JetStream with subject, in order.
func (e *env) events(subject string, newMsg func() proto.Message) []proto.Message {
	e.t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, "POSTAMT_CALENDAR")
	if err != nil {
		return nil
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []proto.Message
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil || m.Subject != subject {
			continue
		}
		msg := newMsg()
		if err := proto.Unmarshal(m.Data, msg); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, msg)
	}
	return out
}

// agent is a live agent on a Connect stream.
type agent struct {
	t      *testing.T
	stream calendarv1.CalendarService_ConnectClient
	cancel context.CancelFunc
	msgs   chan *calendarv1.ConnectResponse
	errc   chan error
}

// connect opens user's stream and sends Hello; it returns after Welcome, or with the error the
// stream ended with.
func (e *env) connect(user string, hello *calendarv1.Hello) (*agent, *calendarv1.Welcome, error) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.as(user))
	e.t.Cleanup(cancel)
	s, err := e.calendar.Connect(ctx)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	a := &agent{t: e.t, stream: s, cancel: cancel, msgs: make(chan *calendarv1.ConnectResponse, 1<<14), errc: make(chan error, 1)}
	if err := s.Send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
		cancel()
		return nil, nil, err
	}
	first, err := s.Recv()
	if err != nil {
		cancel()
		return nil, nil, err
	}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				a.errc <- err
				return
			}
			a.msgs <- m
		}
	}()
	return a, first.GetWelcome(), nil
}

// next returns the next delivery, skipping heartbeats; it fails the test after poll.Timeout.
func (a *agent) next() *calendarv1.Delivery {
	a.t.Helper()
	timer := time.NewTimer(poll.Timeout)
	defer timer.Stop()
	for {
		select {
		case m := <-a.msgs:
			if d := m.GetDelivery(); d != nil {
				return d
			}
		case err := <-a.errc:
			a.t.Fatalf("stream ended while waiting for a delivery: %v", err)
		case <-timer.C:
			a.t.Fatal("no delivery within the poll timeout")
		}
	}
}

// ended waits for the stream's end and returns its error.
func (a *agent) ended() error {
	a.t.Helper()
	timer := time.NewTimer(poll.Timeout)
	defer timer.Stop()
	for {
		select {
		case <-a.msgs:
		case err := <-a.errc:
			return err
		case <-timer.C:
			a.t.Fatal("the stream did not end within the poll timeout")
			return nil
		}
	}
}

func (a *agent) ack(d *calendarv1.Delivery, outcome calendarv1.DeliveryOutcome, remoteID string) {
	a.t.Helper()
	if err := a.stream.Send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Ack{Ack: &calendarv1.Ack{
		Position: d.GetPosition(), Outcome: outcome, RemoteId: remoteID, RemoteVersion: "v1",
	}}}); err != nil {
		a.t.Fatal(err)
	}
}

// close ends the agent's side of the stream.
func (a *agent) close() {
	_ = a.stream.CloseSend()
	a.cancel()
}
