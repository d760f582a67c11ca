// Package bench holds the suite's benchmarks. They are not tests: they assert nothing about time,
// they print figures (go test -bench reports them as custom metrics), and docs/BENCHMARKS.md keeps
// the latest results with the command and machine that produced them.
//
// Run: make bench (or: cd bench && go test -run '^$' -bench . -benchtime 1x -count 3).
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/mailbox/app"
)

const (
	p5Users    = 1000
	p5Rate     = 20000 // checks per second offered (open loop)
	p5Duration = 4 * time.Second
	p5Conns    = 4
	// openLoopGenerators is the number of goroutines that share the open-loop schedule.
	openLoopGenerators = 16
)

// BenchmarkP5CheckSend measures DESIGN.md §5 P5, "may U send from A?": CheckSend over gRPC on a
// loopback socket against the wired mailbox service on a spawned Redis, everything on this
// machine. Two figures:
//   - max-checks/s: closed loop, 64 concurrent callers as fast as they go;
//   - p50/p99/max (from send) and p99 from the scheduled time, at fixed offered rates of 5,000, 10,000 and 20,000 checks/s (open loop: requests
//     are issued on schedule whether or not earlier ones returned, and latency counts from the
//     scheduled time, so queueing is not hidden).
//
// Users are members of a shared all-users mailbox, of an explicit shared mailbox, or ask about
// their own personal address, in equal parts.
func BenchmarkP5CheckSend(b *testing.B) {
	client, ctx := startMailbox(b)
	reqs := seedP5(b, client, ctx)

	reportLoad(b, ctx, client, reqs)
}

// reportLoad runs the closed loop and the open-loop rates and reports their figures.
func reportLoad(b *testing.B, ctx context.Context, client checker, reqs []*mailboxv1.CheckSendRequest) {
	b.ResetTimer()
	for range b.N {
		maxRate := closedLoop(ctx, client, reqs, 64, 3*time.Second)
		b.ReportMetric(maxRate, "max-checks/s")
		var errTotal int64
		// The target rate, and lower ones to show where latency stays low on this machine.
		for _, rate := range []int{p5Rate / 4, p5Rate / 2, p5Rate} {
			fromDue, fromSend, achieved, errs := openLoop(ctx, client, reqs, rate, p5Duration)
			errTotal += errs
			at := fmt.Sprintf("@%dk", rate/1000)
			b.ReportMetric(achieved, "checks/s"+at)
			b.ReportMetric(float64(percentile(fromSend, 0.50).Microseconds()), "p50-µs"+at)
			b.ReportMetric(float64(percentile(fromSend, 0.99).Microseconds()), "p99-µs"+at)
			b.ReportMetric(float64(percentile(fromSend, 1).Microseconds()), "max-µs"+at)
			b.ReportMetric(float64(percentile(fromDue, 0.99).Microseconds()), "p99-from-due-µs"+at)
		}
		b.ReportMetric(float64(errTotal), "errors")
	}
}

func startMailbox(b *testing.B) (*roundRobin, context.Context) {
	b.Helper()
	rs := redistest.Start(b)
	ns := natstest.Start(b)
	verifier, signer := authtest.Keys(b)
	a, err := app.New(app.Config{RelayBatch: 256, RelayClaimIdle: 30 * time.Second, SentView: true}, app.Deps{
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Redis:      rs.Client(b),
		Partitions: benchPartitions,
		JS:         ns.JetStream(b),
		Verifier:   verifier,
		Metrics:    prometheus.NewRegistry(),
	})
	if err != nil {
		b.Fatal(err)
	}
	addr := servetest.Run(b, a.Run)

	// Several connections, as a replicated outbox would hold: one HTTP/2 connection serialises
	// its frames through one writer.
	conns := make([]grpc.ClientConnInterface, p5Conns)
	for i := range conns {
		conns[i] = servetest.Dial(b, addr)
	}
	ctx := authtest.Outgoing(b, signer, auth.Principal{Tenant: "bench", User: "admin", Roles: []string{"admin", "operator"}})
	return &roundRobin{conns: conns}, ctx
}

// roundRobin spreads calls over several connections.
type roundRobin struct {
	conns []grpc.ClientConnInterface
	n     atomic.Uint64
}

func (r *roundRobin) client() mailboxv1.MailboxServiceClient {
	return mailboxv1.NewMailboxServiceClient(r.conns[int(r.n.Add(1))%len(r.conns)])
}

// CheckSend makes roundRobin a checker.
func (r *roundRobin) CheckSend(ctx context.Context, in *mailboxv1.CheckSendRequest, opts ...grpc.CallOption) (*mailboxv1.CheckSendResponse, error) {
	return r.client().CheckSend(ctx, in, opts...)
}

type checker interface {
	CheckSend(ctx context.Context, in *mailboxv1.CheckSendRequest, opts ...grpc.CallOption) (*mailboxv1.CheckSendResponse, error)
}

// healthChecker makes a plain health client look like a checker, for the baseline.
type healthChecker struct{ rr *roundRobin }

func (h healthChecker) CheckSend(ctx context.Context, _ *mailboxv1.CheckSendRequest, opts ...grpc.CallOption) (*mailboxv1.CheckSendResponse, error) {
	_, err := healthpb.NewHealthClient(h.rr.conns[int(h.rr.n.Add(1))%len(h.rr.conns)]).Check(ctx, &healthpb.HealthCheckRequest{}, opts...)
	return nil, err
}

// BenchmarkP5Baseline is the floor under P5 on this machine: the same load against a bare
// grpc-go server answering grpc.health.v1 Check — no interceptors, no auth, no Redis. What
// CheckSend costs beyond it is Postamt's.
func BenchmarkP5Baseline(b *testing.B) {
	addr := servetest.Run(b, func(ctx context.Context, lis net.Listener) error {
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		stop := context.AfterFunc(ctx, srv.Stop)
		defer stop()
		if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return err
		}
		return nil
	})
	rr := &roundRobin{}
	for range p5Conns {
		rr.conns = append(rr.conns, servetest.Dial(b, addr))
	}
	reportLoad(b, context.Background(), healthChecker{rr}, []*mailboxv1.CheckSendRequest{{}})
}

func seedP5(b *testing.B, rr *roundRobin, ctx context.Context) []*mailboxv1.CheckSendRequest {
	b.Helper()
	c := rr.client()
	if _, err := c.CreateTenant(ctx, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "bench"}}); err != nil {
		b.Fatal(err)
	}
	if _, err := c.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
		MailboxId: "info", Address: "info@bench.example", DisplayName: "Office", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED, AllUsers: true,
	}}); err != nil {
		b.Fatal(err)
	}
	if _, err := c.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
		MailboxId: "support", Address: "support@bench.example", DisplayName: "Support", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED,
	}}); err != nil {
		b.Fatal(err)
	}
	var reqs []*mailboxv1.CheckSendRequest
	for i := range p5Users {
		uid := fmt.Sprintf("u%04d", i)
		if _, err := c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: uid, DisplayName: "User " + uid, Email: uid + "@bench.example"}}); err != nil {
			b.Fatal(err)
		}
		own := "pm-" + uid + "@bench.example"
		if _, err := c.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
			MailboxId: "pm-" + uid, Address: own, Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL, OwnerUserId: uid,
		}}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.AddMember(ctx, &mailboxv1.AddMemberRequest{MailboxId: "support", UserId: uid, Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_SEND_ON_BEHALF}}); err != nil {
			b.Fatal(err)
		}
		for _, from := range []string{"info@bench.example", "support@bench.example", own} {
			reqs = append(reqs, &mailboxv1.CheckSendRequest{UserId: uid, FromAddress: from})
		}
	}
	return reqs
}

// closedLoop runs workers that call as fast as they can for d and returns calls per second.
func closedLoop(ctx context.Context, c checker, reqs []*mailboxv1.CheckSendRequest, workers int, d time.Duration) float64 {
	var n atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for time.Now().Before(deadline) {
				if _, err := c.CheckSend(ctx, reqs[r.IntN(len(reqs))]); err == nil {
					n.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return float64(n.Load()) / d.Seconds()
}

// openLoop offers rate calls per second for d on a fixed schedule (requests go out when due,
// whether or not earlier ones returned) and returns two latencies per call: from its scheduled
// time (what a caller on that schedule sees, generator lag included) and from the moment it was
// sent (what the service and the network took). On this VM a sleep lasts at least ~1.1 ms
// whatever is asked, so one generator would send in bursts of 1.1 ms worth of calls; generators
// goroutines, each owning every openLoopGenerators-th call, spread the bursts out.
func openLoop(ctx context.Context, c checker, reqs []*mailboxv1.CheckSendRequest, rate int, d time.Duration) (fromDue, fromSend []time.Duration, achieved float64, errs int64) {
	total := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	fromDue, fromSend = make([]time.Duration, total), make([]time.Duration, total)
	var errCount atomic.Int64
	var calls, gens sync.WaitGroup
	start := time.Now()
	for g := range openLoopGenerators {
		gens.Go(func() {
			for i := g; i < total; i += openLoopGenerators {
				due := start.Add(time.Duration(i) * interval)
				if wait := time.Until(due); wait > 0 {
					time.Sleep(wait)
				}
				n := i
				calls.Go(func() {
					sent := time.Now()
					if _, err := c.CheckSend(ctx, reqs[n%len(reqs)]); err != nil {
						errCount.Add(1)
					}
					end := time.Now()
					fromDue[n], fromSend[n] = end.Sub(due), end.Sub(sent)
				})
			}
		})
	}
	gens.Wait()
	calls.Wait()
	return fromDue, fromSend, float64(total) / time.Since(start).Seconds(), errCount.Load()
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(p*float64(len(s))) - 1
	return s[max(0, min(i, len(s)-1))]
}
