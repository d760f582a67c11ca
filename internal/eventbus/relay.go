package eventbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/redisx"
)

// Relay publishes the entries of Redis streams to JetStream: at least once, in stream order,
// deleting an entry only after JetStream acknowledged it.
//
// Order needs one publisher per stream at a time, so a relay publishes a stream only while it
// holds the stream's lease (LeaseKey, a Redis key with a TTL of ClaimIdle, renewed every
// ClaimIdle/3). Any number of replicas may run the same Relay: one holds each stream, the others
// stand by and take a stream over when its holder stops (at once, since a stopping relay releases
// its leases) or dies (when the lease expires, ClaimIdle later). Reads are fenced by the lease in
// one script, so a relay that lost its lease cannot read further entries.
//
// Entries a relay read but did not finish stay pending in the consumer group under its Consumer
// name. The next holder first claims them (XAUTOCLAIM) and publishes them before anything newer;
// the ones JetStream already stored come back as duplicates of their Nats-Msg-Id and are
// dropped there. It checks again every ClaimIdle for entries left pending by others.
//
// Publishing is pipelined: a batch is published asynchronously on one NATS connection and the
// relay waits for every PubAck; then it acknowledges and deletes the acknowledged prefix of each
// stream in one script per stream. On a failure the rest stays pending and is published again,
// from the first unacknowledged entry, after a backoff. If the NATS connection drops or
// reconnects during a batch, the relay stops publishing that batch, so a later entry cannot
// overtake an earlier one that was lost with the connection.
//
// Redis connections: with a *redis.ClusterClient the relay runs one reader per stream, each
// blocking one connection of its node's pool while idle; with any other client one reader serves
// all streams on one connection. Size PoolSize accordingly.
type Relay struct {
	// Client is the service's Redis.
	Client redis.UniversalClient
	// JS publishes. Create it with jetstream.WithPublishAsyncTimeout, so acknowledgements that
	// never come do not pile up in the client.
	JS jetstream.JetStream
	// Streams are the Redis stream keys to publish, e.g. every partition's events stream.
	Streams []string
	// Group is the consumer group shared by every relay of a service; "" means "relay".
	Group string
	// Consumer names this relay in the group; "" means the host name (the pod name on
	// Kubernetes). Correctness does not depend on it being unique, but it makes XINFO readable.
	Consumer string
	// BatchSize bounds the entries read per stream and round; 0 means 256, at most 1000.
	BatchSize int
	// Block is the longest one wait for new entries lasts; 0 means 2s. New entries end it at once.
	Block time.Duration
	// ClaimIdle is the lease TTL: how long a dead relay's streams wait before another takes them
	// over, and the idle time after which pending entries of others are claimed; 0 means 30s.
	// Keep it well above PublishTimeout: a relay stuck in one publish longer than its lease
	// loses the stream (safely, but both publish the same entries for a while).
	ClaimIdle time.Duration
	// PublishTimeout bounds the wait for a batch's acknowledgements; 0 means 10s.
	PublishTimeout time.Duration
	// Logger receives warnings about retried failures; nil discards them.
	Logger *slog.Logger
	// Stream is the JetStream stream the relay publishes into. When a publish finds no stream
	// (an operator deleted it, or NATS lost its store), the relay re-creates it with
	// EnsureStream and publishes again, so events written since flow without a restart of the
	// service. Events JetStream held before the loss are not re-created by the relay: a
	// Redriver re-emits them from the service's records. A zero Stream (no
	// Name) leaves the relay retrying until someone else creates the stream.
	Stream StreamSpec
	// OnRecreated, when set, is called after the relay re-created Stream, e.g. a Redriver's
	// Nudge, so the events the lost stream held are re-driven without waiting for a check.
	OnRecreated func()

	published, reclaimed, failures, dropped, recreated atomic.Int64
}

// Stats reports what the relay did, for metrics and tests: events JetStream acknowledged, entries
// taken over from other relays, and rounds that failed and were retried.
func (r *Relay) Stats() (published, reclaimed, failures int64) {
	return r.published.Load(), r.reclaimed.Load(), r.failures.Load()
}

// Dropped counts malformed entries (no id or subject) the relay deleted without publishing: a bug
// in the service that wrote them, logged at error level.
func (r *Relay) Dropped() int64 { return r.dropped.Load() }

// Recreated counts the times the relay found its stream missing and re-created it: each is a
// loss of the events the stream held, which an operator wants to know of.
func (r *Relay) Recreated() int64 { return r.recreated.Load() }

// Collector exports the relay's counters to Prometheus with constLabels (e.g. the service):
// postamt_relay_{published,reclaimed,failures,dropped,stream_recreated}_total. An alert on
// failures finds a NATS outage or an event JetStream refuses; one on dropped finds a service
// writing bad entries; one on stream_recreated finds events lost with a deleted stream.
func (r *Relay) Collector(constLabels prometheus.Labels) prometheus.Collector {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("postamt_relay_"+name+"_total", help, nil, constLabels)
	}
	return relayCollector{r: r, descs: [5]*prometheus.Desc{
		desc("published", "Events the relay published to JetStream."),
		desc("reclaimed", "Stream entries taken over from another relay."),
		desc("failures", "Relay rounds that failed and were retried."),
		desc("dropped", "Malformed stream entries deleted without publishing."),
		desc("stream_recreated", "Times the relay found its JetStream stream missing and re-created it; the events the stream held were lost with it."),
	}}
}

type relayCollector struct {
	r     *Relay
	descs [5]*prometheus.Desc
}

func (c relayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c relayCollector) Collect(ch chan<- prometheus.Metric) {
	p, rc, f := c.r.Stats()
	for i, v := range [5]int64{p, rc, f, c.r.Dropped(), c.r.Recreated()} {
		ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.CounterValue, float64(v))
	}
}

// LeaseKey is the Redis key holding the relay lease of a stream: the holder's token, with a TTL.
// It hashes to the stream's Redis Cluster slot (it reuses the stream's hash tag, or makes the
// whole stream key its tag), so the fenced read can name both keys in one script. The relay
// accepts only stream keys for which that works: with a hash tag, or without braces.
func LeaseKey(stream string) string {
	if hasHashTag(stream) {
		return stream + ":relay-lease"
	}
	return "{" + stream + "}:relay-lease"
}

// hasHashTag reports whether Redis Cluster hashes only a part of key: a non-empty {...}.
func hasHashTag(key string) bool {
	i := strings.IndexByte(key, '{')
	if i < 0 {
		return false
	}
	return strings.IndexByte(key[i+1:], '}') > 0
}

// Scripts. Each touches one stream and its lease, which share a slot.
var (
	// leaseScript acquires or renews a lease.
	// KEYS[1] lease; ARGV[1] token, ARGV[2] TTL in ms.
	// Returns 1 renewed, 2 newly acquired, 0 held by another relay.
	leaseScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
`)

	// releaseScript gives a lease up if it is still ours.
	// KEYS[1] lease; ARGV[1] token. Returns 1 if released.
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

	// readScript reads entries for the group only while the lease is ours (no BLOCK: scripts do
	// not block; the relay waits with XREAD outside). It returns this consumer's pending entries
	// first, so a read is repeatable: entries read but not acknowledged (a failed publish, a
	// reply lost with a connection and the command retried by the client, a takeover) come again
	// before anything newer, and nothing is stranded in the pending list.
	// KEYS[1] lease, KEYS[2] stream; ARGV[1] token, ARGV[2] group, ARGV[3] consumer,
	// ARGV[4] count.
	// Returns {0} without the lease; {1, entries} with entries as XREADGROUP gives them (a
	// deleted pending entry has nil fields); {2, last-generated-id} when there is nothing to
	// read, the id after which new entries will appear.
	readScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end
local own = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', KEYS[2], '0')
if own and #own[1][2] > 0 then
  return {1, own[1][2]}
end
local res = redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', KEYS[2], '>')
if res and #res[1][2] > 0 then
  return {1, res[1][2]}
end
local info = redis.call('XINFO', 'STREAM', KEYS[2])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then
    return {2, info[i + 1]}
  end
end
return {2, '0-0'}
`)

	// ackScript acknowledges and deletes published entries in one step, so no acknowledged entry
	// stays in the stream.
	// KEYS[1] stream; ARGV[1] group, ARGV[2..] entry ids. Returns the number deleted.
	ackScript = redis.NewScript(`
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
`)
)

// relayConfig is a Relay's settings with defaults applied; Run never writes the Relay's fields.
type relayConfig struct {
	group, consumer, token  string
	batch                   int
	block, claimIdle, renew time.Duration
	publishTimeout          time.Duration
	log                     *slog.Logger
}

func (r *Relay) config() (relayConfig, error) {
	c := relayConfig{
		group: r.Group, consumer: r.Consumer, batch: r.BatchSize, block: r.Block,
		claimIdle: r.ClaimIdle, publishTimeout: r.PublishTimeout, log: r.Logger,
	}
	switch {
	case r.Client == nil || r.JS == nil:
		return c, errors.New("relay: Client and JS are required")
	case len(r.Streams) == 0:
		return c, errors.New("relay: no streams")
	case c.batch < 0 || c.batch > 1000:
		return c, fmt.Errorf("relay: BatchSize %d is outside 1..1000", c.batch)
	}
	seen := map[string]bool{}
	for _, s := range r.Streams {
		if s == "" || seen[s] {
			return c, fmt.Errorf("relay: stream key %q is empty or repeated", s)
		}
		if !hasHashTag(s) && strings.ContainsAny(s, "{}") {
			return c, fmt.Errorf("relay: stream key %q has braces but no hash tag; use {tag} or no braces", s)
		}
		seen[s] = true
	}
	if c.group == "" {
		c.group = "relay"
	}
	if c.consumer == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "relay"
		}
		c.consumer = host
	}
	if c.batch == 0 {
		c.batch = 256
	}
	if c.block <= 0 {
		c.block = 2 * time.Second
	}
	if c.claimIdle <= 0 {
		c.claimIdle = 30 * time.Second
	}
	c.renew = c.claimIdle / 3
	if c.publishTimeout <= 0 {
		c.publishTimeout = 10 * time.Second
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	c.token = c.consumer + "/" + hex.EncodeToString(nonce[:])
	return c, nil
}

// Run publishes until ctx ends, then releases its leases and returns nil. Failures of Redis or
// NATS are logged and retried with backoff; only an invalid configuration returns an error.
func (r *Relay) Run(ctx context.Context) error {
	cfg, err := r.config()
	if err != nil {
		return err
	}
	// The relay's own writes (stream reads into the pending list, leases, acknowledgements) may
	// roll back in a failover at the cost of publishing an entry again, which JetStream drops as
	// a duplicate: they need no replica's confirmation. The events themselves were confirmed with
	// the change that wrote them.
	ctx = redisx.WithoutReplicaAcks(ctx)
	var sets [][]string
	if _, cluster := r.Client.(*redis.ClusterClient); cluster {
		for _, s := range r.Streams {
			sets = append(sets, []string{s})
		}
	} else {
		sets = [][]string{r.Streams}
	}
	var wg sync.WaitGroup
	for _, keys := range sets {
		w := &worker{r: r, cfg: cfg}
		for _, k := range keys {
			w.streams = append(w.streams, &streamState{key: k, lease: LeaseKey(k)})
		}
		wg.Go(func() { w.run(ctx) })
	}
	wg.Wait()
	return nil
}

// streamState is what a worker knows about one of its streams.
type streamState struct {
	key, lease string
	held       bool
	// drained: the last read found nothing; lastID is where new entries will appear.
	drained bool
	lastID  string
}

// worker serves a set of streams that one Redis command may name together.
type worker struct {
	r         *Relay
	cfg       relayConfig
	streams   []*streamState
	backoff   backoff
	lastClaim time.Time
}

func (w *worker) run(ctx context.Context) {
	defer w.release(context.WithoutCancel(ctx))
	var nextLease time.Time
	for ctx.Err() == nil {
		if !time.Now().Before(nextLease) {
			if err := w.leases(ctx); err != nil {
				w.fail(ctx, "renew leases", err)
				continue
			}
			// A stream held by another relay is asked for again soon, so a standby takes over
			// within Block once the holder releases it.
			next := w.cfg.renew
			if len(w.held()) < len(w.streams) {
				next = min(next, w.cfg.block)
			}
			nextLease = time.Now().Add(next)
		}
		held := w.held()
		if len(held) == 0 {
			wait(ctx, time.Until(nextLease))
			continue
		}
		if time.Since(w.lastClaim) >= w.cfg.claimIdle {
			if err := w.reclaim(ctx, held, w.cfg.claimIdle); err != nil {
				w.fail(ctx, "reclaim", err)
				continue
			}
			w.lastClaim = time.Now()
		}
		batches, err := w.read(ctx, undrained(held))
		if err != nil {
			w.fail(ctx, "read", err)
			continue
		}
		if len(batches) > 0 {
			if err := w.publish(ctx, batches); err != nil {
				if ctx.Err() == nil {
					w.fail(ctx, "publish", err)
					w.recreate(ctx, err)
				}
				continue
			}
			w.backoff.reset()
			continue
		}
		w.backoff.reset()
		if err := w.await(ctx, held, min(w.cfg.block, time.Until(nextLease))); err != nil {
			w.fail(ctx, "wait for entries", err)
		}
	}
}

// undrained returns the streams that may have entries to read: only those are read, so a round
// costs Redis one script per stream with news, not one per stream (a service may have hundreds,
// one per partition).
func undrained(streams []*streamState) []*streamState {
	var out []*streamState
	for _, s := range streams {
		if !s.drained {
			out = append(out, s)
		}
	}
	return out
}

func (w *worker) held() []*streamState {
	var out []*streamState
	for _, s := range w.streams {
		if s.held {
			out = append(out, s)
		}
	}
	return out
}

// leases renews the leases held and tries to acquire the others. A stream newly acquired gets
// its consumer group ensured and the entries its previous holder left pending claimed at once:
// the lease guarantees that holder reads no more, and what it published already is deduplicated.
func (w *worker) leases(ctx context.Context) error {
	ttl := w.cfg.claimIdle.Milliseconds()
	cmds := make([]*redis.Cmd, len(w.streams))
	var acquired []string
	defer func() { w.logAcquired(acquired) }() // those acquired before an error too
	err := w.pipelined(ctx, func(p redis.Pipeliner) {
		for i, s := range w.streams {
			cmds[i] = leaseScript.EvalSha(ctx, p, []string{s.lease}, w.cfg.token, ttl)
		}
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("lease: %w", err)
	}
	for i, s := range w.streams {
		res, err := cmds[i].Int()
		if err != nil {
			return fmt.Errorf("lease %s: %w", s.lease, err)
		}
		switch {
		case res == 0:
			if s.held {
				w.cfg.log.Warn("relay: lost the lease of a stream; another relay publishes it now", "stream", s.key)
			}
			s.held = false
		case res == 2 || !s.held:
			// Newly acquired, or acquired before but the takeover failed: (re)do it under the
			// lease before reading.
			s.held = false
			if err := w.takeOver(ctx, s); err != nil {
				return err
			}
			s.held = true
			acquired = append(acquired, s.key)
		}
	}
	return nil
}

// logAcquired writes one line for the streams a round of leases acquired (a service has one per
// partition: one line each would be dozens at every start): how many, of how many held now, and
// which (an operator, and the fault suite, tell from it which process publishes a stream: the
// lease in Redis names only the host).
func (w *worker) logAcquired(acquired []string) {
	if len(acquired) == 0 {
		return
	}
	held := 0
	for _, s := range w.streams {
		if s.held {
			held++
		}
	}
	w.cfg.log.Info("relay: publishing streams", "acquired", len(acquired), "held", held, "of", len(w.streams),
		"consumer", w.cfg.consumer, "streams", acquired)
}

func (w *worker) takeOver(ctx context.Context, s *streamState) error {
	if err := w.ensureGroup(ctx, s.key); err != nil {
		return err
	}
	if err := w.reclaim(ctx, []*streamState{s}, 0); err != nil {
		return err
	}
	// Tidy the group: relays that ran before (old pod names) and own nothing are removed.
	consumers, err := w.r.Client.XInfoConsumers(ctx, s.key, w.cfg.group).Result()
	if err != nil {
		return fmt.Errorf("XINFO CONSUMERS %s: %w", s.key, err)
	}
	for _, c := range consumers {
		if c.Name != w.cfg.consumer && c.Pending == 0 {
			if err := w.r.Client.XGroupDelConsumer(ctx, s.key, w.cfg.group, c.Name).Err(); err != nil {
				return fmt.Errorf("XGROUP DELCONSUMER %s %s: %w", s.key, c.Name, err)
			}
		}
	}
	s.drained = false
	return nil
}

func (w *worker) ensureGroup(ctx context.Context, stream string) error {
	// From "0": entries written before any relay ran are published too.
	err := w.r.Client.XGroupCreateMkStream(ctx, stream, w.cfg.group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("XGROUP CREATE %s %s: %w", stream, w.cfg.group, err)
	}
	return nil
}

// reclaim moves to this consumer the entries other consumers left pending for minIdle, so the
// next read returns them before anything newer.
func (w *worker) reclaim(ctx context.Context, streams []*streamState, minIdle time.Duration) error {
	for _, s := range streams {
		sum, err := w.r.Client.XPending(ctx, s.key, w.cfg.group).Result()
		if err != nil {
			if isNoGroup(err) {
				if err := w.ensureGroup(ctx, s.key); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("XPENDING %s: %w", s.key, err)
		}
		others := sum.Count - sum.Consumers[w.cfg.consumer]
		if others <= 0 {
			continue
		}
		var claimed int64
		for start := "0-0"; ; {
			ids, next, err := w.r.Client.XAutoClaimJustID(ctx, &redis.XAutoClaimArgs{
				Stream: s.key, Group: w.cfg.group, Consumer: w.cfg.consumer,
				MinIdle: minIdle, Start: start, Count: int64(w.cfg.batch),
			}).Result()
			if err != nil {
				return fmt.Errorf("XAUTOCLAIM %s: %w", s.key, err)
			}
			claimed += int64(len(ids))
			if next == "0-0" || next == "" {
				break
			}
			start = next
		}
		// Our own entries are claimed along with the others'; count only the others'.
		claimed = min(claimed, others)
		if claimed > 0 {
			w.r.reclaimed.Add(claimed)
			w.cfg.log.Info("relay: took over pending entries", "stream", s.key, "entries", claimed)
			s.drained = false
		}
	}
	return nil
}

// entry is one stream entry on its way to JetStream.
type entry struct {
	id   string
	msg  *nats.Msg // nil: nothing to publish (deleted or malformed); acknowledge it
	fut  jetstream.PubAckFuture
	done bool // JetStream has it, or there is nothing to publish
}

type streamBatch struct {
	s       *streamState
	entries []*entry
}

// read fetches the next entries of every held stream in one pipeline of fenced reads.
func (w *worker) read(ctx context.Context, held []*streamState) ([]*streamBatch, error) {
	cmds := make([]*redis.Cmd, len(held))
	err := w.pipelined(ctx, func(p redis.Pipeliner) {
		for i, s := range held {
			cmds[i] = readScript.EvalSha(ctx, p, []string{s.lease, s.key},
				w.cfg.token, w.cfg.group, w.cfg.consumer, w.cfg.batch)
		}
	})
	if err != nil && !errors.Is(err, redis.Nil) && !isNoGroup(err) {
		return nil, fmt.Errorf("read: %w", err)
	}
	var out []*streamBatch
	var errs []error
	for i, s := range held {
		res, err := cmds[i].Slice()
		if err != nil {
			if isNoGroup(err) { // the stream or group vanished (a Redis restart without data)
				errs = append(errs, w.ensureGroup(ctx, s.key))
				continue
			}
			errs = append(errs, fmt.Errorf("read %s: %w", s.key, err))
			continue
		}
		kind, _ := res[0].(int64)
		switch {
		case kind == 0:
			w.cfg.log.Warn("relay: lost the lease of a stream; another relay publishes it now", "stream", s.key)
			s.held = false
		case kind == 1 && len(res) == 2:
			b, err := w.decode(s, res[1])
			if err != nil {
				errs = append(errs, err)
				continue
			}
			s.drained = false
			out = append(out, b)
		case kind == 2 && len(res) == 2:
			s.drained, s.lastID = true, fmt.Sprint(res[1])
		default:
			errs = append(errs, fmt.Errorf("read %s: unexpected reply %v", s.key, res))
		}
	}
	return out, errors.Join(errs...)
}

// decode turns the XREADGROUP entries of a script reply into messages.
func (w *worker) decode(s *streamState, raw any) (*streamBatch, error) {
	items, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("read %s: entries are %T", s.key, raw)
	}
	b := &streamBatch{s: s}
	for _, it := range items {
		pair, ok := it.([]any)
		if !ok || len(pair) != 2 {
			return nil, fmt.Errorf("read %s: malformed entry %v", s.key, it)
		}
		id := fmt.Sprint(pair[0])
		e := &entry{id: id, done: true}
		if pair[1] != nil { // nil: deleted after publishing, only the acknowledgement was missing
			fields, _ := pair[1].([]any)
			msg, err := toNATS(fields)
			if err != nil {
				w.r.dropped.Add(1)
				w.cfg.log.Error("relay: dropping a malformed stream entry", "stream", s.key, "entry", id, "error", err)
			} else {
				e.msg, e.done = msg, false
			}
		}
		b.entries = append(b.entries, e)
	}
	return b, nil
}

// toNATS builds the JetStream message of an entry's field/value list.
func toNATS(fields []any) (*nats.Msg, error) {
	vals := make(map[string]string, len(fields)/2)
	for i := 0; i+1 < len(fields); i += 2 {
		k, _ := fields[i].(string)
		v, _ := fields[i+1].(string)
		vals[k] = v
	}
	id, subject := vals[FieldID], vals[FieldSubject]
	if id == "" || subject == "" {
		return nil, errors.New("entry lacks id or subject")
	}
	h := nats.Header{}
	h.Set(jetstream.MsgIDHeader, id)
	if t := vals[FieldTenant]; t != "" {
		h.Set(HeaderTenant, t)
	}
	if tp := vals[FieldTraceparent]; tp != "" {
		h[HeaderTraceparent] = []string{tp}
		if ts := vals[FieldTracestate]; ts != "" {
			h[HeaderTracestate] = []string{ts}
		}
	}
	return &nats.Msg{Subject: subject, Data: []byte(vals[FieldData]), Header: h}, nil
}

// errConnectionChanged stops a batch whose NATS connection dropped or was replaced.
var errConnectionChanged = errors.New("NATS connection lost or replaced during the batch")

// publish sends the batches asynchronously, waits for the acknowledgements, then acknowledges and
// deletes in Redis the prefix of each stream that JetStream has. It returns an error when any
// entry is left for the next round.
func (w *worker) publish(ctx context.Context, batches []*streamBatch) error {
	nc := w.r.JS.Conn()
	reconnects := nc.Stats().Reconnects
	var pubErr error
	opts := []jetstream.PublishOpt{jetstream.WithRetryAttempts(0), jetstream.WithStallWait(w.cfg.publishTimeout)}
publishing:
	for _, b := range batches {
		for _, e := range b.entries {
			if e.msg == nil {
				continue
			}
			// Everything of a batch goes over one connection, in order: if an entry was lost with
			// a connection, no later entry may reach JetStream on the next one.
			if nc.Status() != nats.CONNECTED || nc.Stats().Reconnects != reconnects {
				pubErr = errConnectionChanged
				break publishing
			}
			f, err := w.r.JS.PublishMsgAsync(e.msg, opts...)
			if err != nil {
				pubErr = fmt.Errorf("publish %s: %w", e.msg.Header.Get(jetstream.MsgIDHeader), err)
				break publishing
			}
			e.fut = f
		}
	}

	timeout := time.NewTimer(w.cfg.publishTimeout)
	defer timeout.Stop()
	var ackErr error
waiting:
	for _, b := range batches {
		for _, e := range b.entries {
			if e.fut == nil {
				continue
			}
			select {
			case <-e.fut.Ok():
				e.done = true
				w.r.published.Add(1)
			case err := <-e.fut.Err():
				if ackErr == nil {
					ackErr = fmt.Errorf("publish %s: %w", e.msg.Header.Get(jetstream.MsgIDHeader), err)
				}
			case <-timeout.C:
				ackErr = fmt.Errorf("no acknowledgement within %s", w.cfg.publishTimeout)
				break waiting
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}

	// Entries after a gap stay pending and come first in the next read.
	acked := make([][]string, len(batches))
	for i, b := range batches {
		gap := false
		for _, e := range b.entries {
			switch {
			case !e.done:
				gap = true
			case !gap:
				acked[i] = append(acked[i], e.id)
			case e.msg != nil:
				// JetStream stored it although an earlier entry failed: a reorder that the
				// connection check rules out on one server; possible in a cluster failover.
				w.cfg.log.Warn("relay: an entry reached JetStream before an earlier one that failed",
					"stream", b.s.key, "entry", e.id)
			}
		}
	}
	err := w.pipelined(ctx, func(p redis.Pipeliner) {
		for i, b := range batches {
			if len(acked[i]) == 0 {
				continue
			}
			args := make([]any, 0, 1+len(acked[i]))
			args = append(args, w.cfg.group)
			for _, id := range acked[i] {
				args = append(args, id)
			}
			ackScript.EvalSha(ctx, p, []string{b.s.key}, args...)
		}
	})
	if err != nil {
		// The entries stay pending and are published again: JetStream drops the duplicates.
		return errors.Join(pubErr, ackErr, fmt.Errorf("acknowledge: %w", err))
	}
	return errors.Join(pubErr, ackErr)
}

// await blocks until a held stream has entries it has not read, or d passes.
func (w *worker) await(ctx context.Context, held []*streamState, d time.Duration) error {
	if d < time.Millisecond {
		return nil
	}
	keys := make([]string, 0, 2*len(held))
	for _, s := range held {
		if !s.drained {
			return nil // more to read now
		}
		keys = append(keys, s.key)
	}
	for _, s := range held {
		keys = append(keys, s.lastID)
	}
	res, err := w.r.Client.XRead(ctx, &redis.XReadArgs{Streams: keys, Count: 1, Block: d}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		if ctx.Err() == nil {
			return fmt.Errorf("XREAD BLOCK: %w", err)
		}
		return nil
	}
	// Only the streams XREAD names have new entries; the others stay drained and are not read
	// again until they do (or a takeover or reclaim gives them pending entries).
	for _, r := range res {
		for _, s := range held {
			if s.key == r.Stream {
				s.drained = false
			}
		}
	}
	return nil
}

// recreate re-creates the relay's stream when err says JetStream has none for the subject
// (no stream answered the publish), so the next round publishes into it.
func (w *worker) recreate(ctx context.Context, err error) {
	if w.r.Stream.Name == "" || !errors.Is(err, jetstream.ErrNoStreamResponse) {
		return
	}
	if err := EnsureStream(ctx, w.r.JS, w.r.Stream); err != nil {
		w.cfg.log.Warn("relay: the stream is missing and could not be re-created; retrying", "stream", w.r.Stream.Name, "error", err)
		return
	}
	w.r.recreated.Add(1)
	w.cfg.log.Error("relay: the stream was missing and has been re-created; events it held before are gone unless the service re-drives them", "stream", w.r.Stream.Name)
	if w.r.OnRecreated != nil {
		w.r.OnRecreated()
	}
}

// release gives up the leases held, so a standby relay takes over without waiting ClaimIdle.
func (w *worker) release(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for _, s := range w.held() {
		if err := releaseScript.Run(ctx, w.r.Client, []string{s.lease}, w.cfg.token).Err(); err != nil {
			w.cfg.log.Warn("relay: could not release a lease; it expires by itself", "stream", s.key, "error", err)
		}
		s.held = false
	}
}

func (w *worker) fail(ctx context.Context, what string, err error) {
	w.r.failures.Add(1)
	d := w.backoff.next()
	w.cfg.log.Warn("relay: "+what+" failed; retrying", "error", err, "retry_in", d)
	wait(ctx, d)
}

// pipelined runs fill's commands in one round trip. Scripts go by EVALSHA; when Redis does not
// know them (first use, or a restart), they are loaded and the pipeline runs once more, which is
// safe because a script that is unknown did not run.
func (w *worker) pipelined(ctx context.Context, fill func(redis.Pipeliner)) error {
	run := func() error {
		_, err := w.r.Client.Pipelined(ctx, func(p redis.Pipeliner) error { fill(p); return nil })
		return err
	}
	err := run()
	if err == nil || !strings.Contains(err.Error(), "NOSCRIPT") {
		return err
	}
	for _, s := range []*redis.Script{leaseScript, readScript, ackScript} {
		if err := s.Load(ctx, w.r.Client).Err(); err != nil {
			return fmt.Errorf("load scripts: %w", err)
		}
	}
	return run()
}

func isNoGroup(err error) bool {
	return err != nil && strings.Contains(err.Error(), "NOGROUP")
}

// wait pauses for d or until ctx ends.
func wait(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// backoff doubles from 50ms to 5s.
type backoff struct{ d time.Duration }

func (b *backoff) next() time.Duration {
	if b.d == 0 {
		b.d = 50 * time.Millisecond
	} else {
		b.d = min(2*b.d, 5*time.Second)
	}
	return b.d
}

func (b *backoff) reset() { b.d = 0 }
