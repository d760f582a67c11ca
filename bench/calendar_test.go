package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	calendarapp "github.com/postamt/postamt/services/calendar/app"
	mailboxapp "github.com/postamt/postamt/services/mailbox/app"
)

// BenchmarkP7AgentCatchUp is P7 (DESIGN.md §5): a lawyer's agent connects while
// POSTAMT_BENCH_CALENDAR_ENTRIES (default 10,000) entries wait in the lawyer's queue; the time
// from opening the Connect stream to receiving the last delivery is reported, with the agent
// acknowledging as it goes, as a real one would. The entries are booked beforehand over gRPC by
// a secretary (not timed). Mailbox, calendar, Redis and NATS run on this machine.
func BenchmarkP7AgentCatchUp(b *testing.B) {
	n := envInt("POSTAMT_BENCH_CALENDAR_ENTRIES", 10000)
	for range b.N {
		b.StopTimer()
		cal, lawyer, secretary, js := startCalendar(b)
		book(b, cal, secretary, n)
		settle(b, js, n)
		b.StartTimer()
		took := catchUp(b, cal, lawyer, n)
		b.ReportMetric(float64(took.Milliseconds()), "P7-ms")
		b.ReportMetric(float64(n)/took.Seconds(), "deliveries/s")
	}
}

// startCalendar runs mailbox and calendar and returns the calendar client with the lawyer's and
// the secretary's credentials; live sync is on and applies to the lawyer.
func startCalendar(b *testing.B) (calendarv1.CalendarServiceClient, context.Context, context.Context, jetstream.JetStream) {
	b.Helper()
	rdb := redistest.Start(b).Client(b)
	js := natstest.Start(b).JetStream(b)
	verifier, signer := authtest.Keys(b)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	opts := grpcserver.Options{DrainDelay: time.Millisecond, DrainTimeout: time.Second}
	mb, err := mailboxapp.New(mailboxapp.Config{RelayBatch: 256, RelayClaimIdle: 30 * time.Second}, mailboxapp.Deps{
		Logger: logger, Redis: rdb, JS: js, Verifier: verifier, Metrics: prometheus.NewRegistry(), Partitions: benchPartitions, Server: opts,
	})
	if err != nil {
		b.Fatal(err)
	}
	mbAddr := servetest.Run(b, mb.Run)
	mbc := mailboxv1.NewMailboxServiceClient(servetest.Dial(b, mbAddr))
	cfg := calendarapp.Config{
		MailboxAddr: mbAddr, UserCacheTTL: time.Hour, Heartbeat: 15 * time.Second, AgentMaxAttempts: 5, AgentMaxUnanswered: 10, DeliveryBatch: 512,
		Push: true, PushRetry: "5s", PushMaxAttempts: 8, PushTimeout: 30 * time.Second, PushLease: 2 * time.Minute,
		SecretEnvPrefix: "POSTAMT_CALDAV_", SecretDir: "/run/secrets/postamt", SyncLogMaxLines: 1000, SyncLogRetention: 720 * time.Hour,
		RelayBatch: 256, RelayClaimIdle: 30 * time.Second,
	}
	c, err := calendarapp.New(cfg, calendarapp.Deps{
		Logger: logger, Redis: rdb, JS: js, Verifier: verifier, Signer: signer, Metrics: prometheus.NewRegistry(), Partitions: benchPartitions, Server: opts,
	})
	if err != nil {
		b.Fatal(err)
	}
	cal := calendarv1.NewCalendarServiceClient(servetest.Dial(b, servetest.Run(b, c.Run)))
	admin := authtest.Outgoing(b, signer, auth.Principal{Tenant: "kanzlei", User: "admin", Roles: []string{auth.RoleAdmin, "operator"}})
	if _, err := mbc.CreateTenant(admin, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "kanzlei"}}); err != nil {
		b.Fatal(err)
	}
	for _, u := range []*mailboxv1.User{
		{UserId: "huber", DisplayName: "Dr. Huber", Email: "huber@kanzlei.example", DirectoryUsername: `KANZLEI\huber`, PracticeUsername: "huber"},
		{UserId: "maier", DisplayName: "Sabine Maier", Email: "maier@kanzlei.example", DirectoryUsername: `KANZLEI\maier`, PracticeUsername: "smaier"},
	} {
		if _, err := mbc.CreateUser(admin, &mailboxv1.CreateUserRequest{User: u}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := cal.UpdateTenantSettings(admin, &calendarv1.UpdateTenantSettingsRequest{Settings: &calendarv1.TenantSettings{LiveSyncEnabled: true}}); err != nil {
		b.Fatal(err)
	}
	lawyer := authtest.Outgoing(b, signer, auth.Principal{Tenant: "kanzlei", User: "huber"})
	secretary := authtest.Outgoing(b, signer, auth.Principal{Tenant: "kanzlei", User: "maier"})
	return cal, lawyer, secretary, js
}

// settle waits until the relay has published the n bookings' events, so that the timed catch-up
// meets the quiet system of the scenario (a lawyer connecting later), not the tail of the booking.
func settle(b *testing.B, js jetstream.JetStream, n int) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		info, err := js.Stream(context.Background(), "POSTAMT_CALENDAR")
		if err == nil && info.CachedInfo().State.Msgs >= uint64(n) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("the calendar's events were not relayed within 2 minutes: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // a benchmark's set-up, not a test
	}
}

// book creates n deadlines for the lawyer from 16 concurrent callers.
func book(b *testing.B, cal calendarv1.CalendarServiceClient, secretary context.Context, n int) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				_, err := cal.CreateEntry(secretary, &calendarv1.CreateEntryRequest{Entry: &calendarv1.Entry{
					EntryId: fmt.Sprintf("frist-%06d", i), OwnerUserId: "huber", Kind: calendarv1.EntryKind_ENTRY_KIND_DEADLINE,
					Summary: fmt.Sprintf("Frist in Akte %d", i), Day: &calendarv1.Date{Year: 2026, Month: 1 + int32(i%12), Day: 1 + int32(i%28)},
				}})
				if err != nil {
					errc <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

// catchUp connects the lawyer's agent and returns how long the n deliveries took.
func catchUp(b *testing.B, cal calendarv1.CalendarServiceClient, lawyer context.Context, n int) time.Duration {
	b.Helper()
	ctx, cancel := context.WithCancel(lawyer)
	defer cancel()
	start := time.Now()
	s, err := cal.Connect(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Hello{Hello: &calendarv1.Hello{AgentId: "bench"}}}); err != nil {
		b.Fatal(err)
	}
	acks := make(chan int64, n)
	ackDone := make(chan error, 1)
	go func() {
		for p := range acks {
			if err := s.Send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Ack{Ack: &calendarv1.Ack{
				Position: p, Outcome: calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_APPLIED,
			}}}); err != nil {
				ackDone <- err
				return
			}
		}
		ackDone <- nil
	}()
	got := 0
	for got < n {
		m, err := s.Recv()
		if err != nil {
			b.Fatalf("after %d deliveries: %v", got, err)
		}
		if d := m.GetDelivery(); d != nil {
			got++
			acks <- d.GetPosition()
		}
	}
	took := time.Since(start)
	close(acks)
	if err := <-ackDone; err != nil {
		b.Fatal(err)
	}
	_ = s.CloseSend()
	return took
}
