// Package bench holds the suite's benchmarks. They are not tests: they assert nothing about time,
// they print figures (go test -bench reports them as custom metrics), and docs/BENCHMARKS.md keeps
// the latest results with the command and machine that produced them.
//
// Run: make bench (or: cd bench && go test -run '^$' -bench . -benchtime 1x -count 3).
package bench

import (
	"context"
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
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/redistest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/mailbox/app"
)

const (
	p5Users      = 1000
	p5Rate       = 20000 // checks per second offered (open loop)
	p5Duration   = 5 * time.Second
	p5Conns      = 4
	p5MaxWorkers = 512
)

// BenchmarkP5CheckSend measures DESIGN.md §5 P5, "may U send from A?": CheckSend over gRPC on a
// loopback socket against the wired mailbox service on a spawned Redis, everything on this
// machine. Two figures:
//   - max-checks/s: closed loop, 64 concurrent callers as fast as they go;
//   - p50/p99/max at a fixed offered rate of 20,000 checks/s (open loop: requests are issued on
//     schedule whether or not earlier ones returned, and latency counts from the scheduled time,
//     so queueing is not hidden).
//
// Users are members of a shared all-users mailbox, of an explicit shared mailbox, or ask about
// their own personal address, in equal parts.
func BenchmarkP5CheckSend(b *testing.B) {
	client, ctx := startMailbox(b)
	reqs := seedP5(b, client, ctx)

	b.ResetTimer()
	for range b.N {
		maxRate := closedLoop(ctx, client, reqs, 64, 3*time.Second)
		lat, achieved, errs := openLoop(ctx, client, reqs, p5Rate, p5Duration)
		b.ReportMetric(maxRate, "max-checks/s")
		b.ReportMetric(achieved, "checks/s@20k")
		b.ReportMetric(float64(percentile(lat, 0.50).Microseconds()), "p50-µs")
		b.ReportMetric(float64(percentile(lat, 0.99).Microseconds()), "p99-µs")
		b.ReportMetric(float64(percentile(lat, 1).Microseconds()), "max-µs")
		b.ReportMetric(float64(errs), "errors")
	}
}

func startMailbox(b *testing.B) (*roundRobin, context.Context) {
	b.Helper()
	rs := redistest.Start(b)
	ns := natstest.Start(b)
	cfg := auth.Config{HS256Secret: "bench-secret-bench-secret-bench-secret", Audience: "postamt"}
	verifier, err := auth.NewVerifier(cfg)
	if err != nil {
		b.Fatal(err)
	}
	signer, err := auth.NewSigner(cfg)
	if err != nil {
		b.Fatal(err)
	}
	a, err := app.New(app.Config{RelayBatch: 256, RelayClaimIdle: 30 * time.Second, SentView: true}, app.Deps{
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Redis:    rs.Client(b),
		JS:       ns.JetStream(b),
		Verifier: verifier,
		Metrics:  prometheus.NewRegistry(),
	})
	if err != nil {
		b.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx, lis) }()
	b.Cleanup(func() { cancel(); <-done })

	// Several connections, as a replicated outbox would hold: one HTTP/2 connection serialises
	// its frames through one writer.
	conns := make([]grpc.ClientConnInterface, p5Conns)
	for i := range conns {
		c, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	tok, err := signer.Mint(auth.Principal{Tenant: "bench", User: "admin", Roles: []string{"admin", "operator"}}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
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

// openLoop offers rate calls per second for d on a fixed schedule and returns each call's latency
// measured from its scheduled start, the achieved rate and the error count. The generator wakes
// at most every 200µs and issues every call that has come due, so its own timer cost stays small;
// a call issued late is charged the delay.
func openLoop(ctx context.Context, c checker, reqs []*mailboxv1.CheckSendRequest, rate int, d time.Duration) ([]time.Duration, float64, int64) {
	total := int(float64(rate) * d.Seconds())
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, total)
	var errCount atomic.Int64
	sem := make(chan struct{}, p5MaxWorkers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < total; {
		now := time.Since(start)
		for ; i < total && time.Duration(i)*interval <= now; i++ {
			n, due := i, start.Add(time.Duration(i)*interval)
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if _, err := c.CheckSend(ctx, reqs[n%len(reqs)]); err != nil {
					errCount.Add(1)
				}
				lat[n] = time.Since(due)
			})
		}
		if next := time.Duration(i)*interval - time.Since(start); next > 0 {
			time.Sleep(max(next, 200*time.Microsecond))
		}
	}
	wg.Wait()
	elapsed := time.Since(start)
	return lat, float64(total) / elapsed.Seconds(), errCount.Load()
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
