// Package app wires the outbox service: the ledger and its dispatcher, the gRPC API, the
// connectors, the event relay and the mailbox client. cmd/postamt runs it (`postamt serve
// outbox`, `postamt up`); the dependencies it shares with its process are passed in.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
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
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/secretref"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	"github.com/postamt/postamt/services/outbox/internal/directory"
	"github.com/postamt/postamt/services/outbox/internal/dispatch"
	"github.com/postamt/postamt/services/outbox/internal/grpcapi"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/service"
	"github.com/postamt/postamt/services/outbox/internal/tracking"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// Name is the service's name in logs, metrics and service credentials.
const Name = "outbox"

// MailboxStream is mailbox's JetStream stream, whose events drop the outbox's cached answers.
const MailboxStream = "POSTAMT_MAILBOX"

// Config is the outbox's own configuration; the shared part (addresses, Redis, NATS, auth) is
// config.Common, read by the caller.
type Config struct {
	MailboxAddr        string        `env:"OUTBOX_MAILBOX_ADDR, default=127.0.0.1:9090" desc:"gRPC address of the mailbox service (send rights, mailboxes, teams)"`
	TrackerAddr        string        `env:"OUTBOX_TRACKER_ADDR" desc:"gRPC address of the tracker service, which issues the tracking tokens appended to the subjects of mail submitted with regarding_record_id when the tenant has tokens in subjects on; empty: no tokens, the record is only stored"`
	DirectoryCacheTTL  time.Duration `env:"OUTBOX_DIRECTORY_CACHE_TTL, default=10s" desc:"longest time mailbox's answers (send rights for submits; a user's mailboxes and team leadership for views) are kept when mailbox's events do not arrive; any event of the tenant drops them earlier"`
	DefaultConnector   string        `env:"OUTBOX_DEFAULT_CONNECTOR, default=default" desc:"connector of a submit that names none"`
	DefaultUndoDelay   time.Duration `env:"OUTBOX_DEFAULT_UNDO_DELAY, default=10s" desc:"undo delay of users who never set one"`
	MaxUndoDelay       time.Duration `env:"OUTBOX_MAX_UNDO_DELAY, default=10m" desc:"largest undo delay a user may set"`
	MaxMessageBytes    int64         `env:"OUTBOX_MAX_MESSAGE_BYTES, default=26214400" desc:"largest content (bodies and attachments) of one email, in bytes"`
	MaxRecipients      int           `env:"OUTBOX_MAX_RECIPIENTS, default=500" desc:"most recipients (to, cc and bcc together) of one email"`
	ScheduleHorizon    time.Duration `env:"OUTBOX_SCHEDULE_HORIZON, default=8784h" desc:"how far ahead send_at may be"`
	Retention          time.Duration `env:"OUTBOX_RETENTION, default=720h" desc:"how long SENT and CANCELLED emails are kept, and found by ListEmails with final statuses; failed mail is never dropped"`
	Dispatch           bool          `env:"OUTBOX_DISPATCH, default=true" desc:"run the dispatcher (send due mail) in this replica"`
	LogRecipients      bool          `env:"OUTBOX_LOG_RECIPIENTS, default=false" desc:"name the recipients' addresses in the log line of each delivery attempt (personal data: off, the line counts them and masks them in the relay's reply)"`
	ClaimBatch         int           `env:"OUTBOX_CLAIM_BATCH, default=64" desc:"most emails one connector's lane claims in one round trip"`
	Lease              time.Duration `env:"OUTBOX_LEASE, default=8s" desc:"how long a claim holds without renewal; held mail is renewed every quarter of it, so a crashed replica's mail is due again at most this long after the crash"`
	ClaimAhead         float64       `env:"OUTBOX_CLAIM_AHEAD, default=1" desc:"emails a connector's lane claims beyond its free connections, as a multiple of its pool size (0-4), so a connection that frees up finds its next email waiting"`
	StopTimeout        time.Duration `env:"OUTBOX_STOP_TIMEOUT, default=60s" desc:"on SIGTERM, how long SMTP conversations that are writing their message or awaiting the relay's answer get to finish; claims not started and conversations that have not begun their message are handed back at once"`
	SMTPCommandTimeout time.Duration `env:"OUTBOX_SMTP_COMMAND_TIMEOUT, default=30s" desc:"deadline of each SMTP command's reply, and of each 64 KiB of a message while it is written"`
	SMTPSubmitTimeout  time.Duration `env:"OUTBOX_SMTP_SUBMIT_TIMEOUT, default=100s" desc:"deadline of the reply to the final dot of DATA"`
	SecretEnvPrefix    string        `env:"OUTBOX_SECRET_ENV_PREFIX, default=POSTAMT_SMTP_" desc:"prefix of the environment variables a connector's secret_ref may name, followed by the tenant and __ (env:POSTAMT_SMTP_KANZLEI__RELAY)"`
	SecretDir          string        `env:"OUTBOX_SECRET_DIR, default=/run/secrets/postamt" desc:"directory of the files a connector's secret_ref may name, each called TENANT.NAME (file:/run/secrets/postamt/kanzlei.relay)"`
	MaxFilterScan      int           `env:"OUTBOX_MAX_FILTER_SCAN, default=10000" desc:"most emails one list or count reads to apply a filter or order the indexes do not answer (connector, work item, mailbox, text; the submit and last-attempt orders)"`
	MaxSelection       int           `env:"OUTBOX_MAX_SELECTION, default=100000" desc:"most emails one bulk action (send now, cancel, retry, reschedule, move) may select by filter"`
	RelayBatch         int           `env:"OUTBOX_RELAY_BATCH, default=256" desc:"events the relay publishes to JetStream per round"`
	RelayClaimIdle     time.Duration `env:"OUTBOX_RELAY_CLAIM_IDLE, default=30s" desc:"idle time after which another relay takes over a crashed relay's pending events"`
	MetricsInterval    time.Duration `env:"OUTBOX_METRICS_INTERVAL, default=15s" desc:"how often one replica reads every connector's backlog and the status counts from Redis for the gauges (a scrape reads memory only); 0 means 15s"`
	MetricsConnectors  int           `env:"OUTBOX_METRICS_MAX_CONNECTORS, default=200" desc:"most connectors with series of their own (tenant and connector labels); the rest are aggregated under tenant and connector \"_other\"; 0 means 200"`
}

// Validate checks the values no default can fix.
func (c *Config) Validate() error {
	var errList []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errList = append(errList, fmt.Errorf(format, args...))
		}
	}
	check(c.MailboxAddr != "", "OUTBOX_MAILBOX_ADDR is required")
	check(c.DefaultUndoDelay >= 0 && c.DefaultUndoDelay <= c.MaxUndoDelay, "OUTBOX_DEFAULT_UNDO_DELAY must be between 0 and OUTBOX_MAX_UNDO_DELAY, got %s", c.DefaultUndoDelay)
	check(c.MaxMessageBytes >= 1024 && c.MaxMessageBytes <= 100<<20, "OUTBOX_MAX_MESSAGE_BYTES must be between 1 KiB and 100 MiB, got %d", c.MaxMessageBytes)
	check(c.MaxRecipients >= 1 && c.MaxRecipients <= 10000, "OUTBOX_MAX_RECIPIENTS must be between 1 and 10000, got %d", c.MaxRecipients)
	check(c.ScheduleHorizon >= time.Hour, "OUTBOX_SCHEDULE_HORIZON must be at least 1h, got %s", c.ScheduleHorizon)
	check(c.Retention >= time.Minute, "OUTBOX_RETENTION must be at least 1m, got %s", c.Retention)
	check(c.ClaimBatch >= 1 && c.ClaimBatch <= 1000, "OUTBOX_CLAIM_BATCH must be between 1 and 1000, got %d", c.ClaimBatch)
	check(c.Lease >= 2*time.Second && c.Lease <= 10*time.Minute, "OUTBOX_LEASE must be between 2s and 10m, got %s", c.Lease)
	check(c.ClaimAhead >= 0 && c.ClaimAhead <= 4, "OUTBOX_CLAIM_AHEAD must be between 0 and 4, got %v", c.ClaimAhead)
	check(c.StopTimeout >= time.Second, "OUTBOX_STOP_TIMEOUT must be at least 1s, got %s", c.StopTimeout)
	check(c.SecretEnvPrefix != "" && c.SecretDir != "" && strings.HasPrefix(c.SecretDir, "/"), "OUTBOX_SECRET_ENV_PREFIX and OUTBOX_SECRET_DIR (absolute) are required: they bound what connectors may read")
	check(c.MaxFilterScan >= 100 && c.MaxFilterScan <= 1_000_000, "OUTBOX_MAX_FILTER_SCAN must be between 100 and 1000000, got %d", c.MaxFilterScan)
	check(c.MaxSelection >= 1 && c.MaxSelection <= 10_000_000, "OUTBOX_MAX_SELECTION must be between 1 and 10000000, got %d", c.MaxSelection)
	check(c.RelayBatch >= 1 && c.RelayBatch <= 10000, "OUTBOX_RELAY_BATCH must be between 1 and 10000, got %d", c.RelayBatch)
	check(c.RelayClaimIdle >= time.Second, "OUTBOX_RELAY_CLAIM_IDLE must be at least 1s, got %s", c.RelayClaimIdle)
	check(c.MetricsInterval == 0 || c.MetricsInterval >= 100*time.Millisecond, "OUTBOX_METRICS_INTERVAL must be at least 100ms, got %s", c.MetricsInterval)
	check(c.MetricsConnectors >= 0 && c.MetricsConnectors <= 10000, "OUTBOX_METRICS_MAX_CONNECTORS must be between 0 (the default) and 10000, got %d", c.MetricsConnectors)
	return errors.Join(errList...)
}

// Deps are what the outbox shares with its process.
type Deps struct {
	Logger   *slog.Logger
	Redis    redis.UniversalClient
	JS       jetstream.JetStream
	Verifier *auth.Verifier
	// Signer mints the outbox's service tokens for its calls to mailbox.
	Signer  *auth.Signer
	Metrics *prometheus.Registry
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Getenv and ReadFile resolve connector secrets (env: and file: references); nil means the
	// process environment and the file system.
	Getenv   func(string) string
	ReadFile func(string) ([]byte, error)
	// Server holds the options of the gRPC server other than what the service sets itself.
	Server grpcserver.Options
	// StreamReplicas is the replica count of the event streams this service ensures
	// (NATS_STREAM_REPLICAS; 0 leaves it to eventbus.EnsureStream's default).
	StreamReplicas int
	// Partitions is how many partitions the outbox spreads its emails over (REDIS_PARTITIONS;
	// 0 means redisx.DefaultPartitions). Run refuses data written with another count.
	Partitions int
	// MailboxDialOptions are added to the mailbox client's (tests use them for bufconn or TLS).
	MailboxDialOptions []grpc.DialOption
}

// App is a wired outbox.
type App struct {
	cfg        Config
	deps       Deps
	server     *grpcserver.Server
	relay      *eventbus.Relay
	redriver   *eventbus.Redriver
	samplers   []*gauges.Sampler
	dispatcher *dispatch.Dispatcher
	ledger     *redisstore.Ledger
	registry   *service.Registry
	permits    *redisstore.Permits
	directory  *directory.Client
	mailbox    *grpc.ClientConn
	tracker    *grpc.ClientConn // nil without OUTBOX_TRACKER_ADDR
}

// New wires the outbox; nothing runs until Run.
func New(cfg Config, deps Deps) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Getenv == nil {
		deps.Getenv = os.Getenv
	}
	if deps.ReadFile == nil {
		deps.ReadFile = os.ReadFile
	}
	if deps.Signer == nil {
		return nil, errors.New("outbox: a signer for service credentials is required")
	}
	if err := redisx.CheckPartitionCount(deps.Partitions); err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	conn, err := grpcserver.Dial(cfg.MailboxAddr, append([]grpc.DialOption{
		grpc.WithPerRPCCredentials(auth.ServiceCredentials(deps.Signer, Name)),
	}, deps.MailboxDialOptions...)...)
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, deps: deps, mailbox: conn}
	var tokens service.Tokens
	if cfg.TrackerAddr != "" {
		tc, err := grpcserver.Dial(cfg.TrackerAddr, grpc.WithPerRPCCredentials(auth.ServiceCredentials(deps.Signer, Name)))
		if err != nil {
			_ = conn.Close()
			return nil, err
		}
		a.tracker = tc
		tokens = tracking.New(trackerv1.NewTrackerServiceClient(tc))
	}

	ledger := redisstore.New(deps.Redis, cfg.Retention, deps.Partitions)
	a.ledger = ledger
	connStore := redisstore.NewConnectors(deps.Redis)
	a.permits = ledger.NewPermits(nil)
	a.registry = service.NewRegistry(connStore, service.SenderOptions{
		Permits:        a.permits,
		CommandTimeout: cfg.SMTPCommandTimeout, SubmitTimeout: cfg.SMTPSubmitTimeout,
		Getenv: deps.Getenv, ReadFile: deps.ReadFile,
		Scope: secretref.Scope{EnvPrefix: cfg.SecretEnvPrefix, Dir: cfg.SecretDir},
	}, deps.Logger)
	limits := outbox.DefaultLimits()
	limits.MaxMessageBytes, limits.MaxRecipients, limits.Horizon = cfg.MaxMessageBytes, cfg.MaxRecipients, cfg.ScheduleHorizon
	dir := directory.New(mailboxv1.NewMailboxServiceClient(conn), cfg.DirectoryCacheTTL)
	a.directory = dir
	svc := service.New(ledger, redisstore.NewSettings(deps.Redis), dir, a.registry.Exists, service.Options{
		Limits: limits, DefaultUndoDelay: cfg.DefaultUndoDelay, MaxUndoDelay: cfg.MaxUndoDelay,
		DefaultConnector: cfg.DefaultConnector, Now: deps.Now, MaxFilterScan: cfg.MaxFilterScan, MaxSelection: cfg.MaxSelection,
		Tokens: tokens, DescribeConnector: a.registry.Describe,
	})
	admin := service.NewConnectorAdmin(connStore, ledger, svc, a.registry, deps.Now)
	handler := grpcapi.New(svc, admin, service.NewWatcher(deps.JS, svc))

	opts := deps.Server
	opts.Name = append(opts.Name, outboxv1.OutboxService_ServiceDesc.ServiceName)
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
	opts.Register = func(s *grpc.Server) { outboxv1.RegisterOutboxServiceServer(s, handler) }
	// A watch never ends by itself: the drain ends it (its client reconnects) instead of waiting.
	opts.EndOnDrain = append(opts.EndOnDrain, outboxv1.OutboxService_WatchEmails_FullMethodName)
	srv, err := grpcserver.New(opts)
	if err != nil {
		_ = conn.Close()
		if a.tracker != nil {
			_ = a.tracker.Close()
		}
		return nil, fmt.Errorf("outbox grpc server: %w", err)
	}
	a.server = srv
	a.relay = &eventbus.Relay{
		Client: deps.Redis, JS: deps.JS, Streams: ledger.EventStreams(), Group: "relay",
		BatchSize: cfg.RelayBatch, ClaimIdle: cfg.RelayClaimIdle, Logger: deps.Logger,
		Stream: eventbus.StreamSpec{Name: wire.StreamName, Subjects: wire.StreamSubjects, Replicas: deps.StreamReplicas},
	}
	// The outbox's records are the ledger the sent view and the tracker are built from: when its
	// stream is lost, the events it held come back from them.
	a.redriver = &eventbus.Redriver{
		Client: deps.Redis, JS: deps.JS, Stream: a.relay.Stream, Logger: deps.Logger,
		Redrive: func(ctx context.Context, since time.Time) (int, error) {
			return ledger.Redrive(ctx, since, wire.Events{}.Current)
		},
	}
	a.redriver.Init()
	a.relay.OnRecreated = a.redriver.Nudge
	attempts := dispatch.NewMetrics(cfg.MetricsConnectors)
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postamt_outbox_dispatch_events_total",
		Help: "Dispatcher events besides attempts: reclaimed (mail taken over after a lease ran out), lease_lost, handed_back (claims given back without an attempt: not started, or stopped before their message), limited (of those, handed back to wait for the relay's limits), record_retried (results kept while Redis was away), unrecorded (results dropped because their claim was lost).",
	}, []string{"event"})
	a.dispatcher = &dispatch.Dispatcher{
		Ledger: ledger, Connector: a.registry.Lookup, Reload: a.registry.Load, Clock: realClock{}, Logger: deps.Logger,
		Metrics: attempts, Events: events, Batch: cfg.ClaimBatch, Lease: cfg.Lease, ClaimAhead: cfg.ClaimAhead,
		StopTimeout: cfg.StopTimeout, Redis: deps.Redis, LogRecipients: cfg.LogRecipients,
		Claimed: func(tenant string, ids []string) {
			// Best effort: a watcher that misses it sees the email's next state.
			_ = deps.JS.Conn().Publish(wire.SubjectClaimed, wire.EncodeClaimed(tenant, ids))
		},
	}
	if deps.Metrics != nil {
		if err := deps.Metrics.Register(a.relay.Collector(prometheus.Labels{"service": Name})); err != nil {
			return nil, fmt.Errorf("register relay metrics: %w", err)
		}
		if err := deps.Metrics.Register(a.redriver.Collector(prometheus.Labels{"service": Name, "stream": wire.StreamName})); err != nil {
			return nil, fmt.Errorf("register re-drive metrics: %w", err)
		}
		a.samplers = a.newSamplers()
		for _, c := range append(attempts.Collectors(), events, a.samplers[0], a.samplers[1]) {
			if err := deps.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("register outbox metrics: %w", err)
			}
		}
	}
	return a, nil
}

// newSamplers are the gauges read from Redis in the background: the relay's backlog (every
// replica), and each connector's backlog and the status counts (one replica, by lock).
func (a *App) newSamplers() []*gauges.Sampler {
	events := eventbus.LagSampler(Name, a.relay, a.deps.JS, a.deps.Logger)
	g := newLaneGauges(a.ledger, a.registry.Lanes, a.deps.Now, a.cfg.MetricsConnectors)
	lanes := &gauges.Sampler{Name: Name + "-lanes", Descs: g.descs(), Sample: g.sample,
		Interval: a.cfg.MetricsInterval, Redis: a.deps.Redis, LockKey: redisstore.MetricsLockKey, Logger: a.deps.Logger}
	return []*gauges.Sampler{events, lanes}
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Run serves on lis and runs the relay, the re-drive check (eventbus.Redriver), the connector
// registry and the dispatcher until ctx ends. Shutdown: at once the dispatcher stops claiming, hands back the claims it has not
// started and finishes its conversations (OUTBOX_STOP_TIMEOUT), while the server drains (no new
// submits); then the relay stops; events it did not publish stay in Redis for the next relay of
// any replica.
func (a *App) Run(ctx context.Context, lis net.Listener) error {
	defer a.mailbox.Close()
	if a.tracker != nil {
		defer a.tracker.Close()
	}
	// First, before the relay creates any stream: data of another partition count must not be
	// read or written with this one.
	if err := a.ledger.CheckPartitions(ctx); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	if err := eventbus.EnsureStream(ctx, a.deps.JS, a.relay.Stream); err != nil {
		return fmt.Errorf("ensure outbox stream: %w", err)
	}
	if err := a.registry.Load(ctx); err != nil {
		return err
	}
	base := context.WithoutCancel(ctx)
	relayCtx, stopRelay := context.WithCancel(base)
	defer stopRelay()
	workCtx, stopWork := context.WithCancel(base)
	defer stopWork()

	relay := make(chan error, 1)
	go func() { relay <- a.relay.Run(relayCtx) }()
	work, _ := errgroup.WithContext(workCtx)
	work.Go(func() error { return a.registry.Run(workCtx) })
	work.Go(func() error {
		a.permits.Run(workCtx, func(err error) { a.deps.Logger.Warn("renew connection permits", "error", err) })
		return nil
	})
	work.Go(func() error { return a.redriver.Run(workCtx) })
	work.Go(func() error { return a.directory.Follow(workCtx, a.deps.JS, MailboxStream, a.deps.Logger) })
	for _, s := range a.samplers {
		work.Go(func() error { return s.Run(workCtx) })
	}
	if a.cfg.Dispatch {
		// The dispatcher stops at the signal, not after the API's drain: it claims nothing more,
		// hands back what it has not started at once, and finishes its conversations while the
		// API drains.
		work.Go(func() error { return a.dispatcher.Run(ctx) })
	}
	serveErr := a.server.Serve(ctx, lis)
	stopWork()
	workErr := work.Wait()
	a.registry.Close() //nolint:contextcheck // after ctx ended: idle connections close and give their permits back regardless
	stopRelay()
	relayErr := <-relay
	if errors.Is(relayErr, context.Canceled) {
		relayErr = nil
	}
	if errors.Is(workErr, context.Canceled) {
		workErr = nil
	}
	return errors.Join(serveErr, workErr, relayErr)
}
