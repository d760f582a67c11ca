package bench

import (
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
)

// BenchmarkSchedulingGaps measures this machine, not Postamt: threads that spin reading the
// clock for POSTAMT_BENCH_GAPS_SECONDS (default 10) and count the gaps between two reads of 10 ms
// or more — time a runnable thread was kept off its CPU. With one spinner a vCPU stays free for
// everything else; with one per vCPU, every other process (redis-server in a benchmark, the
// machine's own services, kernel threads) takes its turn from a spinner. P2 asks whether
// redis-server's stalls are its own, paging, or this: run it on an otherwise idle machine.
func BenchmarkSchedulingGaps(b *testing.B) {
	secs := envInt("POSTAMT_BENCH_GAPS_SECONDS", 10)
	for _, spinners := range []int{1, runtime.NumCPU()} {
		b.Run(fmt.Sprintf("spinners=%d", spinners), func(b *testing.B) {
			for range b.N {
				var mu sync.Mutex
				var over10 int
				var longest time.Duration
				var wg sync.WaitGroup
				for range spinners {
					wg.Go(func() {
						runtime.LockOSThread()
						defer runtime.UnlockOSThread()
						n, most := spin(time.Duration(secs) * time.Second)
						mu.Lock()
						over10 += n
						longest = max(longest, most)
						mu.Unlock()
					})
				}
				wg.Wait()
				b.ReportMetric(float64(over10)/float64(secs), "gaps≥10ms/s")
				b.ReportMetric(ms(longest), "longest-gap-ms")
			}
		})
	}
}

// spin reads the clock in a loop for d and returns how many gaps between two reads were 10 ms
// or longer, and the longest.
func spin(d time.Duration) (over10 int, longest time.Duration) {
	last := time.Now()
	end := last.Add(d)
	for last.Before(end) {
		now := time.Now()
		gap := now.Sub(last)
		if gap >= 10*time.Millisecond {
			over10++
		}
		longest = max(longest, gap)
		last = now
	}
	return over10, longest
}
