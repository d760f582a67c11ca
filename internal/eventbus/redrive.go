package eventbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/redisx"
)

// Redriver puts back the events a lost JetStream stream held, from the service's own records.
//
// The relay deletes an event from Redis once JetStream has it, so after that the event lives only
// in the stream. When the stream is lost (deleted by hand, or gone with a NATS store) and
// re-created empty — by the relay, or by any service's EnsureStream at its start — the durable
// consumers (mailbox's sent view, the tracker) are re-created at its start and never see what
// they had not read yet, and a new consumer reading from the beginning misses everything before.
// The records in Redis are the ledger of truth, so the service re-emits, through its own event
// streams and relay, the event of each entity's current state: Redrive.
//
// A Redriver notices a re-created stream by its creation time: it keeps the creation time of the
// stream it last saw in Redis (MarkerKey), compares it every Interval (and at once when Nudge is
// called, as the relay does after re-creating the stream), and when the two differ it runs
// Redrive for the entities changed within the stream's MaxAge, then records the new creation time.
// The first Redriver to see a stream (a new deployment, or an upgrade from a version without it)
// records it without a re-drive. Replicas share the marker and take turns through a lock
// (LockKey), so one of them re-drives; one that dies mid-way leaves the marker as it was, and the
// next check re-drives again. Re-driven events carry the ids the original events had (entity and
// version), so JetStream drops the ones it still has within its duplicate window, and the
// consumers, idempotent by entity and version, ignore the rest.
type Redriver struct {
	// Client holds the marker and the lock.
	Client redis.UniversalClient
	// JS reads the stream's info.
	JS jetstream.JetStream
	// Stream names the stream; its MaxAge (0: 7 days, as EnsureStream) is the window re-driven.
	Stream StreamSpec
	// Redrive re-emits, through the service's event streams in Redis, the event of the current
	// state of every entity changed since since (and of every open one), and returns how many
	// it emitted. It must write each event in one step with a check that the entity is still at
	// the version the event names, so a re-driven event never follows a newer one.
	Redrive func(ctx context.Context, since time.Time) (int, error)
	// Interval is the time between two checks; 0 means 30s.
	Interval time.Duration
	// Logger receives the re-drives (error level: each is a stream that was lost) and retried
	// failures; nil discards them.
	Logger *slog.Logger

	nudge                        chan struct{}
	redrives, redriven, failures atomic.Int64
	// lastCreated is the creation time this replica last found recorded (a string), so a check
	// of an unchanged stream costs one stream info and no Redis read.
	lastCreated atomic.Value
}

// MarkerKey is the Redis key holding the creation time of the stream a service last saw, in
// nanoseconds since the epoch.
func MarkerKey(stream string) string { return "pm:eventbus:{stream:" + stream + "}:created" }

// LockKey is the Redis key a replica holds while it re-drives a stream.
func LockKey(stream string) string { return "pm:eventbus:{stream:" + stream + "}:redrive" }

// markScript records a stream's creation time if the marker still holds what the caller read.
// KEYS[1] marker; ARGV[1] the value read ("" for none), ARGV[2] the new value.
// Returns 1 when written, 0 when another replica changed the marker meanwhile.
var markScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
`)

// Stats reports the re-drives run and the events they emitted, for metrics and tests.
func (r *Redriver) Stats() (redrives, events int64) { return r.redrives.Load(), r.redriven.Load() }

// Nudge asks for a check now, e.g. after the relay re-created the stream. It never blocks.
func (r *Redriver) Nudge() {
	if r.nudge == nil {
		return
	}
	select {
	case r.nudge <- struct{}{}:
	default:
	}
}

// Collector exports the counters to Prometheus with constLabels:
// postamt_eventbus_redrives_total, postamt_eventbus_redriven_events_total and
// postamt_eventbus_redrive_failures_total.
func (r *Redriver) Collector(constLabels prometheus.Labels) prometheus.Collector {
	return redriveCollector{r: r, descs: [3]*prometheus.Desc{
		prometheus.NewDesc("postamt_eventbus_redrives_total", "Re-drives of a JetStream stream found re-created: each is a stream that was lost.", nil, constLabels),
		prometheus.NewDesc("postamt_eventbus_redriven_events_total", "Events re-emitted from the service's records into a re-created stream.", nil, constLabels),
		prometheus.NewDesc("postamt_eventbus_redrive_failures_total", "Checks or re-drives that failed and are retried at the next check.", nil, constLabels),
	}}
}

type redriveCollector struct {
	r     *Redriver
	descs [3]*prometheus.Desc
}

func (c redriveCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c redriveCollector) Collect(ch chan<- prometheus.Metric) {
	runs, events := c.r.Stats()
	for i, v := range [3]int64{runs, events, c.r.failures.Load()} {
		ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.CounterValue, float64(v))
	}
}

// Init prepares Nudge; call it before the Redriver is shared (Run calls it too).
func (r *Redriver) Init() {
	if r.nudge == nil {
		r.nudge = make(chan struct{}, 1)
	}
}

// Run checks at once and then every Interval or Nudge until ctx ends, and returns nil then.
// Failures are logged and retried at the next check.
func (r *Redriver) Run(ctx context.Context) error {
	if r.Client == nil || r.JS == nil || r.Stream.Name == "" || r.Redrive == nil {
		return errors.New("redriver: Client, JS, Stream.Name and Redrive are required")
	}
	r.Init()
	interval := r.Interval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := r.Check(ctx); err != nil && ctx.Err() == nil {
			r.failures.Add(1)
			r.logger().Warn("redrive: check failed; retrying", "stream", r.Stream.Name, "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-r.nudge:
		}
	}
}

func (r *Redriver) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// Check compares the stream's creation time with the marker once and re-drives when they differ.
// It reports whether it re-drove. A missing stream is not an error: whoever publishes next
// re-creates it, and a later check re-drives.
func (r *Redriver) Check(ctx context.Context) (bool, error) {
	// The marker and the lock are the Redriver's own bookkeeping: losing a write in a failover
	// costs one more re-drive, which the duplicate window and the consumers absorb.
	ctx = redisx.WithoutReplicaAcks(ctx)
	st, err := r.JS.Stream(ctx, r.Stream.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stream %s: %w", r.Stream.Name, err)
	}
	created := strconv.FormatInt(st.CachedInfo().Created.UnixNano(), 10)
	if last, _ := r.lastCreated.Load().(string); last == created {
		return false, nil // this replica already saw this stream, recorded or re-driven
	}
	key := MarkerKey(r.Stream.Name)
	seen, err := r.Client.Get(ctx, key).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("read the stream marker: %w", err)
	}
	if seen == created {
		r.lastCreated.Store(created)
		return false, nil
	}
	if seen == "" {
		// The first sight of the stream: nothing to re-drive, since nothing was lost that this
		// deployment knows of.
		if _, err := markScript.Run(ctx, r.Client, []string{key}, "", created).Result(); err != nil {
			return false, fmt.Errorf("record the stream marker: %w", err)
		}
		return false, nil
	}

	lock := LockKey(r.Stream.Name)
	token := strconv.FormatInt(time.Now().UnixNano(), 36)
	ok, err := r.Client.SetNX(ctx, lock, token, time.Minute).Result()
	if err != nil {
		return false, fmt.Errorf("take the re-drive lock: %w", err)
	}
	if !ok {
		return false, nil // another replica re-drives; the next check sees the marker it writes
	}
	defer func() {
		_ = releaseScript.Run(context.WithoutCancel(ctx), r.Client, []string{lock}, token).Err()
	}()
	// Keep the lock while the re-drive lasts; it expires a minute after this replica died.
	stopRenew := make(chan struct{})
	defer close(stopRenew)
	go func() {
		t := time.NewTicker(20 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopRenew:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				_ = leaseScript.Run(ctx, r.Client, []string{lock}, token, time.Minute.Milliseconds()).Err()
			}
		}
	}()

	maxAge := r.Stream.MaxAge
	if maxAge <= 0 {
		maxAge = 7 * 24 * time.Hour
	}
	since := time.Now().Add(-maxAge)
	r.logger().Error("redrive: the stream was re-created since this service last saw it; re-emitting the current state of everything changed within its age",
		"stream", r.Stream.Name, "max_age", maxAge.String())
	began := time.Now()
	n, err := r.Redrive(ctx, since)
	r.redriven.Add(int64(n))
	if err != nil {
		return false, fmt.Errorf("re-drive %s after %d events: %w", r.Stream.Name, n, err)
	}
	r.redrives.Add(1)
	if _, err := markScript.Run(ctx, r.Client, []string{key}, seen, created).Result(); err != nil {
		return true, fmt.Errorf("record the stream marker: %w", err)
	}
	r.lastCreated.Store(created)
	r.logger().Warn("redrive: done", "stream", r.Stream.Name, "events", n, "took", time.Since(began).String())
	return true, nil
}
