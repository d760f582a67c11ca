// Package limit keeps a token bucket per caller, so that one tenant's or user's burst cannot
// starve the others at the gateway. It is shared by the gateway's HTTP and gRPC sides: a caller
// has one budget however it comes in.
package limit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter hands out per-caller buckets of Rate requests per second with room for Burst. It
// remembers at most MaxCallers callers: beyond that it forgets the ones idle long enough for their
// bucket to be full again (forgetting them changes nothing), and if that is not enough, half of
// the rest (they start again with a full bucket: a flood of distinct callers weakens the limit
// rather than exhausting memory).
type Limiter struct {
	rate       rate.Limit
	burst      int
	maxCallers int
	refill     time.Duration
	now        func() time.Time

	mu      sync.Mutex
	callers map[string]*caller
}

type caller struct {
	bucket *rate.Limiter
	seen   time.Time
}

// New returns a Limiter; now is the clock (nil means time.Now).
func New(perSecond float64, burst, maxCallers int, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{
		rate: rate.Limit(perSecond), burst: burst, maxCallers: maxCallers, now: now,
		refill:  time.Duration(float64(burst) / perSecond * float64(time.Second)),
		callers: make(map[string]*caller),
	}
}

// Allow takes one request from key's bucket. When the bucket is empty it takes nothing and says
// how long until a request would be allowed (the Retry-After the caller is told).
func (l *Limiter) Allow(key string) (retryAfter time.Duration, ok bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.callers[key]
	if c == nil {
		if len(l.callers) >= l.maxCallers {
			l.evict(now)
		}
		c = &caller{bucket: rate.NewLimiter(l.rate, l.burst)}
		l.callers[key] = c
	}
	c.seen = now
	r := c.bucket.ReserveN(now, 1)
	if !r.OK() {
		return time.Second, false // burst 0: never allowed; Config validation prevents it
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// Callers is how many callers the limiter remembers.
func (l *Limiter) Callers() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.callers)
}

func (l *Limiter) evict(now time.Time) {
	for k, c := range l.callers {
		if now.Sub(c.seen) >= l.refill {
			delete(l.callers, k)
		}
	}
	if len(l.callers) < l.maxCallers {
		return
	}
	n := len(l.callers) / 2
	for k := range l.callers {
		if n == 0 {
			return
		}
		delete(l.callers, k)
		n--
	}
}
