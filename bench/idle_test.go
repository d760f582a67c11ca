package bench

import (
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/redistest"
)

// BenchmarkIdle measures what mailbox and outbox cost while nothing happens: the dispatcher's
// partition loops, the relays' lease renewals and blocking reads, per second of wall time, in
// the Go process and in redis-server. With POSTAMT_BENCH_PARTITIONS it shows what a larger
// partition count costs at rest.
func BenchmarkIdle(b *testing.B) {
	s := startSuite(b)
	time.Sleep(3 * time.Second) // the relays' takeovers and the first reads
	b.ResetTimer()
	for range b.N {
		cpu0, rcpu0 := processCPU(), redistest.CPU(b, s.rdb)
		const window = 10 * time.Second
		time.Sleep(window)
		cpu1, rcpu1 := processCPU(), redistest.CPU(b, s.rdb)
		b.ReportMetric(float64((cpu1-cpu0).Microseconds())/window.Seconds()/1000, "proc-cpu-ms/s")
		b.ReportMetric(float64((rcpu1-rcpu0).Microseconds())/window.Seconds()/1000, "redis-cpu-ms/s")
	}
}
