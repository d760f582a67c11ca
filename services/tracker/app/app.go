// Package app wires the tracker service: the rules over their Redis store, the gRPC API, the
// event relay, the outbox EmailSent consumer, the mailbox client with its event-invalidated
// cache, and the SMTP journaling endpoint. cmd/postamt runs it (`postamt serve tracker`,
// `postamt up`); the dependencies it shares with its process are passed in.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
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
	"github.com/postamt/postamt/internal/ids"
	"github.com/postamt/postamt/internal/redisx"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	"github.com/postamt/postamt/services/tracker/internal/events"
	"github.com/postamt/postamt/services/tracker/internal/grpcapi"
	"github.com/postamt/postamt/services/tracker/internal/journal"
	"github.com/postamt/postamt/services/tracker/internal/mailboxes"
	"github.com/postamt/postamt/services/tracker/internal/redisstore"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// Name is the service's name in logs, metrics and service credentials.
const Name = "tracker"

// Config is the tracker's own configuration; the shared part (addresses, Redis, NATS, auth) is
// config.Common, read by the caller.
type Config struct {
	MailboxAddr       string        `env:"TRACKER_MAILBOX_ADDR, default=127.0.0.1:9090" desc:"gRPC address of the mailbox service (sync kinds of mailboxes)"`
	SyncKindCacheTTL  time.Duration `env:"TRACKER_SYNC_KIND_CACHE_TTL, default=5m" desc:"how long a mailbox's sync kind is cached at most; mailbox events drop it at once"`
	DecisionRetention time.Duration `env:"TRACKER_DECISION_RETENTION, default=168h" desc:"how long the explanation of an untracked message is kept for ExplainTracking"`
	ConsumeSent       bool          `env:"TRACKER_CONSUME_SENT, default=true" desc:"consume the outbox's EmailSent events into tracking"`
	RelayBatch        int           `env:"TRACKER_RELAY_BATCH, default=256" desc:"events the relay publishes to JetStream per round"`
	RelayClaimIdle    time.Duration `env:"TRACKER_RELAY_CLAIM_IDLE, default=30s" desc:"idle time after which another relay takes over a crashed relay's pending events"`
	JournalAddr       string        `env:"TRACKER_JOURNAL_ADDR" desc:"listen address of the SMTP journaling endpoint (host:port); empty disables it"`
	JournalDomain     string        `env:"TRACKER_JOURNAL_DOMAIN, default=localhost" desc:"host name the journaling endpoint greets with"`
	JournalAddresses  string        `env:"TRACKER_JOURNAL_ADDRESSES" desc:"journal addresses, comma-separated address=tenant/mailbox/user (the journaled mailbox and the user whose option applies)"`
	JournalMaxBytes   int64         `env:"TRACKER_JOURNAL_MAX_BYTES, default=26214400" desc:"largest journal copy accepted, in bytes (larger ones get 552)"`
}

// ParseJournalAddresses reads TRACKER_JOURNAL_ADDRESSES: address=tenant/mailbox/user, separated
// by commas.
func ParseJournalAddresses(s string) (map[string]journal.Target, error) {
	out := map[string]journal.Target{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		addr, target, ok := strings.Cut(item, "=")
		parts := strings.Split(target, "/")
		addr = tracker.NormalizeAddress(addr)
		if !ok || !strings.Contains(addr, "@") || len(parts) != 3 {
			return nil, fmt.Errorf("TRACKER_JOURNAL_ADDRESSES: want address=tenant/mailbox/user, got %q", item)
		}
		for _, p := range parts {
			if !ids.Valid(p) { // the suite's id rule (internal/ids)
				return nil, fmt.Errorf("TRACKER_JOURNAL_ADDRESSES: bad id %q in %q", p, item)
			}
		}
		if _, dup := out[addr]; dup {
			return nil, fmt.Errorf("TRACKER_JOURNAL_ADDRESSES: %s appears twice", addr)
		}
		out[addr] = journal.Target{Tenant: parts[0], MailboxID: parts[1], User: parts[2]}
	}
	return out, nil
}

// Validate checks the values no default can fix.
func (c *Config) Validate() error {
	var errList []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errList = append(errList, fmt.Errorf(format, args...))
		}
	}
	check(c.MailboxAddr != "", "TRACKER_MAILBOX_ADDR is required")
	check(c.SyncKindCacheTTL >= 0 && c.SyncKindCacheTTL <= 24*time.Hour, "TRACKER_SYNC_KIND_CACHE_TTL must be between 0 and 24h, got %s", c.SyncKindCacheTTL)
	check(c.DecisionRetention >= time.Minute, "TRACKER_DECISION_RETENTION must be at least 1m, got %s", c.DecisionRetention)
	check(c.RelayBatch >= 1 && c.RelayBatch <= 10000, "TRACKER_RELAY_BATCH must be between 1 and 10000, got %d", c.RelayBatch)
	check(c.RelayClaimIdle >= time.Second, "TRACKER_RELAY_CLAIM_IDLE must be at least 1s, got %s", c.RelayClaimIdle)
	check(c.JournalMaxBytes >= 1024 && c.JournalMaxBytes <= 100<<20, "TRACKER_JOURNAL_MAX_BYTES must be between 1 KiB and 100 MiB, got %d", c.JournalMaxBytes)
	if c.JournalAddr != "" {
		_, _, err := net.SplitHostPort(c.JournalAddr)
		check(err == nil, "TRACKER_JOURNAL_ADDR must be host:port, got %q", c.JournalAddr)
	}
	if _, err := ParseJournalAddresses(c.JournalAddresses); err != nil {
		errList = append(errList, err)
	}
	return errors.Join(errList...)
}

// Deps are what the tracker shares with its process.
type Deps struct {
	Logger   *slog.Logger
	Redis    redis.UniversalClient
	JS       jetstream.JetStream
	Verifier *auth.Verifier
	// Signer mints the tracker's service tokens for its calls to mailbox.
	Signer  *auth.Signer
	Metrics *prometheus.Registry
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Server holds the options of the gRPC server other than what the service sets itself.
	Server grpcserver.Options
	// StreamReplicas is the replica count of the event streams this service ensures
	// (NATS_STREAM_REPLICAS; 0 leaves it to eventbus.EnsureStream's default).
	StreamReplicas int
	// Partitions is how many partitions the tracker spreads its tenants over (REDIS_PARTITIONS;
	// 0 means redisx.DefaultPartitions). Run refuses data written with another count.
	Partitions int
	// MailboxDialOptions are added to the mailbox client's (tests use them for bufconn or TLS).
	MailboxDialOptions []grpc.DialOption
	// JournalListener, when set, is where the journaling endpoint listens instead of
	// Config.JournalAddr (tests pass a listener on a free port).
	JournalListener net.Listener
}

// App is a wired tracker.
type App struct {
	cfg       Config
	deps      Deps
	server    *grpcserver.Server
	relay     *eventbus.Relay
	store     *redisstore.Store
	svc       *tracker.Service
	mailboxes *mailboxes.Client
	mailbox   *grpc.ClientConn
	journal   *journal.Server
	// lag samples the relay's backlog and the EmailSent consumer's lag for /metrics.
	lag *gauges.Sampler
}

// New wires the tracker; nothing runs until Run.
func New(cfg Config, deps Deps) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Signer == nil {
		return nil, errors.New("tracker: a signer for service credentials is required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if err := redisx.CheckPartitionCount(deps.Partitions); err != nil {
		return nil, fmt.Errorf("tracker: %w", err)
	}
	conn, err := grpcserver.Dial(cfg.MailboxAddr, append([]grpc.DialOption{
		grpc.WithPerRPCCredentials(auth.ServiceCredentials(deps.Signer, Name)),
	}, deps.MailboxDialOptions...)...)
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, deps: deps, mailbox: conn}
	a.mailboxes = mailboxes.New(mailboxv1.NewMailboxServiceClient(conn), cfg.SyncKindCacheTTL, deps.Now)
	a.store = redisstore.New(deps.Redis, deps.Partitions)
	a.svc = tracker.New(a.store, a.mailboxes, tracker.Options{Now: deps.Now, DecisionRetention: cfg.DecisionRetention, Access: a.mailboxes})
	handler := grpcapi.New(a.svc)

	opts := deps.Server
	opts.Name = append(opts.Name, trackerv1.TrackerService_ServiceDesc.ServiceName)
	// Writes into a tenant mailbox does not know are refused alike in every service.
	tenantsOf := mailboxv1.NewMailboxServiceClient(conn)
	opts.TenantExists = grpcserver.TenantLookup(func(ctx context.Context, tenant string) error {
		_, err := tenantsOf.GetTenant(auth.WithTenant(ctx, tenant), &mailboxv1.GetTenantRequest{})
		return err
	})
	opts.Logger = deps.Logger
	opts.Verifier = deps.Verifier
	opts.Metrics = deps.Metrics
	opts.Readiness = append(opts.Readiness, grpcserver.Check{Name: "redis", Probe: redisx.Probe(deps.Redis)})
	opts.Register = func(s *grpc.Server) { trackerv1.RegisterTrackerServiceServer(s, handler) }
	srv, err := grpcserver.New(opts)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("tracker grpc server: %w", err)
	}
	a.server = srv
	a.relay = &eventbus.Relay{
		Client: deps.Redis, JS: deps.JS, Streams: a.store.EventStreams(), Group: "relay",
		BatchSize: cfg.RelayBatch, ClaimIdle: cfg.RelayClaimIdle, Logger: deps.Logger,
		Stream: eventbus.StreamSpec{Name: events.StreamName, Subjects: events.StreamSubjects, Replicas: deps.StreamReplicas},
	}
	if cfg.JournalAddr != "" || deps.JournalListener != nil {
		addrs, _ := ParseJournalAddresses(cfg.JournalAddresses) // checked by Validate
		a.journal = journal.New(journal.Config{Addresses: addrs, Domain: cfg.JournalDomain, MaxMessageBytes: cfg.JournalMaxBytes}, a.svc, deps.Logger)
	}
	if deps.Metrics != nil {
		var durables []eventbus.Durable
		if cfg.ConsumeSent {
			durables = append(durables, eventbus.Durable{Stream: events.OutboxStreamName, Name: events.SentDurable})
		}
		a.lag = eventbus.LagSampler(Name, a.relay, deps.JS, deps.Logger, durables...)
		if err := deps.Metrics.Register(a.lag); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("register lag metrics: %w", err)
		}
		if err := deps.Metrics.Register(a.relay.Collector(prometheus.Labels{"service": Name})); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("register relay metrics: %w", err)
		}
	}
	return a, nil
}

// Run serves on lis and runs the relay, the EmailSent consumer, the sync-kind cache's follower
// and the journaling endpoint until ctx ends. Shutdown: the gRPC server drains first, then the
// journaling endpoint stops accepting and finishes its sessions, then the consumers stop, and the
// relay last, so events written by the last ingests still go out (or stay in Redis for the next
// relay of any replica).
func (a *App) Run(ctx context.Context, lis net.Listener) error {
	defer a.mailbox.Close()
	// First, before the relay creates any stream: data of another partition count must not be
	// read or written with this one.
	if err := a.store.CheckPartitions(ctx); err != nil {
		return fmt.Errorf("tracker: %w", err)
	}
	for _, s := range []eventbus.StreamSpec{
		{Name: events.StreamName, Subjects: events.StreamSubjects},
		{Name: events.OutboxStreamName, Subjects: events.OutboxStreamSubjects},
	} {
		s.Replicas = a.deps.StreamReplicas
		if err := eventbus.EnsureStream(ctx, a.deps.JS, s); err != nil {
			return fmt.Errorf("ensure stream: %w", err)
		}
	}
	var journalLis net.Listener
	if a.journal != nil {
		journalLis = a.deps.JournalListener
		if journalLis == nil {
			var err error
			if journalLis, err = net.Listen("tcp", a.cfg.JournalAddr); err != nil {
				return fmt.Errorf("journaling endpoint: %w", err)
			}
		}
	}
	base := context.WithoutCancel(ctx)
	relayCtx, stopRelay := context.WithCancel(base)
	defer stopRelay()
	workCtx, stopWork := context.WithCancel(base)
	defer stopWork()

	relay := make(chan error, 1)
	go func() { relay <- a.relay.Run(relayCtx) }()
	work, _ := errgroup.WithContext(workCtx)
	work.Go(func() error { return a.mailboxes.Follow(workCtx, a.deps.JS, events.MailboxStreamName, a.deps.Logger) })
	if a.lag != nil {
		work.Go(func() error { return a.lag.Run(workCtx) })
	}
	if a.cfg.ConsumeSent {
		work.Go(func() error {
			c := &events.SentConsumer{JS: a.deps.JS, Svc: a.svc, Logger: a.deps.Logger}
			return c.Run(workCtx)
		})
	}
	journalDone := make(chan error, 1)
	if a.journal != nil {
		go func() { journalDone <- a.journal.Serve(journalLis) }()
	} else {
		journalDone <- nil
	}

	serveErr := a.server.Serve(ctx, lis)
	var journalErr error
	if a.journal != nil {
		sctx, cancel := context.WithTimeout(base, 30*time.Second)
		journalErr = a.journal.Shutdown(sctx)
		cancel()
	}
	journalErr = errors.Join(journalErr, <-journalDone)
	stopWork()
	workErr := work.Wait()
	stopRelay()
	relayErr := <-relay
	if errors.Is(relayErr, context.Canceled) {
		relayErr = nil
	}
	if errors.Is(workErr, context.Canceled) {
		workErr = nil
	}
	return errors.Join(serveErr, journalErr, workErr, relayErr)
}
