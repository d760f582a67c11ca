// Package bench holds the suite's benchmarks. They are not tests: they assert nothing about time,
// they print figures (go test -bench reports them as custom metrics), and docs/BENCHMARKS.md keeps
// the latest results with the command and machine that produced them.
//
// Run: make bench (or: cd bench && go test -run '^$' -bench . -benchtime 1x -count 3).
package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

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

// p5LoadGenEnv switches the bench test binary into P5's load generator (see TestMain): the
// checks are sent from a process of their own, so the CPU the benchmark process and redis-server
// spend is what the service spends. The value is the server's address; p5ModeEnv says what to
// ask (p5ModeCheckSend or p5ModeHealth), p5TokenEnv carries the bearer token.
const (
	p5LoadGenEnv    = "POSTAMT_BENCH_P5_LOADGEN"
	p5ModeEnv       = "POSTAMT_BENCH_P5_MODE"
	p5TokenEnv      = "POSTAMT_BENCH_P5_TOKEN"
	p5ModeCheckSend = "checksend"
	p5ModeHealth    = "health"
)

// BenchmarkP5CheckSend measures DESIGN.md §5 P5, "may U send from A?": CheckSend over gRPC on a
// loopback socket against the wired mailbox service on a spawned Redis, everything on this
// machine, the load generator in a process of its own (this binary re-run, see TestMain). Two
// kinds of figures:
//   - max-checks/s: closed loop, 64 concurrent callers as fast as they go;
//   - p50/p99/max (from send) and p99 from the scheduled time, at fixed offered rates of 5,000,
//     10,000 and 20,000 checks/s (open loop: requests are issued on schedule whether or not
//     earlier ones returned, and latency counts from the scheduled time, so queueing is not
//     hidden);
//
// and for each phase the CPU per check of the service's process (mailbox with its relay and the
// embedded NATS server, idle here) and of redis-server; the load generator's is reported apart.
//
// Users are members of a shared all-users mailbox, of an explicit shared mailbox, or ask about
// their own personal address, in equal parts. POSTAMT_BENCH_GRANT_CACHE_TTL sets mailbox's
// MAILBOX_GRANT_CACHE_TTL (default its production default, 5s; 0 turns the send-grant cache
// off, the figure before it). POSTAMT_BENCH_P5_CPUPROFILE=file profiles the service process
// from the load generator's first phase to its last (not the seeding).
func BenchmarkP5CheckSend(b *testing.B) {
	addr, token, rdb := startMailbox(b)
	b.ResetTimer()
	for range b.N {
		runLoadGen(b, addr, p5ModeCheckSend, token, func() time.Duration { return redistest.CPU(b, rdb) })
	}
}

// startMailbox runs the wired mailbox service in this process, seeds P5's tenant and returns the
// service's address, an admin's token and the Redis client.
func startMailbox(b *testing.B) (addr, token string, rdb *redis.Client) {
	b.Helper()
	rs := redistest.Start(b)
	ns := natstest.Start(b)
	verifier, signer := authtest.Keys(b)
	rdb = rs.Client(b)
	ttl, err := time.ParseDuration(cmp.Or(os.Getenv("POSTAMT_BENCH_GRANT_CACHE_TTL"), "5s"))
	if err != nil {
		b.Fatal(err)
	}
	a, err := app.New(app.Config{RelayBatch: 256, RelayClaimIdle: 30 * time.Second, SentView: true, GrantCacheTTL: ttl}, app.Deps{
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		Redis:      rdb,
		Partitions: benchPartitions,
		JS:         ns.JetStream(b),
		Verifier:   verifier,
		Metrics:    prometheus.NewRegistry(),
	})
	if err != nil {
		b.Fatal(err)
	}
	addr = servetest.Run(b, a.Run)
	token, err = signer.Mint(auth.Principal{Tenant: "bench", User: "admin", Roles: []string{"admin", "operator"}}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
	seedP5(b, mailboxv1.NewMailboxServiceClient(servetest.Dial(b, addr)), ctx)
	return addr, token, rdb
}

// roundRobin spreads calls over several connections, as a replicated outbox would hold them:
// one HTTP/2 connection serialises its frames through one writer.
type roundRobin struct {
	conns []grpc.ClientConnInterface
	n     atomic.Uint64
}

func (r *roundRobin) conn() grpc.ClientConnInterface {
	return r.conns[int(r.n.Add(1))%len(r.conns)]
}

// CheckSend makes roundRobin a checker.
func (r *roundRobin) CheckSend(ctx context.Context, in *mailboxv1.CheckSendRequest, opts ...grpc.CallOption) (*mailboxv1.CheckSendResponse, error) {
	return mailboxv1.NewMailboxServiceClient(r.conn()).CheckSend(ctx, in, opts...)
}

type checker interface {
	CheckSend(ctx context.Context, in *mailboxv1.CheckSendRequest, opts ...grpc.CallOption) (*mailboxv1.CheckSendResponse, error)
}

// healthChecker makes a plain health client look like a checker, for the baseline.
type healthChecker struct{ rr *roundRobin }

func (h healthChecker) CheckSend(ctx context.Context, _ *mailboxv1.CheckSendRequest, opts ...grpc.CallOption) (*mailboxv1.CheckSendResponse, error) {
	_, err := healthpb.NewHealthClient(h.rr.conn()).Check(ctx, &healthpb.HealthCheckRequest{}, opts...)
	return nil, err
}

// BenchmarkP5Baseline is the floor under P5 on this machine: the same load generator (a process
// of its own) against a bare grpc-go server answering grpc.health.v1 Check in this process — no
// interceptors, no auth, no Redis. What CheckSend costs beyond it is Postamt's.
func BenchmarkP5Baseline(b *testing.B) {
	addr := startBareServer(b)
	b.ResetTimer()
	for range b.N {
		runLoadGen(b, addr, p5ModeHealth, "", func() time.Duration { return 0 })
	}
}

// startBareServer serves grpc.health.v1 on a bare grpc-go server in this process (no
// interceptors, no auth, no Redis) until the benchmark ends, and returns its address: the
// baseline a Postamt call is compared with in the same run (P4, P5).
func startBareServer(b *testing.B) string {
	return servetest.Run(b, func(ctx context.Context, lis net.Listener) error {
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		stop := context.AfterFunc(ctx, srv.Stop)
		defer stop()
		if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return err
		}
		return nil
	})
}

// p5Requests are the checks P5 cycles over: for every user, the all-users mailbox (send-as),
// the explicit shared one (on-behalf) and the user's own address (owner). seedP5 creates what
// they ask about; the load generator builds the same list.
func p5Requests() []*mailboxv1.CheckSendRequest {
	var reqs []*mailboxv1.CheckSendRequest
	for i := range p5Users {
		uid := fmt.Sprintf("u%04d", i)
		for _, from := range []string{"info@bench.example", "support@bench.example", "pm-" + uid + "@bench.example"} {
			reqs = append(reqs, &mailboxv1.CheckSendRequest{UserId: uid, FromAddress: from})
		}
	}
	return reqs
}

func seedP5(b *testing.B, c mailboxv1.MailboxServiceClient, ctx context.Context) {
	b.Helper()
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
	for i := range p5Users {
		uid := fmt.Sprintf("u%04d", i)
		if _, err := c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: uid, DisplayName: "User " + uid, Email: uid + "@bench.example"}}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
			MailboxId: "pm-" + uid, Address: "pm-" + uid + "@bench.example", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL, OwnerUserId: uid,
		}}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.AddMember(ctx, &mailboxv1.AddMemberRequest{MailboxId: "support", UserId: uid, Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_SEND_ON_BEHALF}}); err != nil {
			b.Fatal(err)
		}
	}
}

// loadGenLine is one line the load generator writes to its standard output: a phase starts
// (Start), or ends with its figures (Metrics, by go test -bench unit, and Calls answered).
type loadGenLine struct {
	Phase   string             `json:"phase"`
	Start   bool               `json:"start,omitempty"`
	Calls   int64              `json:"calls,omitempty"`
	Metrics map[string]float64 `json:"metrics,omitempty"`
}

// runLoadGen runs P5's load generator in a process of its own against addr and reports its
// figures, with the CPU this process and redis-server (redisCPU; 0 for none) spent per call in
// each phase, measured between the generator's start and end lines.
func runLoadGen(b *testing.B, addr, mode, token string, redisCPU func() time.Duration) {
	b.Helper()
	cmd, sc := startChild(b, p5LoadGenEnv+"="+addr, p5ModeEnv+"="+mode, p5TokenEnv+"="+token)
	var (
		proc0, redis0 time.Duration
		total         int64
	)
	stopProfile := func() {}
	defer func() { stopProfile() }()
	for sc.Scan() {
		var l loadGenLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			b.Fatalf("load generator wrote %q: %v", sc.Text(), err)
		}
		if l.Start {
			if f := os.Getenv("POSTAMT_BENCH_P5_CPUPROFILE"); f != "" && total == 0 && l.Phase == "@max" {
				stopProfile = startCPUProfile(b, f)
			}
			proc0, redis0 = processCPU(), redisCPU()
			continue
		}
		proc, rcpu := processCPU()-proc0, redisCPU()-redis0
		for unit, v := range l.Metrics {
			b.ReportMetric(v, unit)
		}
		if l.Calls > 0 {
			b.ReportMetric(float64(proc.Microseconds())/float64(l.Calls), "proc-cpu-µs/check"+l.Phase)
			b.ReportMetric(float64(rcpu.Microseconds())/float64(l.Calls), "redis-cpu-µs/check"+l.Phase)
		}
		total += l.Calls
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("load generator: %v", err)
	}
	if total > 0 {
		gen := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		b.ReportMetric(float64(gen.Microseconds())/float64(total), "loadgen-cpu-µs/check")
	}
}

// loadGen is the body of P5's load generator process: it dials addr, runs the closed loop and
// the open-loop rates, and writes a loadGenLine before and after each phase. It gives up when
// its parent is gone or after 10 minutes, so an aborted benchmark leaves nothing behind.
func loadGen(addr string) int {
	exitWithParent(10 * time.Minute)
	rr := &roundRobin{}
	for range p5Conns {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Fprintln(os.Stderr, "load generator:", err)
			return 1
		}
		defer conn.Close()
		rr.conns = append(rr.conns, conn)
	}
	ctx := context.Background()
	var c checker = rr
	reqs := []*mailboxv1.CheckSendRequest{{}}
	switch mode := os.Getenv(p5ModeEnv); mode {
	case p5ModeCheckSend:
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+os.Getenv(p5TokenEnv))
		reqs = p5Requests()
	case p5ModeHealth:
		c = healthChecker{rr}
	default:
		fmt.Fprintf(os.Stderr, "load generator: unknown %s %q\n", p5ModeEnv, mode)
		return 1
	}
	enc := json.NewEncoder(os.Stdout)
	emit := func(l loadGenLine) bool {
		if err := enc.Encode(l); err != nil {
			fmt.Fprintln(os.Stderr, "load generator:", err)
			return false
		}
		return true
	}
	if !emit(loadGenLine{Phase: "@max", Start: true}) {
		return 1
	}
	n, d := closedLoop(ctx, c, reqs, 64, 3*time.Second)
	if !emit(loadGenLine{Phase: "@max", Calls: n, Metrics: map[string]float64{"max-checks/s": float64(n) / d.Seconds()}}) {
		return 1
	}
	var errTotal int64
	// The target rate, and lower ones to show where latency stays low on this machine.
	for _, rate := range []int{p5Rate / 4, p5Rate / 2, p5Rate} {
		at := fmt.Sprintf("@%dk", rate/1000)
		if !emit(loadGenLine{Phase: at, Start: true}) {
			return 1
		}
		fromDue, fromSend, achieved, errs := openLoop(ctx, c, reqs, rate, p5Duration)
		errTotal += errs
		m := map[string]float64{
			"checks/s" + at:        achieved,
			"p50-µs" + at:          float64(percentile(fromSend, 0.50).Microseconds()),
			"p99-µs" + at:          float64(percentile(fromSend, 0.99).Microseconds()),
			"max-µs" + at:          float64(percentile(fromSend, 1).Microseconds()),
			"p99-from-due-µs" + at: float64(percentile(fromDue, 0.99).Microseconds()),
		}
		if !emit(loadGenLine{Phase: at, Calls: int64(len(fromSend)) - errs, Metrics: m}) {
			return 1
		}
	}
	if !emit(loadGenLine{Phase: "", Metrics: map[string]float64{"errors": float64(errTotal)}}) {
		return 1
	}
	return 0
}

// closedLoop runs workers that call as fast as they can for about d and returns the calls
// answered and the time they took.
func closedLoop(ctx context.Context, c checker, reqs []*mailboxv1.CheckSendRequest, workers int, d time.Duration) (int64, time.Duration) {
	var n atomic.Int64
	start := time.Now()
	deadline := start.Add(d)
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
	return n.Load(), time.Since(start)
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
