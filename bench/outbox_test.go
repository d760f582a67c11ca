package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/mail"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	mailboxapp "github.com/postamt/postamt/services/mailbox/app"
	outboxapp "github.com/postamt/postamt/services/outbox/app"
)

// envInt reads a size from the environment, so a quick run can use smaller workloads.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchPartitions is the services' partition count (REDIS_PARTITIONS) in every suite:
// POSTAMT_BENCH_PARTITIONS, 16 (the default) unless set.
var benchPartitions = envInt("POSTAMT_BENCH_PARTITIONS", 16)

// suite is mailbox and outbox wired as in production, on a spawned Redis, an embedded
// JetStream and an SMTP sink, all on this machine. POSTAMT_BENCH_NO_SENT_VIEW=1 leaves out
// mailbox's EmailSent consumer, to show its share of the machine.
type suite struct {
	rdb *redis.Client
	// sink is the in-process SMTP sink; nil when the suite sends to a sink process (sinkProc).
	sink     *smtptest.Sink
	sinkProc *sinkProcess
	// outboxAddr and userToken let a process of its own submit as user (P3's load generator).
	outboxAddr, userToken string
	outbox                outboxv1.OutboxServiceClient
	user                  context.Context
	admin                 context.Context
}

func startSuite(b *testing.B) *suite { return startSuiteWith(b, nil) }

// startSuiteWith starts a suite whose connector sends to sinkProc, a sink in a process of its
// own, or (nil) to a sink in this process.
func startSuiteWith(b *testing.B, sinkProc *sinkProcess) *suite {
	b.Helper()
	rs := redistest.Start(b)
	ns := natstest.Start(b)
	js := ns.JetStream(b)
	verifier, signer := authtest.Keys(b)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := &suite{rdb: rs.Client(b), sinkProc: sinkProc}
	var sinkAddr string
	if sinkProc != nil {
		sinkAddr = sinkProc.addr
	} else {
		s.sink = smtptest.Start(b)
		sinkAddr = s.sink.Addr()
	}
	svc := servicesRedis(b, rs)
	mb, err := mailboxapp.New(mailboxapp.Config{RelayBatch: 256, RelayClaimIdle: 30 * time.Second, SentView: os.Getenv("POSTAMT_BENCH_NO_SENT_VIEW") == ""}, mailboxapp.Deps{
		Logger: logger, Redis: svc, JS: js, Verifier: verifier, Metrics: prometheus.NewRegistry(), Partitions: benchPartitions,
	})
	if err != nil {
		b.Fatal(err)
	}
	mbAddr := servetest.Run(b, mb.Run)
	mbc := mailboxv1.NewMailboxServiceClient(servetest.Dial(b, mbAddr))
	ob, err := outboxapp.New(outboxapp.Config{
		MailboxAddr: mbAddr, DirectoryCacheTTL: 10 * time.Second, DefaultConnector: "default", MaxUndoDelay: 10 * time.Minute,
		MaxMessageBytes: 25 << 20, MaxRecipients: 500, ScheduleHorizon: 366 * 24 * time.Hour, Retention: time.Hour, Dispatch: true,
		ClaimBatch: 64, Lease: 8 * time.Second, ClaimAhead: 1, StopTimeout: 10 * time.Second, SMTPCommandTimeout: 30 * time.Second, SMTPSubmitTimeout: 100 * time.Second,
		SecretEnvPrefix: "POSTAMT_SMTP_", SecretDir: "/run/secrets/postamt", RelayBatch: 256, RelayClaimIdle: 30 * time.Second,
		MaxFilterScan: 10_000, MaxSelection: 100_000,
	}, outboxapp.Deps{
		Logger: logger, Redis: svc, JS: js, Verifier: verifier, Signer: signer, Metrics: prometheus.NewRegistry(), Partitions: benchPartitions,
		Server: grpcserver.Options{},
	})
	if err != nil {
		b.Fatal(err)
	}
	s.outboxAddr = servetest.Run(b, ob.Run)
	s.outbox = outboxv1.NewOutboxServiceClient(servetest.Dial(b, s.outboxAddr))
	s.admin = authtest.Outgoing(b, signer, auth.Principal{Tenant: "kanzlei", User: "admin", Roles: []string{auth.RoleAdmin, "operator"}})
	userToken, err := signer.Mint(auth.Principal{Tenant: "kanzlei", User: "max", Teams: []string{"empfang"}}, 2*time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	s.userToken = userToken
	s.user = metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+userToken)
	must := func(_ any, err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	must(mbc.CreateTenant(s.admin, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "kanzlei"}}))
	must(mbc.CreateUser(s.admin, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: "max", DisplayName: "Max Mustermann", Email: "max@kanzlei.example"}}))
	must(mbc.CreateMailbox(s.admin, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
		MailboxId: "info", Address: "info@kanzlei.example", DisplayName: "Kanzlei Muster", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED,
	}}))
	must(mbc.AddMember(s.admin, &mailboxv1.AddMemberRequest{MailboxId: "info", UserId: "max", Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_SEND_AS}}))
	host, port, _ := net.SplitHostPort(sinkAddr)
	p, _ := strconv.Atoi(port)
	conn := &outboxv1.Connector{
		ConnectorId: "default", Host: host, Port: int32(p), TlsMode: outboxv1.TlsMode_TLS_MODE_NONE, PoolSize: int32(envInt("POSTAMT_BENCH_POOL", 32)),
		RetryPattern: []*durationpb.Duration{durationpb.New(time.Minute)},
	}
	if os.Getenv("POSTAMT_BENCH_LIMITS") != "" {
		// Relay limits that never bind, so every send pays the budget check (issue 21's cost
		// per email) and nothing waits: the connector's four windows and the sender's two.
		conn.Limits = &outboxv1.RelayLimits{MessagesPerSecond: 10_000, MessagesPerMinute: 100_000, RecipientsPerMinute: 1_000_000, RecipientsPerDay: 10_000_000}
		conn.SenderLimits = &outboxv1.RelayLimits{MessagesPerMinute: 100_000, RecipientsPerDay: 10_000_000}
	}
	must(s.outbox.CreateConnector(s.admin, &outboxv1.CreateConnectorRequest{Connector: conn}))
	must(s.outbox.UpdateUserSettings(s.user, &outboxv1.UpdateUserSettingsRequest{
		Settings: &outboxv1.UserSettings{UndoDelay: durationpb.New(0)}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"undo_delay"}},
	}))
	return s
}

// servicesRedis is the client the services of a suite use: rs itself, or with
// POSTAMT_BENCH_REPLICA_ACKS=n (n ≥ 1) a client that confirms every write with n replicas of rs
// spawned for it (redisx.WithReplicaAcks), to measure what the durability rule costs.
// POSTAMT_BENCH_REPLICAS=m spawns m replicas (at least n) without asking for acknowledgements
// beyond n, which separates the cost of replication from the cost of waiting for it.
func servicesRedis(b *testing.B, rs *redistest.Server) redis.UniversalClient {
	b.Helper()
	n := envInt("POSTAMT_BENCH_REPLICA_ACKS", 0)
	replicas := max(n, envInt("POSTAMT_BENCH_REPLICAS", 0))
	if replicas == 0 {
		return rs.Client(b)
	}
	for range replicas {
		rs.StartReplica(b)
	}
	c, err := redisx.Open(context.Background(), rs.URL(), redisx.WithReplicaAcks(n, time.Second))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return c
}

// benchEmail is a typical small email (~1 KiB built) from the shared mailbox.
func benchEmail(i int, sendAt time.Time) *outboxv1.SubmitEmailRequest {
	return &outboxv1.SubmitEmailRequest{
		FromAddress: "info@kanzlei.example", To: []string{fmt.Sprintf("mandant%d@example.com", i%1000)},
		Subject:  fmt.Sprintf("Ihre Akte %d due %d", i, sendAt.UnixNano()),
		TextBody: strings.Repeat("Sehr geehrte Damen und Herren, anbei die Unterlagen zu Ihrer Akte.\r\n", 8),
		WorkItem: &outboxv1.WorkItem{Id: fmt.Sprintf("akte-%d", i%5000), Type: outboxv1.WorkItemType_WORK_ITEM_TYPE_CASE},
		SendAt:   timestamppb.New(sendAt),
	}
}

// submitAll submits n emails from `clients` concurrent callers and returns each call's latency.
func (s *suite) submitAll(b *testing.B, n, clients int, req func(i int) *outboxv1.SubmitEmailRequest) []time.Duration {
	b.Helper()
	lat, failed, firstErr := submitConcurrently(s.user, s.outbox, n, clients, req)
	if failed > 0 {
		b.Fatalf("%d submits failed, the first: %v", failed, firstErr)
	}
	return lat
}

// submitConcurrently submits n emails through c from `clients` concurrent callers and returns
// each call's latency, the number of calls that failed and the first error.
func submitConcurrently(ctx context.Context, c outboxv1.OutboxServiceClient, n, clients int, req func(i int) *outboxv1.SubmitEmailRequest) ([]time.Duration, int64, error) {
	lat := make([]time.Duration, n)
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				start := time.Now()
				if _, err := c.SubmitEmail(ctx, req(i)); err != nil {
					if failed.Add(1) == 1 {
						firstErr.Store(err)
					}
				}
				lat[i] = time.Since(start)
			}
		})
	}
	wg.Wait()
	err, _ := firstErr.Load().(error)
	return lat, failed.Load(), err
}

// BenchmarkP3Submit measures DESIGN.md §5 P3: SubmitEmail over gRPC from 50 concurrent clients
// (mail scheduled an hour ahead, so the dispatcher does not compete), with every check a real
// submit makes (the sender's right through mailbox's CheckSend, settings, the idempotency-free
// ledger write with its event). The clients run in a process of their own (this binary re-run,
// see TestMain), so the CPU per submit of this process (outbox, mailbox, NATS) and of
// redis-server is Postamt's; the load generator's is reported apart (loadgen-cpu-µs/submit).
// POSTAMT_BENCH_P3_INPROC=1 runs the clients in this process as before (no CPU figures);
// POSTAMT_BENCH_P3_CPUPROFILE=file profiles this process over the measured submits.
func BenchmarkP3Submit(b *testing.B) {
	s := startSuite(b)
	n := envInt("POSTAMT_BENCH_P3_N", 30_000)
	at := time.Now().Add(time.Hour)
	inproc := os.Getenv("POSTAMT_BENCH_P3_INPROC") != ""
	if inproc {
		s.submitAll(b, 2000, 50, func(i int) *outboxv1.SubmitEmailRequest { return benchEmail(i, at) }) // warm-up
	}
	b.ResetTimer()
	for range b.N {
		if !inproc {
			runSubmitLoadGen(b, s, n)
			continue
		}
		start := time.Now()
		lat := s.submitAll(b, n, 50, func(i int) *outboxv1.SubmitEmailRequest { return benchEmail(i, at) })
		secs := time.Since(start).Seconds()
		b.ReportMetric(float64(n)/secs, "submits/s")
		b.ReportMetric(ms(percentile(lat, 0.50)), "p50-ms")
		b.ReportMetric(ms(percentile(lat, 0.99)), "p99-ms")
		b.ReportMetric(ms(percentile(lat, 1)), "max-ms")
	}
}

// p3LoadGenEnv switches the bench test binary into P3's load generator (see TestMain): the value
// is the outbox's address; p3TokenEnv carries the user's token.
const (
	p3LoadGenEnv = "POSTAMT_BENCH_P3_LOADGEN"
	p3TokenEnv   = "POSTAMT_BENCH_P3_TOKEN"
)

// submitLoadGenLine is one line P3's load generator writes: the measured submits start (after
// its warm-up), or they ended with these figures.
type submitLoadGenLine struct {
	Start   bool               `json:"start,omitempty"`
	Metrics map[string]float64 `json:"metrics,omitempty"`
	Error   string             `json:"error,omitempty"`
}

// runSubmitLoadGen runs P3's load generator in a process of its own against s, n submits after
// a warm-up of 2,000, and reports its figures with the CPU this process and redis-server spent
// per submit while it ran.
func runSubmitLoadGen(b *testing.B, s *suite, n int) {
	b.Helper()
	cmd, sc := startChild(b, p3LoadGenEnv+"="+s.outboxAddr, p3TokenEnv+"="+s.userToken, "POSTAMT_BENCH_P3_N="+strconv.Itoa(n))
	var cpu0, rcpu0, gen0 time.Duration
	stopProfile := func() {}
	for sc.Scan() {
		var l submitLoadGenLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			b.Fatalf("load generator wrote %q: %v", sc.Text(), err)
		}
		if l.Error != "" {
			b.Fatalf("load generator: %s", l.Error)
		}
		if l.Start {
			if f := os.Getenv("POSTAMT_BENCH_P3_CPUPROFILE"); f != "" {
				stopProfile = startCPUProfile(b, f)
			}
			cpu0, rcpu0, gen0 = processCPU(), redistest.CPU(b, s.rdb), procCPU(b, cmd.Process.Pid)
			continue
		}
		cpu, rcpu, gen := processCPU()-cpu0, redistest.CPU(b, s.rdb)-rcpu0, procCPU(b, cmd.Process.Pid)-gen0
		stopProfile()
		for unit, v := range l.Metrics {
			b.ReportMetric(v, unit)
		}
		per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
		b.ReportMetric(per(cpu), "proc-cpu-µs/submit")
		b.ReportMetric(per(rcpu), "redis-cpu-µs/submit")
		b.ReportMetric(per(cpu+rcpu), "postamt-cpu-µs/submit")
		b.ReportMetric(per(gen), "loadgen-cpu-µs/submit")
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("load generator: %v", err)
	}
}

// submitLoadGen is the body of P3's load generator process: 50 clients on one connection, as
// the in-process benchmark had them, a warm-up of 2,000 submits, then POSTAMT_BENCH_P3_N
// measured ones. It gives up when its parent is gone or after 10 minutes.
func submitLoadGen(addr string) int {
	exitWithParent(10 * time.Minute)
	enc := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		_ = enc.Encode(submitLoadGenLine{Error: err.Error()})
		return 1
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	c := outboxv1.NewOutboxServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+os.Getenv(p3TokenEnv))
	n := envInt("POSTAMT_BENCH_P3_N", 30_000)
	at := time.Now().Add(time.Hour)
	req := func(i int) *outboxv1.SubmitEmailRequest { return benchEmail(i, at) }
	if _, failed, err := submitConcurrently(ctx, c, 2000, 50, req); failed > 0 {
		return fail(fmt.Errorf("%d warm-up submits failed, the first: %w", failed, err))
	}
	if err := enc.Encode(submitLoadGenLine{Start: true}); err != nil {
		return 1
	}
	start := time.Now()
	lat, failed, err := submitConcurrently(ctx, c, n, 50, req)
	secs := time.Since(start).Seconds()
	if failed > 0 {
		return fail(fmt.Errorf("%d submits failed, the first: %w", failed, err))
	}
	if err := enc.Encode(submitLoadGenLine{Metrics: map[string]float64{
		"submits/s": float64(n) / secs,
		"p50-ms":    ms(percentile(lat, 0.50)),
		"p99-ms":    ms(percentile(lat, 0.99)),
		"max-ms":    ms(percentile(lat, 1)),
	}}); err != nil {
		return 1
	}
	return 0
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkP1Delivery measures DESIGN.md §5 P1: emails delivered per second to a local SMTP
// sink. n emails are submitted due at one instant t; the figure is n / (last arrival − t). The
// mailbox service consumes every EmailSent into the sent view meanwhile, as in production.
// The sink runs in a process of its own (this binary re-run, TestSinkProcess), so the CPU per
// email of this process is Postamt's: outbox, mailbox, the embedded NATS server (the submits
// are done before the window starts); the sink's own is reported apart (sink-cpu-µs/email).
// POSTAMT_BENCH_P1_INPROC_SINK=1 runs the sink in this process as before (its CPU counted in
// proc-cpu-µs/email). POSTAMT_BENCH_P1_CPUPROFILE=file profiles the delivery window only;
// POSTAMT_BENCH_P1_STATS=file writes Redis's command statistics of it there.
func BenchmarkP1Delivery(b *testing.B) {
	n := envInt("POSTAMT_BENCH_P1_N", 20_000)
	var sinkProc *sinkProcess
	if os.Getenv("POSTAMT_BENCH_P1_INPROC_SINK") == "" {
		sinkProc = startSinkProcess(b, n)
	}
	s := startSuiteWith(b, sinkProc)
	b.ResetTimer()
	for round := range b.N {
		at := time.Now().Add(time.Duration(n/2000+3) * time.Second) // after the submits are in, even on a busy machine
		s.submitAll(b, n, 50, func(i int) *outboxv1.SubmitEmailRequest { return benchEmail(i, at) })
		if time.Now().After(at) {
			b.Fatalf("submitting took longer than planned; the delivery started before the clock did")
		}
		time.Sleep(time.Until(at))
		cpu0, rcpu0 := processCPU(), redistest.CPU(b, s.rdb)
		var scpu0 time.Duration
		if sinkProc != nil {
			scpu0 = procCPU(b, sinkProc.pid())
		}
		stop := func() {}
		if os.Getenv("POSTAMT_BENCH_P1_STATS") != "" {
			s.rdb.ConfigResetStat(context.Background())
		}
		if f := os.Getenv("POSTAMT_BENCH_P1_CPUPROFILE"); f != "" {
			stop = startCPUProfile(b, f)
		}
		var last time.Time
		if sinkProc != nil {
			last = sinkProc.waitRound(b)
		} else {
			msgs := s.sink.WaitForMessages(b, (round+1)*n, 5*time.Minute)
			last = slices.MaxFunc(msgs, func(x, y smtptest.Message) int { return x.Received.Compare(y.Received) }).Received
		}
		stop()
		cpu1, rcpu1 := processCPU(), redistest.CPU(b, s.rdb)
		if sinkProc != nil {
			b.ReportMetric(float64((procCPU(b, sinkProc.pid())-scpu0).Microseconds())/float64(n), "sink-cpu-µs/email")
		}
		if f := os.Getenv("POSTAMT_BENCH_P1_STATS"); f != "" {
			if err := os.WriteFile(f, []byte(s.rdb.Info(context.Background(), "commandstats").Val()), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n)/last.Sub(at).Seconds(), "emails/s")
		// CPU per delivered email while the delivery ran: the Go process (outbox, mailbox and its
		// sent-view consumer, the NATS server; the SMTP sink only with
		// POSTAMT_BENCH_P1_INPROC_SINK) and redis-server.
		b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(n), "proc-cpu-µs/email")
		b.ReportMetric(float64((rcpu1-rcpu0).Microseconds())/float64(n), "redis-cpu-µs/email")
		b.ReportMetric(float64((cpu1-cpu0+rcpu1-rcpu0).Microseconds())/float64(n), "postamt-cpu-µs/email")
	}
}

// BenchmarkP2P4P8Backlog builds a backlog of emails scheduled an hour ahead (default 1,000,000,
// POSTAMT_BENCH_BACKLOG), then measures on it:
//   - P8: Redis memory per queued email beyond its body (used_memory grown by the backlog,
//     minus what the bodies take, measured by deleting them at the end), and what the P2
//     emails' finished index entries cost once they are SENT (MEMORY USAGE of those indexes);
//   - P4: a page of 50 (p50/p99 of 200 pages through the tenant's ALL view, admin) and the
//     badge count (p50/p99 of 200 counts) with the whole backlog in one tenant, and the p99 of
//     200 calls to a bare grpc-go server beside them (the bar on this machine is a ratio to it),
//     and the CPU of the services' process and redis-server per page and count;
//     POSTAMT_BENCH_P4_STATS=file writes Redis's command statistics of those calls there and
//     POSTAMT_BENCH_P4_CPUPROFILE=file profiles the process over them;
//   - P2: 5,000 emails due spread over 10 s; lateness of their arrival at the sink after their
//     send_at: early count, p50, p99, max. A window in which redis-server stalled on a fast
//     command (latency monitor, 10 ms) is void and repeated (P2-void-windows, up to three);
//     redis-server's major page faults over the backlog's build and over the window are
//     reported. POSTAMT_BENCH_P2_STATS=file appends each window's latency events, faults and
//     slow log there.
func BenchmarkP2P4P8Backlog(b *testing.B) {
	s := startSuite(b)
	backlog := envInt("POSTAMT_BENCH_BACKLOG", 1_000_000)
	due := envInt("POSTAMT_BENCH_P2_N", 5000)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		before := usedMemory(b, s.rdb)
		later := time.Now().Add(time.Hour)
		start := time.Now()
		s.submitAll(b, backlog, 50, func(i int) *outboxv1.SubmitEmailRequest { return benchEmail(i, later) })
		b.ReportMetric(float64(backlog)/time.Since(start).Seconds(), "backlog-submits/s")
		// Steady state: the relay has published the backlog's events.
		waitRelayed(b, s.rdb)
		withBodies := usedMemory(b, s.rdb)

		// P4 on the full tenant, each page and count beside a call to a bare grpc-go server in
		// this process (the same-run baseline of the bar on this machine).
		bare := healthpb.NewHealthClient(servetest.Dial(b, startBareServer(b)))
		var pages, counts, bares []time.Duration
		tok := ""
		p4stats := os.Getenv("POSTAMT_BENCH_P4_STATS")
		if p4stats != "" {
			s.rdb.ConfigResetStat(ctx)
		}
		stopProfile := func() {}
		if f := os.Getenv("POSTAMT_BENCH_P4_CPUPROFILE"); f != "" {
			stopProfile = startCPUProfile(b, f)
		}
		cpu0, rcpu0 := processCPU(), redistest.CPU(b, s.rdb)
		for range 200 {
			t0 := time.Now()
			if _, err := bare.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				b.Fatalf("bare call: %v", err)
			}
			bares = append(bares, time.Since(t0))
			t0 = time.Now()
			r, err := s.outbox.ListEmails(s.admin, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, PageSize: 50, PageToken: tok})
			pages = append(pages, time.Since(t0))
			if err != nil || len(r.GetEmails()) != 50 {
				b.Fatalf("list: %d emails, %v", len(r.GetEmails()), err)
			}
			tok = r.GetNextPageToken()
			t0 = time.Now()
			c, err := s.outbox.CountEmails(s.admin, &outboxv1.CountEmailsRequest{View: outboxv1.View_VIEW_ALL})
			counts = append(counts, time.Since(t0))
			if err != nil || c.GetTotal() < int64(backlog) {
				b.Fatalf("count: %v, %v", c.GetTotal(), err)
			}
		}
		stopProfile()
		// CPU per page and count together (the bare calls' share of the process is small): what
		// the two cost the services' process and redis-server.
		b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/200, "P4-proc-cpu-µs/page+count")
		b.ReportMetric(float64((redistest.CPU(b, s.rdb)-rcpu0).Microseconds())/200, "P4-redis-cpu-µs/page+count")
		if p4stats != "" {
			if err := os.WriteFile(p4stats, []byte(s.rdb.Info(ctx, "commandstats").Val()), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(ms(percentile(pages, 0.50)), "P4-page-p50-ms")
		b.ReportMetric(ms(percentile(pages, 0.99)), "P4-page-p99-ms")
		b.ReportMetric(ms(percentile(counts, 0.50)), "P4-count-p50-ms")
		b.ReportMetric(ms(percentile(counts, 0.99)), "P4-count-p99-ms")
		b.ReportMetric(ms(percentile(bares, 0.99)), "P4-bare-p99-ms")
		b.ReportMetric(float64(percentile(pages, 0.99))/float64(percentile(bares, 0.99)), "P4-page-p99-x-bare")
		b.ReportMetric(float64(percentile(counts, 0.99))/float64(percentile(bares, 0.99)), "P4-count-p99-x-bare")

		// P2: due mail among the backlog. A window in which redis-server itself stalled (its
		// latency monitor saw an O(1) or O(log n) command — a "fast-command" — take 10 ms or more)
		// is void: the figure would be the machine's, not Postamt's. It is reported and the
		// window is repeated, up to three windows, on the same backlog. Redis's major page
		// faults over each window say whether cold memory was paged back in.
		rpid := redisPID(b, s.rdb)
		b.ReportMetric(float64(majorFaults(b, rpid)), "P2-redis-majflt-backlog")
		var late []time.Duration
		var early, void int
		var stall time.Duration
		var faults int64
		windows := 0
		for window := range 3 {
			windows++
			if err := s.rdb.ConfigSet(ctx, "latency-monitor-threshold", "10").Err(); err != nil {
				b.Fatal(err)
			}
			s.rdb.Do(ctx, "LATENCY", "RESET")
			s.rdb.SlowLogReset(ctx)
			f0 := majorFaults(b, rpid)
			sent := len(s.sink.Messages())
			at := time.Now().Add(2 * time.Second)
			base := backlog + window*due
			s.submitAll(b, due, 50, func(i int) *outboxv1.SubmitEmailRequest {
				return benchEmail(base+i, at.Add(time.Duration(i)*10*time.Second/time.Duration(due)))
			})
			msgs := s.sink.WaitForMessages(b, sent+due, 2*time.Minute)
			faults = majorFaults(b, rpid) - f0
			late, early = late[:0], 0
			for _, m := range msgs[sent:] {
				d := m.Received.Sub(dueOf(b, m))
				if d < 0 {
					early++
				}
				late = append(late, d)
			}
			events := latencyEvents(ctx, b, s.rdb)
			if stats := os.Getenv("POSTAMT_BENCH_P2_STATS"); stats != "" {
				// What Redis itself spent ≥ 10 ms on during the window (LATENCY LATEST, SLOWLOG).
				slow := fmt.Sprint(s.rdb.SlowLogGet(ctx, 20).Val())
				line := fmt.Sprintf("window %d: latency %v; major faults %d\n%s\n", window, events, faults, slow)
				f, err := os.OpenFile(stats, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
				if err != nil {
					b.Fatal(err)
				}
				_, err = f.WriteString(line)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			stall = events["fast-command"]
			if stall < 10*time.Millisecond {
				break
			}
			void++
			b.Logf("P2 window %d void: redis-server stalled %v on a fast command (major faults %d); repeating", window, stall, faults)
		}
		b.ReportMetric(float64(void), "P2-void-windows")
		b.ReportMetric(ms(stall), "P2-redis-stall-ms")
		b.ReportMetric(float64(faults), "P2-redis-majflt-window")
		b.ReportMetric(float64(early), "P2-early")
		b.ReportMetric(ms(percentile(late, 0)), "P2-earliest-ms")
		b.ReportMetric(ms(percentile(late, 0.50)), "P2-late-p50-ms")
		b.ReportMetric(ms(percentile(late, 0.99)), "P2-late-p99-ms")
		b.ReportMetric(ms(percentile(late, 1)), "P2-late-max-ms")

		// P8 of finished mail: the P2 emails, once SENT, are listed in a finished index per bucket
		// (tenant, sender, team, mailbox) until the retention ends.
		finished, entries := finishedIndexBytes(ctx, b, s, windows*due)
		b.ReportMetric(float64(finished)/float64(windows*due), "P8-finished-index-bytes/email")
		b.ReportMetric(float64(finished)/float64(entries), "P8-finished-index-bytes/entry")

		// P8: drop the bodies and see what the backlog costs without them.
		dropBodies(ctx, b, s.rdb)
		without := usedMemory(b, s.rdb)
		b.ReportMetric(float64(without-before)/float64(backlog), "P8-bytes/email")
		b.ReportMetric(float64(withBodies-before)/float64(backlog), "bytes/email-with-body")
	}
}

// finishedIndexBytes waits until n emails are counted SENT (their results recorded), then returns
// the memory of the finished indexes (MEMORY USAGE, every key sampled in full) and how many
// entries they hold.
func finishedIndexBytes(ctx context.Context, b *testing.B, s *suite, n int) (bytes, entries int64) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := s.outbox.CountEmails(s.admin, &outboxv1.CountEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_SENT}}})
		if err != nil {
			b.Fatal(err)
		}
		if c.GetTotal() >= int64(n) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d emails recorded SENT after a minute", c.GetTotal(), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	iter := s.rdb.Scan(ctx, 0, "pm:ob:*:f:*", 1000).Iterator()
	for iter.Next(ctx) {
		bytes += s.rdb.MemoryUsage(ctx, iter.Val(), 0).Val()
		entries += s.rdb.ZCard(ctx, iter.Val()).Val()
	}
	if err := iter.Err(); err != nil {
		b.Fatal(err)
	}
	return bytes, entries
}

// waitRelayed waits until the outbox's event streams are empty: the relay deletes what
// JetStream acknowledged.
func waitRelayed(b *testing.B, rdb *redis.Client) {
	b.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		var n int64
		for p := range benchPartitions {
			n += rdb.XLen(ctx, fmt.Sprintf("pm:ob:{ob%d}:events", p)).Val()
		}
		if n == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Fatal("the relay did not publish the backlog's events within 10 minutes")
}

func dueOf(b *testing.B, m smtptest.Message) time.Time {
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		b.Fatal(err)
	}
	subj := msg.Header.Get("Subject")
	i := strings.LastIndex(subj, "due ")
	n, err := strconv.ParseInt(subj[i+4:], 10, 64)
	if i < 0 || err != nil {
		b.Fatalf("subject %q carries no due time", subj)
	}
	return time.Unix(0, n)
}

// latencyEvents is Redis's LATENCY LATEST: per event ("command", "fast-command", "fork", ...)
// the longest latency it recorded since the last LATENCY RESET.
func latencyEvents(ctx context.Context, b *testing.B, rdb *redis.Client) map[string]time.Duration {
	b.Helper()
	rows, err := rdb.Do(ctx, "LATENCY", "LATEST").Slice()
	if err != nil {
		b.Fatal(err)
	}
	events := map[string]time.Duration{}
	for _, r := range rows {
		// [event, unix time of the latest, its ms, the maximum ms]
		f, ok := r.([]any)
		if !ok || len(f) < 4 {
			continue
		}
		name, _ := f[0].(string)
		most, _ := f[3].(int64)
		events[name] = time.Duration(most) * time.Millisecond
	}
	return events
}

// redisPID is the process id of the (local) redis-server, for its /proc figures.
func redisPID(b *testing.B, rdb *redis.Client) int {
	b.Helper()
	info, err := rdb.Info(context.Background(), "server").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "process_id:"); ok {
			pid, err := strconv.Atoi(v)
			if err != nil {
				b.Fatal(err)
			}
			return pid
		}
	}
	b.Fatal("no process_id in INFO server")
	return 0
}

// majorFaults is the count of major page faults of process pid so far (/proc/pid/stat field 12):
// pages it touched that had to be read back in.
func majorFaults(b *testing.B, pid int) int64 {
	b.Helper()
	n, err := strconv.ParseInt(procStat(b, pid)[9], 10, 64)
	if err != nil {
		b.Fatalf("/proc/%d/stat majflt: %v", pid, err)
	}
	return n
}

func usedMemory(b *testing.B, rdb *redis.Client) int64 {
	b.Helper()
	info, err := rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no used_memory in INFO")
	return 0
}

func dropBodies(ctx context.Context, b *testing.B, rdb *redis.Client) {
	b.Helper()
	iter := rdb.Scan(ctx, 0, "pm:ob:*:b:*", 10_000).Iterator()
	pipe := rdb.Pipeline()
	for iter.Next(ctx) {
		pipe.Unlink(ctx, iter.Val())
		if pipe.Len() >= 1000 {
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	if err := iter.Err(); err != nil {
		b.Fatal(err)
	}
	if _, err := pipe.Exec(ctx); err != nil && pipe.Len() > 0 {
		b.Fatal(err)
	}
	// Lazy freeing: wait until Redis has given the memory back.
	for range 100 {
		info, _ := rdb.Info(ctx, "memory").Result()
		if strings.Contains(info, "lazyfree_pending_objects:0") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
