// Package app wires the mailbox service: the domain over its Redis store, the gRPC API, the event
// relay and the sent-view consumer. cmd/postamt runs it alone (`postamt serve mailbox`) or with
// the rest of the suite (`postamt up`); the dependencies it shares with other services are passed
// in, so one process can run them all on one Redis and one NATS connection.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/gauges"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/redisx"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/mailbox/internal/events"
	"github.com/postamt/postamt/services/mailbox/internal/grpcapi"
	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
	"github.com/postamt/postamt/services/mailbox/internal/redisstore"
)

// Name is the service's name in logs, metrics and service credentials.
const Name = "mailbox"

// Config is the mailbox service's own configuration; the shared part (addresses, Redis, NATS,
// auth) is config.Common, read by the caller.
type Config struct {
	// RelayBatch is how many events the relay publishes per round.
	RelayBatch int `env:"MAILBOX_RELAY_BATCH, default=256" desc:"events the relay publishes to JetStream per round"`
	// RelayClaimIdle is how long an event may stay unacknowledged by a relay before another claims it.
	RelayClaimIdle time.Duration `env:"MAILBOX_RELAY_CLAIM_IDLE, default=30s" desc:"idle time after which another relay takes over a crashed relay's pending events"`
	// SentView turns the EmailSent consumer on; off only for a replica that must not consume.
	SentView bool `env:"MAILBOX_SENT_VIEW, default=true" desc:"consume the outbox's EmailSent events into the sent view"`
	// GrantCacheTTL bounds how long a replica keeps the answers to the send question it read
	// (redisstore.Options.GrantTTL): they are dropped by the replica's own writes at once and by
	// the tenant's events from the other replicas within the relay's latency, so this is the
	// staleness left when events are late. 0 turns the cache off.
	GrantCacheTTL time.Duration `env:"MAILBOX_GRANT_CACHE_TTL, default=5s" desc:"longest time a replica may answer CheckSend from a grant another replica changed while its events were late (0: no cache)"`
}

// Validate checks the values no default can fix.
func (c *Config) Validate() error {
	var errList []error
	if c.RelayBatch < 1 || c.RelayBatch > 10000 {
		errList = append(errList, fmt.Errorf("MAILBOX_RELAY_BATCH must be between 1 and 10000, got %d", c.RelayBatch))
	}
	if c.RelayClaimIdle < time.Second {
		errList = append(errList, fmt.Errorf("MAILBOX_RELAY_CLAIM_IDLE must be at least 1s, got %s", c.RelayClaimIdle))
	}
	if c.GrantCacheTTL < 0 || c.GrantCacheTTL > time.Minute {
		errList = append(errList, fmt.Errorf("MAILBOX_GRANT_CACHE_TTL must be between 0 and 1m, got %s", c.GrantCacheTTL))
	}
	return errors.Join(errList...)
}

// Deps are what the mailbox service shares with its process.
type Deps struct {
	Logger   *slog.Logger
	Redis    redis.UniversalClient
	JS       jetstream.JetStream
	Verifier *auth.Verifier
	Metrics  *prometheus.Registry
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Server holds the options of the gRPC server other than what the service sets itself.
	Server grpcserver.Options
	// StreamReplicas is the replica count of the event streams this service ensures
	// (NATS_STREAM_REPLICAS; 0 leaves it to eventbus.EnsureStream's default).
	StreamReplicas int
	// Partitions is how many partitions the mailbox spreads its tenants over (REDIS_PARTITIONS;
	// 0 means redisx.DefaultPartitions). Run refuses data written with another count.
	Partitions int
}

// App is a wired mailbox service.
type App struct {
	cfg    Config
	deps   Deps
	svc    *mailbox.Service
	store  *redisstore.Store
	server *grpcserver.Server
	relay  *eventbus.Relay
	// lag samples the relay's backlog and the sent view's consumer lag for /metrics.
	lag *gauges.Sampler
}

// New wires the service; nothing runs until Run.
func New(cfg Config, deps Deps) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := redisx.CheckPartitionCount(deps.Partitions); err != nil {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	store := redisstore.New(deps.Redis, redisstore.Options{Partitions: deps.Partitions, GrantTTL: cfg.GrantCacheTTL, Now: deps.Now})
	svc := mailbox.New(store, mailbox.Options{Now: deps.Now})
	a := &App{cfg: cfg, deps: deps, svc: svc, store: store}
	handler := grpcapi.New(svc)

	opts := deps.Server
	opts.Name = append(opts.Name, mailboxv1.MailboxService_ServiceDesc.ServiceName)
	opts.Logger = deps.Logger
	opts.Verifier = deps.Verifier
	opts.Metrics = deps.Metrics
	opts.Readiness = append(opts.Readiness, grpcserver.Check{Name: "redis", Probe: redisx.Probe(deps.Redis)})
	opts.Register = func(s *grpc.Server) { mailboxv1.RegisterMailboxServiceServer(s, handler) }
	srv, err := grpcserver.New(opts)
	if err != nil {
		return nil, fmt.Errorf("mailbox grpc server: %w", err)
	}
	a.server = srv
	a.relay = &eventbus.Relay{
		Client:  deps.Redis,
		JS:      deps.JS,
		Streams: store.EventStreams(),
		Group:   "relay",
		// Consumer is left to the relay: the host name, i.e. the pod name on Kubernetes.
		BatchSize: cfg.RelayBatch,
		ClaimIdle: cfg.RelayClaimIdle,
		Logger:    deps.Logger,
		Stream:    eventbus.StreamSpec{Name: events.StreamName, Subjects: events.StreamSubjects, Replicas: deps.StreamReplicas},
	}
	if deps.Metrics != nil {
		var durables []eventbus.Durable
		if cfg.SentView {
			durables = append(durables, eventbus.Durable{Stream: events.OutboxStreamName, Name: events.SentViewDurable})
		}
		a.lag = eventbus.LagSampler(Name, a.relay, deps.JS, deps.Logger, durables...)
		for _, c := range []prometheus.Collector{a.relay.Collector(prometheus.Labels{"service": Name}), a.lag, grantCacheCollector(store)} {
			if err := deps.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("register relay metrics: %w", err)
			}
		}
	}
	return a, nil
}

// Run serves on lis and runs the relay and the sent-view consumer until ctx ends, then drains the
// server first and stops the background work after it.
func (a *App) Run(ctx context.Context, lis net.Listener) error {
	// First, before the relay creates any stream: data of another partition count must not be
	// read or written with this one.
	if err := a.store.CheckPartitions(ctx); err != nil {
		return fmt.Errorf("mailbox: %w", err)
	}
	if err := eventbus.EnsureStream(ctx, a.deps.JS, a.relay.Stream); err != nil {
		return fmt.Errorf("ensure mailbox stream: %w", err)
	}
	if err := eventbus.EnsureStream(ctx, a.deps.JS, eventbus.StreamSpec{Name: events.OutboxStreamName, Subjects: events.OutboxStreamSubjects, Replicas: a.deps.StreamReplicas}); err != nil {
		return fmt.Errorf("ensure outbox stream: %w", err)
	}
	bg, bgCtx := errgroup.WithContext(context.WithoutCancel(ctx))
	stopBG, cancelBG := context.WithCancel(bgCtx)
	defer cancelBG()
	bg.Go(func() error { return a.relay.Run(stopBG) })
	bg.Go(func() error { return a.store.FollowGrants(stopBG, a.deps.JS, events.StreamName, a.deps.Logger) })
	if a.lag != nil {
		bg.Go(func() error { return a.lag.Run(stopBG) })
	}
	if a.cfg.SentView {
		bg.Go(func() error {
			return eventbus.Consume(stopBG, a.deps.JS, eventbus.ConsumerSpec{
				Stream:         events.OutboxStreamName,
				Durable:        events.SentViewDurable,
				FilterSubjects: []string{events.EmailSentSubject},
				// Messages JetStream pushed into a connection that died (a network cut) come
				// again only after AckWait; the handler is one Redis script, so 5 s keeps the
				// sent view at most that late after NATS is back instead of the default 30 s
				// (faults TestNATSCutOffUnderLoad). A slower handler is delivered twice, which
				// the idempotent view absorbs.
				AckWait: 5 * time.Second,
			}, events.SentViewHandler(a.svc))
		})
	}
	serveErr := a.server.Serve(ctx, lis)
	cancelBG()
	bgErr := bg.Wait()
	if errors.Is(bgErr, context.Canceled) {
		bgErr = nil
	}
	return errors.Join(serveErr, bgErr)
}

// grantCacheCollector exports the send-grant cache's hits and misses, so an operator sees what
// share of CheckSend reaches Redis (a low hit rate under steady load means the tenant's events
// keep dropping it, or the TTL is short for the traffic).
func grantCacheCollector(store *redisstore.Store) prometheus.Collector {
	return grantCache{
		store:  store,
		hits:   prometheus.NewDesc("postamt_mailbox_grant_cache_hits_total", "CheckSend answers served from the replica's send-grant cache.", nil, nil),
		misses: prometheus.NewDesc("postamt_mailbox_grant_cache_misses_total", "CheckSend answers read from Redis (cache off, not following events yet, expired or dropped).", nil, nil),
	}
}

type grantCache struct {
	store        *redisstore.Store
	hits, misses *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (g grantCache) Describe(ch chan<- *prometheus.Desc) { ch <- g.hits; ch <- g.misses }

// Collect implements prometheus.Collector.
func (g grantCache) Collect(ch chan<- prometheus.Metric) {
	h, m := g.store.GrantCacheStats()
	ch <- prometheus.MustNewConstMetric(g.hits, prometheus.CounterValue, float64(h))
	ch <- prometheus.MustNewConstMetric(g.misses, prometheus.CounterValue, float64(m))
}
