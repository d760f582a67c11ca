package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/hibiken/asynq"

	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
)

// The asynq baseline of P1 and P2 (DESIGN.md §5): the same workload on hibiken/asynq with its
// default settings — one task per email, the default queue, the default concurrency (one worker
// per CPU) and the default scheduler interval — on a Redis of its own and the same SMTP sink. Its
// handler sends through a pool of reused go-smtp connections, as the outbox does, so the
// comparison is of the queues, not of connection set-up.

type asynqMail struct {
	From  string `json:"from"`
	To    string `json:"to"`
	ID    int    `json:"id"`
	DueNS int64  `json:"due_ns,omitempty"`
}

const asynqMessage = "From: \"Kanzlei Muster\" <info@kanzlei.example>\r\nTo: mandant@example.com\r\n" +
	"Subject: Ihre Akte %d\r\nMessage-ID: <asynq-%d@kanzlei.example>\r\nDate: Sun, 22 Nov 2026 09:00:00 +0000\r\n" +
	"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" +
	"Sehr geehrte Damen und Herren, anbei die Unterlagen zu Ihrer Akte.\r\n"

// emailMux handles the email tasks of the asynq baselines: each task's email goes out through
// pool.
func emailMux(pool *smtpPool) *asynq.ServeMux {
	mux := asynq.NewServeMux()
	mux.HandleFunc("email:send", func(_ context.Context, t *asynq.Task) error {
		var m asynqMail
		if err := json.Unmarshal(t.Payload(), &m); err != nil {
			return err
		}
		return pool.send(m)
	})
	return mux
}

// smtpPool is a small pool of reused connections to the sink.
type smtpPool struct {
	addr string
	idle chan *gosmtp.Client
}

func (p *smtpPool) send(m asynqMail) error {
	var c *gosmtp.Client
	select {
	case c = <-p.idle:
	default:
		var err error
		if c, err = gosmtp.Dial(p.addr); err != nil {
			return err
		}
		if err := c.Hello("localhost"); err != nil {
			_ = c.Close()
			return err
		}
	}
	msg := fmt.Appendf(nil, asynqMessage, m.ID, m.ID)
	if err := c.SendMail(m.From, []string{m.To}, bytes.NewReader(msg)); err != nil {
		_ = c.Close()
		return err
	}
	select {
	case p.idle <- c:
	default:
		_ = c.Quit()
	}
	return nil
}

// startAsynq returns a server with asynq's defaults (only its log level quieted, and its
// Concurrency when concurrency is not 0) on a Redis of its own.
func startAsynq(b *testing.B, concurrency int) (*asynq.Server, asynq.RedisClientOpt) {
	b.Helper()
	opt := asynq.RedisClientOpt{Addr: redistest.Start(b).Addr()}
	return asynq.NewServer(opt, asynq.Config{Concurrency: concurrency, LogLevel: asynq.ErrorLevel}), opt
}

// enqueueAll enqueues n tasks from 50 goroutines.
func enqueueAll(b *testing.B, client *asynq.Client, n int, task func(i int) (*asynq.Task, []asynq.Option)) {
	b.Helper()
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t, opts := task(i)
				if _, err := client.Enqueue(t, opts...); err != nil && failed.Add(1) == 1 {
					b.Errorf("enqueue: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		b.FailNow()
	}
}

func mailTask(m asynqMail) *asynq.Task {
	payload, _ := json.Marshal(m)
	return asynq.NewTask("email:send", payload)
}

// BenchmarkP1Asynq is P1's baseline: n emails queued before the server starts; emails per
// second from its start to the last arrival at the sink. Two set-ups (DESIGN.md §5 P1): asynq's
// default concurrency (one worker per CPU), and Concurrency equal to the outbox connector's pool
// (POSTAMT_BENCH_POOL, 32), which the bar compares with.
func BenchmarkP1Asynq(b *testing.B) {
	n := envInt("POSTAMT_BENCH_P1_N", 20_000)
	pool := envInt("POSTAMT_BENCH_POOL", 32)
	for _, c := range []struct {
		name        string
		concurrency int
	}{{"concurrency=default", 0}, {fmt.Sprintf("concurrency=%d", pool), pool}} {
		b.Run(c.name, func(b *testing.B) {
			sink := smtptest.Start(b)
			conns := &smtpPool{addr: sink.Addr(), idle: make(chan *gosmtp.Client, max(32, c.concurrency))}
			for round := range b.N {
				srv, opt := startAsynq(b, c.concurrency)
				client := asynq.NewClient(opt)
				enqueueAll(b, client, n, func(i int) (*asynq.Task, []asynq.Option) {
					return mailTask(asynqMail{From: "info@kanzlei.example", To: "mandant@example.com", ID: i}), nil
				})
				_ = client.Close()
				mux := emailMux(conns)
				start := time.Now()
				if err := srv.Start(mux); err != nil {
					b.Fatal(err)
				}
				msgs := sink.WaitForMessages(b, (round+1)*n, 10*time.Minute)
				last := slices.MaxFunc(msgs, func(x, y smtptest.Message) int { return x.Received.Compare(y.Received) }).Received
				b.ReportMetric(float64(n)/last.Sub(start).Seconds(), "emails/s")
				srv.Shutdown()
			}
		})
	}
}

// BenchmarkP2Asynq is P2's baseline: a backlog scheduled an hour ahead (POSTAMT_BENCH_BACKLOG,
// default 1,000,000), then 5,000 tasks due spread over 10 s; lateness of each run after its due
// time.
func BenchmarkP2Asynq(b *testing.B) {
	backlog := envInt("POSTAMT_BENCH_BACKLOG", 1_000_000)
	due := envInt("POSTAMT_BENCH_P2_N", 5000)
	b.ResetTimer()
	for range b.N {
		var mu sync.Mutex
		var late []time.Duration
		srv, opt := startAsynq(b, 0)
		mux := asynq.NewServeMux()
		mux.HandleFunc("email:send", func(_ context.Context, t *asynq.Task) error {
			var m asynqMail
			if err := json.Unmarshal(t.Payload(), &m); err != nil {
				return err
			}
			d := time.Since(time.Unix(0, m.DueNS))
			mu.Lock()
			late = append(late, d)
			mu.Unlock()
			return nil
		})
		if err := srv.Start(mux); err != nil {
			b.Fatal(err)
		}
		client := asynq.NewClient(opt)
		later := time.Now().Add(time.Hour)
		start := time.Now()
		enqueueAll(b, client, backlog, func(i int) (*asynq.Task, []asynq.Option) {
			return mailTask(asynqMail{From: "info@kanzlei.example", To: "mandant@example.com", ID: i, DueNS: later.UnixNano()}), []asynq.Option{asynq.ProcessAt(later)}
		})
		b.ReportMetric(float64(backlog)/time.Since(start).Seconds(), "backlog-enqueues/s")
		window := time.Now().Add(2 * time.Second)
		enqueueAll(b, client, due, func(i int) (*asynq.Task, []asynq.Option) {
			at := window.Add(time.Duration(i) * 10 * time.Second / time.Duration(due))
			return mailTask(asynqMail{From: "info@kanzlei.example", To: "mandant@example.com", ID: backlog + i, DueNS: at.UnixNano()}), []asynq.Option{asynq.ProcessAt(at)}
		})
		_ = client.Close()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			mu.Lock()
			n := len(late)
			mu.Unlock()
			if n >= due || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		srv.Shutdown()
		mu.Lock()
		early := 0
		for _, d := range late {
			if d < 0 {
				early++
			}
		}
		if len(late) < due {
			b.Fatalf("only %d of %d scheduled tasks ran within the time limit", len(late), due)
		}
		b.ReportMetric(float64(early), "P2-early")
		b.ReportMetric(ms(percentile(late, 0)), "P2-earliest-ms")
		b.ReportMetric(ms(percentile(late, 0.50)), "P2-late-p50-ms")
		b.ReportMetric(ms(percentile(late, 0.99)), "P2-late-p99-ms")
		b.ReportMetric(ms(percentile(late, 1)), "P2-late-max-ms")
		mu.Unlock()
	}
}
