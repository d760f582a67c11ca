package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/hibiken/asynq"

	"github.com/postamt/postamt/faults/harness"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	"github.com/postamt/postamt/internal/testkit/tcpproxy"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// asynqWorkerEnv switches the bench test binary into an asynq worker process (see TestMain):
// BenchmarkP9Asynq needs workers it can SIGKILL, and re-running its own binary needs no code
// fetched or built besides the benchmarks. The value is the Redis address.
const asynqWorkerEnv = "POSTAMT_BENCH_ASYNQ_WORKER"

// TestMain runs the benchmarks, or an asynq worker when asynqWorkerEnv is set, or P5's or P3's
// load generator when p5LoadGenEnv or p3LoadGenEnv is set; harness.Main
// removes the postamt binary BenchmarkP9Takeover built.
func TestMain(m *testing.M) {
	if addr := os.Getenv(asynqWorkerEnv); addr != "" {
		os.Exit(asynqWorker(addr))
	}
	if addr := os.Getenv(p5LoadGenEnv); addr != "" {
		os.Exit(loadGen(addr))
	}
	if addr := os.Getenv(p3LoadGenEnv); addr != "" {
		os.Exit(submitLoadGen(addr))
	}
	os.Exit(harness.Main(m))
}

// asynqWorker is the body of an asynq worker process: asynq's defaults but for its
// concurrency (POSTAMT_BENCH_ASYNQ_CONCURRENCY) and log level, a handler sending each task's
// email through pooled go-smtp connections to POSTAMT_BENCH_ASYNQ_SMTP. It stops at SIGTERM (as
// asynq's Run does), when its parent is gone, or after 15 minutes, so an aborted benchmark
// leaves no worker behind.
func asynqWorker(redisAddr string) int {
	concurrency, _ := strconv.Atoi(os.Getenv("POSTAMT_BENCH_ASYNQ_CONCURRENCY"))
	pool := &smtpPool{addr: os.Getenv("POSTAMT_BENCH_ASYNQ_SMTP"), idle: make(chan *gosmtp.Client, max(concurrency, 1))}
	srv := asynq.NewServer(asynq.RedisClientOpt{Addr: redisAddr}, asynq.Config{Concurrency: concurrency, LogLevel: asynq.ErrorLevel})
	mux := emailMux(pool)
	exitWithParent(15 * time.Minute)
	if err := srv.Run(mux); err != nil {
		fmt.Fprintln(os.Stderr, "asynq worker:", err)
		return 1
	}
	return 0
}

// p9Params are the sizes shared by BenchmarkP9Takeover and BenchmarkP9Asynq.
type p9Params struct {
	n     int           // emails, due at once
	pool  int           // connections per replica (outbox pool_size, asynq Concurrency)
	delay time.Duration // added to every reply of the relay
}

func p9Env() p9Params {
	return p9Params{
		n:     envInt("POSTAMT_BENCH_P9_N", 2000),
		pool:  envInt("POSTAMT_BENCH_P9_POOL", 32),
		delay: time.Duration(envInt("POSTAMT_BENCH_P9_DELAY_MS", 200)) * time.Millisecond,
	}
}

// recovery is what P9 reports of the arrivals at the relay after a kill.
type recovery struct {
	// gap is the longest the relay waited for the next message after the kill while mail was
	// still to come (from the kill to the first arrival counts too).
	gap time.Duration
	// heldLast is the time from the kill to the last arrival of mail the killed worker held;
	// otherLast to the last arrival of the other mail (what the survivors held or had not yet
	// claimed), allLast to the last arrival of any mail.
	heldLast, otherLast, allLast time.Duration
	// held is the number of emails the killed worker held; heldMissing of them never arrived.
	held, heldMissing int
	// dups is copies beyond the first, summed over Message-IDs.
	dups int
}

// recoveryOf computes the figures from the relay's arrivals (in order) and the Message-IDs the
// killed worker held.
func recoveryOf(arrivals []harness.Arrival, held map[string]bool, killedAt time.Time) recovery {
	r := recovery{held: len(held)}
	seen := map[string]int{}
	prev := killedAt
	for _, a := range arrivals {
		if seen[a.MessageID]++; seen[a.MessageID] > 1 {
			r.dups++
		}
		if a.At.Before(killedAt) {
			continue
		}
		r.gap = max(r.gap, a.At.Sub(prev))
		prev = a.At
		r.allLast = a.At.Sub(killedAt)
		if held[a.MessageID] {
			r.heldLast = a.At.Sub(killedAt)
		} else {
			r.otherLast = a.At.Sub(killedAt)
		}
	}
	for id := range held {
		if seen[id] == 0 {
			r.heldMissing++
		}
	}
	return r
}

func (r recovery) report(b *testing.B) {
	b.ReportMetric(r.gap.Seconds(), "max-gap-s")
	b.ReportMetric(r.heldLast.Seconds(), "held-last-arrival-s")
	b.ReportMetric(r.otherLast.Seconds(), "other-last-arrival-s")
	b.ReportMetric(r.allLast.Seconds(), "all-arrived-s")
	b.ReportMetric(float64(r.held), "held-by-killed")
	b.ReportMetric(float64(r.dups), "duplicates")
}

// BenchmarkP9Takeover measures DESIGN.md §5 P9, crash recovery, on real processes
// (faults/harness): two dispatching `postamt serve outbox` replicas (default lease, 8 s), an
// API replica, mailbox, a redis-server with AOF, embedded NATS, and one relay — the go-smtp sink
// behind a proxy that delays every reply by POSTAMT_BENCH_P9_DELAY_MS (200), so that both
// replicas hold claims. POSTAMT_BENCH_P9_N (2,000) emails are due at once on one connector with
// POSTAMT_BENCH_P9_POOL (32) connections per replica; when a third of them has arrived, one
// dispatcher is SIGKILLed. Reported, from the kill on: the longest the relay waited for the next
// message while mail was due (bar ≤ 10 s), when the last email the killed replica held arrived
// (its mail is the mail taken over: an UNKNOWN attempt in its history, whose end time is the
// takeover), when everything had, copies per Message-ID beyond the first and how many of them no
// UNKNOWN attempt accounts for (bar: 0).
func BenchmarkP9Takeover(b *testing.B) {
	pp := p9Env()
	const tenant = "kanzlei"
	b.ResetTimer()
	for range b.N {
		s := harness.Start(b, harness.Options{Dispatchers: 2})
		relay := s.NewRelay(b)
		relay.Proxy.SetDelay(pp.delay)
		s.CreateConnector(b, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: int32(pp.pool)})
		// Due a little after the submits are in, so both replicas start on it together.
		at := time.Now().Add(time.Duration(pp.n/500+3) * time.Second)
		mail := s.Submit(b, harness.Batch{Tenant: tenant, Connector: "default", N: pp.n, SendAt: at})
		if time.Now().After(at) {
			b.Logf("submitting took longer than planned: the mail was due before all of it was in")
		}
		harness.Must(b, "a third of the mail at the relay", 5*time.Minute, func() bool { return relay.Distinct() >= pp.n/3 })
		killedAt := time.Now()
		s.Dispatchers[0].Kill()

		counts, settled := s.WaitSettled(pp.n, 5*time.Minute)
		if !settled {
			b.Fatalf("the survivor did not deliver everything within 5 minutes of the kill: %s", counts)
		}
		s.StopDispatchers(30 * time.Second)
		relay.Close()

		emails := s.Emails(b, mail)
		copies := relay.Copies()
		held := map[string]bool{}
		var firstTakeover, lastTakeover time.Duration
		uncounted, counted, unknown := 0, 0, 0
		for _, m := range mail {
			e := emails[m.ID]
			u := 0
			for _, a := range e.GetAttempts() {
				if a.GetOutcome() != outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_UNKNOWN {
					continue
				}
				u++
				d := a.GetEndTime().AsTime().Sub(killedAt)
				if len(held) == 0 || d < firstTakeover {
					firstTakeover = d
				}
				lastTakeover = max(lastTakeover, d)
				held[m.MessageID] = true
			}
			unknown += u
			if extra := copies[m.MessageID] - 1; extra > 0 {
				counted += min(extra, u)
				uncounted += max(0, extra-u)
			}
		}
		r := recoveryOf(relay.Arrivals(), held, killedAt)
		r.report(b)
		b.ReportMetric(firstTakeover.Seconds(), "takeover-first-s")
		b.ReportMetric(lastTakeover.Seconds(), "takeover-last-s")
		b.ReportMetric(float64(counted), "dups-counted")
		b.ReportMetric(float64(uncounted), "dups-uncounted")
		b.ReportMetric(float64(unknown), "unknown-attempts")
		if r.heldMissing > 0 {
			b.Errorf("%d emails the killed replica held never arrived", r.heldMissing)
		}
	}
}

// BenchmarkP9Asynq is P9's baseline: the same relay (sink behind the delaying proxy), the same
// number of emails and connections, on hibiken/asynq with its defaults (30 s lease, recoverer
// every minute for leases expired 30 s ago, then a retry after its default back-off, 15–45 s for
// the first). Two worker processes (this binary re-run, see TestMain) with Concurrency equal to
// the outbox's pool, one task per email queued before they start; when a third has arrived, the
// first worker is SIGKILLed. The tasks it held are those asynq retried (Retried > 0; completed
// tasks are kept for an hour to read it). The same figures as BenchmarkP9Takeover; asynq counts
// no duplicates.
func BenchmarkP9Asynq(b *testing.B) {
	pp := p9Env()
	b.ResetTimer()
	for range b.N {
		rs := redistest.Start(b)
		opt := asynq.RedisClientOpt{Addr: rs.Addr()}
		relay := &harness.Relay{Sink: smtptest.Start(b)}
		relay.Proxy = tcpproxy.Start(b, relay.Sink.Addr())
		relay.Proxy.SetDelay(pp.delay)

		client := asynq.NewClient(opt)
		enqueueAll(b, client, pp.n, func(i int) (*asynq.Task, []asynq.Option) {
			return mailTask(asynqMail{From: "info@kanzlei.example", To: "mandant@example.com", ID: i}), []asynq.Option{asynq.Retention(time.Hour)}
		})
		_ = client.Close()

		workers := make([]*exec.Cmd, 2)
		for i := range workers {
			workers[i] = startAsynqWorker(b, rs.Addr(), relay.Proxy.Addr(), pp.pool)
		}
		harness.Must(b, "a third of the mail at the relay", 5*time.Minute, func() bool { return relay.Distinct() >= pp.n/3 })
		killedAt := time.Now()
		_ = workers[0].Process.Kill()
		_ = workers[0].Wait()

		// Every task done once: the recovered ones too.
		insp := asynq.NewInspector(opt)
		b.Cleanup(func() { _ = insp.Close() })
		if !harness.Eventually(6*time.Minute, func() bool {
			q, err := insp.GetQueueInfo("default")
			return err == nil && q.Completed >= pp.n
		}) {
			q, err := insp.GetQueueInfo("default")
			b.Fatalf("asynq did not complete every task within 6 minutes of the kill: %+v %v", q, err)
		}
		for _, w := range workers[1:] {
			_ = w.Process.Kill()
			_ = w.Wait()
		}
		relay.Close()

		held := map[string]bool{}
		for page := 1; page <= pp.n/500+1; page++ {
			tasks, err := insp.ListCompletedTasks("default", asynq.PageSize(500), asynq.Page(page))
			if err != nil {
				b.Fatal(err)
			}
			for _, t := range tasks {
				if t.Retried == 0 {
					continue
				}
				var m asynqMail
				if err := json.Unmarshal(t.Payload, &m); err != nil {
					b.Fatal(err)
				}
				held[fmt.Sprintf("asynq-%d@kanzlei.example", m.ID)] = true
				if !strings.Contains(t.LastErr, "lease expired") {
					b.Logf("task %s was retried for another reason: %s", t.ID, t.LastErr)
				}
			}
		}
		arrivals := relay.Arrivals()
		slices.SortStableFunc(arrivals, func(x, y harness.Arrival) int { return x.At.Compare(y.At) })
		r := recoveryOf(arrivals, held, killedAt)
		r.report(b)
		if r.heldMissing > 0 {
			b.Errorf("%d tasks the killed worker held never arrived", r.heldMissing)
		}
	}
}

// startAsynqWorker runs an asynq worker process (this test binary, see TestMain) and kills it at
// b's cleanup if it still runs.
func startAsynqWorker(b *testing.B, redisAddr, smtpAddr string, concurrency int) *exec.Cmd {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), asynqWorkerEnv+"="+redisAddr, "POSTAMT_BENCH_ASYNQ_SMTP="+smtpAddr,
		"POSTAMT_BENCH_ASYNQ_CONCURRENCY="+strconv.Itoa(concurrency))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}
