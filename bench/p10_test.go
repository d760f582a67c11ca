package bench

import (
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/postamt/postamt/internal/testkit/redistest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// hungRelay is an SMTP relay that accepts TCP connections and never says a word, not even its
// greeting: the worst a relay can do to a sender, which waits until its own timeout. It is a bare
// listener rather than a sink behind a hanging proxy, so nothing of it costs CPU while it hangs.
type hungRelay struct {
	ln net.Listener

	mu    sync.Mutex
	conns []net.Conn
}

// startHungRelay listens on a free loopback port until b's cleanup, which closes every held
// connection.
func startHungRelay(b *testing.B) *hungRelay {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	r := &hungRelay{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at cleanup
			}
			r.mu.Lock()
			r.conns = append(r.conns, c)
			r.mu.Unlock()
		}
	}()
	b.Cleanup(func() {
		_ = ln.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range r.conns {
			_ = c.Close()
		}
	})
	return r
}

// accepted is the number of connections the relay has taken (and holds).
func (r *hungRelay) accepted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// lateness is what P2 and P10 report of mail due spread over a window.
type lateness struct {
	early           int
	p50, p99, worst time.Duration
	// cpu is the CPU the Go process (both services, NATS, the sink) and redis-server used per
	// second of the due window, from its start to the last arrival: a cost the hung lane adds
	// (a loop that spins on mail it cannot take, say) shows here even when the VM's noise hides
	// it in the lateness.
	procCPU, redisCPU float64
}

// latenessOf measures the sink's messages from index `from` on against the due time their
// subjects carry (benchEmail).
func (s *suite) latenessOf(b *testing.B, from, n int) lateness {
	b.Helper()
	msgs := s.sink.WaitForMessages(b, from+n, 2*time.Minute)
	var late []time.Duration
	var l lateness
	for _, m := range msgs[from:] {
		d := m.Received.Sub(dueOf(b, m))
		if d < 0 {
			l.early++
		}
		late = append(late, d)
	}
	l.p50, l.p99, l.worst = percentile(late, 0.50), percentile(late, 0.99), percentile(late, 1)
	return l
}

// BenchmarkP10HungRelay measures DESIGN.md §5 P10, head-of-line isolation: the lateness of mail
// through a healthy connector while a second connector of the same tenant has a backlog due on
// a relay that hangs, against the same mail without that backlog, in the same suite and run.
//
// The suite is P1's (startSuite: connector "default", 32 connections to the go-smtp sink). A
// second connector, "hung", points at a listener that accepts connections and never answers;
// its pool (POSTAMT_BENCH_P10_HUNG_POOL, 8) is far smaller than its backlog
// (POSTAMT_BENCH_P10_HUNG, 200 emails, due at once), so its lane is full and the rest of its
// mail stays due in the same partitions as the healthy mail for the whole window. Each phase
// schedules POSTAMT_BENCH_P10_N (2,000) emails on "default" due spread over 10 s (from a few seconds after they are submitted) and reports
// their lateness at the sink (arrival − send_at): first the baseline (the hung connector exists
// but has no mail), then the same with the hung backlog claimed and hanging. A warm-up of 200
// emails runs before both, so the baseline does not pay for cold caches. Each phase also reports
// the CPU the process and redis-server used per second of its window. The bar is the ratio of
// the p99s (≤ 1.2×).
func BenchmarkP10HungRelay(b *testing.B) {
	n := envInt("POSTAMT_BENCH_P10_N", 2000)
	hungN := envInt("POSTAMT_BENCH_P10_HUNG", 200)
	hungPool := envInt("POSTAMT_BENCH_P10_HUNG_POOL", 8)
	const window = 10 * time.Second
	b.ResetTimer()
	for range b.N {
		s := startSuite(b)
		hung := startHungRelay(b)
		host, port, _ := net.SplitHostPort(hung.ln.Addr().String())
		p, _ := strconv.Atoi(port)
		if _, err := s.outbox.CreateConnector(s.admin, &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
			ConnectorId: "hung", Host: host, Port: int32(p), TlsMode: outboxv1.TlsMode_TLS_MODE_NONE, PoolSize: int32(hungPool),
			RetryPattern: []*durationpb.Duration{durationpb.New(time.Minute)},
		}}); err != nil {
			b.Fatal(err)
		}
		// Warm-up: caches, connections to the sink, the lane of "default".
		now := time.Now()
		s.submitAll(b, 200, 16, func(i int) *outboxv1.SubmitEmailRequest { return benchEmail(i, now) })
		s.sink.WaitForMessages(b, 200, time.Minute)

		phase := func(name string) lateness {
			from := len(s.sink.Messages())
			start := time.Now().Add(time.Duration(n/1000+3) * time.Second) // after the submits are in, even on a busy machine
			s.submitAll(b, n, 16, func(i int) *outboxv1.SubmitEmailRequest {
				return benchEmail(i, start.Add(time.Duration(i)*window/time.Duration(n)))
			})
			if time.Now().After(start) {
				b.Fatalf("%s: submitting took longer than planned; the first emails were due before they were in", name)
			}
			time.Sleep(time.Until(start))
			cpu0, rcpu0 := processCPU(), redistest.CPU(b, s.rdb)
			l := s.latenessOf(b, from, n)
			secs := time.Since(start).Seconds()
			l.procCPU = float64((processCPU() - cpu0).Milliseconds()) / secs
			l.redisCPU = float64((redistest.CPU(b, s.rdb) - rcpu0).Milliseconds()) / secs
			return l
		}
		base := phase("baseline")

		// The hung backlog, due at once; its lane fills its pool with conversations that wait
		// for a greeting and holds as many more claims waiting behind them.
		now = time.Now()
		s.submitAll(b, hungN, 16, func(i int) *outboxv1.SubmitEmailRequest {
			r := benchEmail(100_000+i, now)
			r.ConnectorId = "hung"
			return r
		})
		deadline := time.Now().Add(30 * time.Second)
		for hung.accepted() < hungPool && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if got := hung.accepted(); got < hungPool {
			b.Fatalf("the hung connector opened %d of its %d connections within 30 s", got, hungPool)
		}
		withHung := phase("hung relay beside")
		if got := hung.accepted(); got > hungPool {
			// More connections than the pool would mean the lane's concurrency is not its pool.
			b.Logf("the hung relay was opened %d connections (pool %d)", got, hungPool)
		}

		for _, r := range []struct {
			name string
			l    lateness
		}{{"base", base}, {"hung", withHung}} {
			b.ReportMetric(float64(r.l.early), r.name+"-early")
			b.ReportMetric(ms(r.l.p50), r.name+"-p50-ms")
			b.ReportMetric(ms(r.l.p99), r.name+"-p99-ms")
			b.ReportMetric(ms(r.l.worst), r.name+"-max-ms")
			b.ReportMetric(r.l.procCPU, r.name+"-proc-cpu-ms/s")
			b.ReportMetric(r.l.redisCPU, r.name+"-redis-cpu-ms/s")
		}
		b.ReportMetric(float64(hung.accepted()), "hung-conns")
		b.ReportMetric(float64(withHung.p99)/float64(max(base.p99, time.Microsecond)), "p99-ratio")
	}
}
