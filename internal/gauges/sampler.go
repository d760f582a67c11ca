// Package gauges exports gauges whose values cost a read of Redis or NATS without reading
// either at scrape time: a Sampler reads them in the background and scrapes copy the last values.
package gauges

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/redisx"
)

// Sampler exports gauges whose values cost a read of Redis or NATS. It reads them in the
// background every Interval and a scrape only copies the last values, so scrapes (by any number
// of Prometheus servers, at any rate) never add load to Redis or NATS, and a slow Redis never
// makes a scrape time out. Register it with the process's registry and Run it beside the
// service.
//
// With LockKey set, only the replica that holds the lock (a Redis key with a TTL of three
// intervals, renewed by its holder) samples and exports; the others export nothing, so a sample
// that reads every connector's indexes is taken once per interval for the whole deployment, not
// once per replica. Queries aggregate with max() across pods, which is the same either way.
type Sampler struct {
	// Name labels the sampler's own series (postamt_sampler_*{sampler=Name}).
	Name string
	// Descs are every description Sample may emit, for Describe.
	Descs []*prometheus.Desc
	// Sample reads the values and hands each to emit; an error keeps the previous values.
	Sample func(ctx context.Context, emit func(desc *prometheus.Desc, value float64, labels ...string)) error
	// Interval between samples; 0 means 15s.
	Interval time.Duration
	// Redis and LockKey elect one sampling replica; an empty LockKey samples in every replica.
	Redis   redis.UniversalClient
	LockKey string
	// Logger receives failed samples at debug level (the service's readiness reports outages).
	Logger *slog.Logger

	init    sync.Once
	token   string
	failed  *prometheus.Desc
	success *prometheus.Desc

	mu       sync.Mutex
	last     []prometheus.Metric
	failures int64
	lastOK   time.Time
}

func (s *Sampler) setup() {
	s.init.Do(func() {
		if s.Interval <= 0 {
			s.Interval = 15 * time.Second
		}
		if s.Logger == nil {
			s.Logger = slog.New(slog.DiscardHandler)
		}
		var nonce [8]byte
		_, _ = rand.Read(nonce[:])
		s.token = hex.EncodeToString(nonce[:])
		labels := prometheus.Labels{"sampler": s.Name}
		s.failed = prometheus.NewDesc("postamt_sampler_failures_total",
			"Background samples of gauges that failed (Redis or NATS away); the gauges keep their last values.", nil, labels)
		s.success = prometheus.NewDesc("postamt_sampler_last_success_timestamp_seconds",
			"When the gauges of this sampler were last read; stale values show as an old timestamp.", nil, labels)
	})
}

// Describe implements prometheus.Collector.
func (s *Sampler) Describe(ch chan<- *prometheus.Desc) {
	s.setup()
	for _, d := range s.Descs {
		ch <- d
	}
	ch <- s.failed
	ch <- s.success
}

// Collect implements prometheus.Collector: the values of the last sample, read from memory.
func (s *Sampler) Collect(ch chan<- prometheus.Metric) {
	s.setup()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.last {
		ch <- m
	}
	ch <- prometheus.MustNewConstMetric(s.failed, prometheus.CounterValue, float64(s.failures))
	if !s.lastOK.IsZero() {
		ch <- prometheus.MustNewConstMetric(s.success, prometheus.GaugeValue, float64(s.lastOK.UnixNano())/1e9)
	}
}

// Run samples every Interval until ctx ends, the first time at once; it returns nil then.
func (s *Sampler) Run(ctx context.Context) error {
	s.setup()
	t := time.NewTicker(s.Interval)
	defer t.Stop()
	for {
		s.Refresh(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Refresh takes one sample now (Run's step; tests call it to read fresh values at once).
func (s *Sampler) Refresh(ctx context.Context) {
	s.setup()
	ctx, cancel := context.WithTimeout(ctx, s.Interval)
	defer cancel()
	if s.LockKey != "" {
		held, err := s.lead(ctx)
		if err != nil || !held {
			s.mu.Lock()
			// Another replica exports them; stale copies here would outvote it.
			s.last, s.lastOK = nil, time.Time{}
			if err != nil {
				s.failures++
			}
			s.mu.Unlock()
			if err != nil {
				s.Logger.Debug("metrics sampler: lock", "sampler", s.Name, "error", err)
			}
			return
		}
	}
	var out []prometheus.Metric
	err := s.Sample(ctx, func(desc *prometheus.Desc, value float64, labels ...string) {
		m, err := prometheus.NewConstMetric(desc, prometheus.GaugeValue, value, labels...)
		if err == nil {
			out = append(out, m)
		}
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.failures++
		s.Logger.Debug("metrics sampler: sample", "sampler", s.Name, "error", err)
		return
	}
	s.last, s.lastOK = out, time.Now()
}

// leadScript takes or renews the sampling lock. KEYS[1] the lock; ARGV[1] token, ARGV[2] TTL
// ms. Returns 1 while the caller holds it.
var leadScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] or not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
`)

func (s *Sampler) lead(ctx context.Context) (bool, error) {
	// Losing the lock in a failover only means two replicas sample for a while.
	n, err := leadScript.Run(redisx.WithoutReplicaAcks(ctx), s.Redis, []string{s.LockKey}, s.token, (3 * s.Interval).Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("sampler lock %s: %w", s.LockKey, err)
	}
	return n == 1, nil
}
