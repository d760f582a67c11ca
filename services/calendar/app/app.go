// Package app wires the calendar service: the rules over their Redis store, the gRPC API with
// the agents' Connect streams, the server-side push worker, the event relay, the Redis
// notification subscriber that wakes streams and the worker across replicas, and the mailbox
// client with its event-invalidated user cache and its follower of user changes, which catches a
// user up when live sync starts to apply to them. cmd/postamt runs it (`postamt serve calendar`,
// `postamt up`); the dependencies it shares with its process are passed in.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
	"github.com/postamt/postamt/services/calendar/internal/directory"
	"github.com/postamt/postamt/services/calendar/internal/events"
	"github.com/postamt/postamt/services/calendar/internal/grpcapi"
	"github.com/postamt/postamt/services/calendar/internal/ical"
	"github.com/postamt/postamt/services/calendar/internal/push"
	"github.com/postamt/postamt/services/calendar/internal/redisstore"
)

// Name is the service's name in logs, metrics and service credentials.
const Name = "calendar"

// Config is the calendar's own configuration; the shared part (addresses, Redis, NATS, auth) is
// config.Common, read by the caller.
type Config struct {
	MailboxAddr        string        `env:"CALENDAR_MAILBOX_ADDR, default=127.0.0.1:9090" desc:"gRPC address of the mailbox service (users and their usernames)"`
	UserCacheTTL       time.Duration `env:"CALENDAR_USER_CACHE_TTL, default=5m" desc:"how long a user's usernames are cached at most; mailbox events drop them at once"`
	Heartbeat          time.Duration `env:"CALENDAR_HEARTBEAT, default=15s" desc:"heartbeat interval of agent streams; an agent silent for three intervals is dropped"`
	AgentMaxAttempts   int           `env:"CALENDAR_AGENT_MAX_ATTEMPTS, default=5" desc:"ERROR answers an agent may give to one revision before its delivery is dead (hand-outs it never answered do not count)"`
	AgentMaxUnanswered int           `env:"CALENDAR_AGENT_MAX_UNANSWERED, default=10" desc:"times one revision may be handed to agents whose streams ended before they answered it; then it is dead instead of handed out again"`
	DeliveryBatch      int           `env:"CALENDAR_DELIVERY_BATCH, default=512" desc:"deliveries read from Redis per round of an agent stream"`
	Push               bool          `env:"CALENDAR_PUSH, default=true" desc:"run the server-side push worker (CalDAV) in this process"`
	PushRetry          string        `env:"CALENDAR_PUSH_RETRY, default=5s,30s,2m,10m,30m,1h" desc:"backoff before each further push attempt; the last value repeats"`
	PushMaxAttempts    int           `env:"CALENDAR_PUSH_MAX_ATTEMPTS, default=8" desc:"attempts of one push delivery before it is dead"`
	PushTimeout        time.Duration `env:"CALENDAR_PUSH_TIMEOUT, default=30s" desc:"timeout of each CalDAV request"`
	PushLease          time.Duration `env:"CALENDAR_PUSH_LEASE, default=2m" desc:"how long a claimed push delivery is held before another worker may take it"`
	SecretEnvPrefix    string        `env:"CALENDAR_SECRET_ENV_PREFIX, default=POSTAMT_CALDAV_" desc:"prefix of the environment variables a CalDAV password_ref may name, followed by the tenant and __ (env:POSTAMT_CALDAV_KANZLEI__HUBER)"`
	SecretDir          string        `env:"CALENDAR_SECRET_DIR, default=/run/secrets/postamt" desc:"directory of the files a CalDAV password_ref may name, each called TENANT.NAME (file:/run/secrets/postamt/kanzlei.huber)"`
	SyncLogMaxLines    int           `env:"CALENDAR_SYNC_LOG_MAX_LINES, default=1000" desc:"lines kept per user's sync log (approximately)"`
	SyncLogRetention   time.Duration `env:"CALENDAR_SYNC_LOG_RETENTION, default=720h" desc:"age after which sync log lines are dropped (and no longer read back)"`
	RelayBatch         int           `env:"CALENDAR_RELAY_BATCH, default=256" desc:"events the relay publishes to JetStream per round"`
	RelayClaimIdle     time.Duration `env:"CALENDAR_RELAY_CLAIM_IDLE, default=30s" desc:"idle time after which another relay takes over a crashed relay's pending events"`
	MetricsInterval    time.Duration `env:"CALENDAR_METRICS_INTERVAL, default=15s" desc:"how often each replica reads the push backlog and the queued and dead totals from Redis for the gauges (a scrape reads memory only); 0 means 15s"`
}

// ParseRetry reads CALENDAR_PUSH_RETRY: positive durations separated by commas.
func ParseRetry(s string) ([]time.Duration, error) {
	var out []time.Duration
	for i, f := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("CALENDAR_PUSH_RETRY entry %d (%q): want a positive duration such as 30s", i+1, strings.TrimSpace(f))
		}
		out = append(out, d)
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
	check(c.MailboxAddr != "", "CALENDAR_MAILBOX_ADDR is required")
	check(c.UserCacheTTL >= 0 && c.UserCacheTTL <= 24*time.Hour, "CALENDAR_USER_CACHE_TTL must be between 0 and 24h, got %s", c.UserCacheTTL)
	check(c.Heartbeat >= 10*time.Millisecond && c.Heartbeat <= 5*time.Minute, "CALENDAR_HEARTBEAT must be between 10ms and 5m, got %s", c.Heartbeat)
	check(c.AgentMaxAttempts >= 1 && c.AgentMaxAttempts <= 100, "CALENDAR_AGENT_MAX_ATTEMPTS must be between 1 and 100, got %d", c.AgentMaxAttempts)
	check(c.AgentMaxUnanswered >= 1 && c.AgentMaxUnanswered <= 1000, "CALENDAR_AGENT_MAX_UNANSWERED must be between 1 and 1000, got %d", c.AgentMaxUnanswered)
	check(c.DeliveryBatch >= 1 && c.DeliveryBatch <= 10000, "CALENDAR_DELIVERY_BATCH must be between 1 and 10000, got %d", c.DeliveryBatch)
	if _, err := ParseRetry(c.PushRetry); err != nil {
		errList = append(errList, err)
	}
	check(c.PushMaxAttempts >= 1 && c.PushMaxAttempts <= 100, "CALENDAR_PUSH_MAX_ATTEMPTS must be between 1 and 100, got %d", c.PushMaxAttempts)
	check(c.PushTimeout >= 100*time.Millisecond, "CALENDAR_PUSH_TIMEOUT must be at least 100ms, got %s", c.PushTimeout)
	check(c.PushLease >= 2*c.PushTimeout, "CALENDAR_PUSH_LEASE must be at least twice CALENDAR_PUSH_TIMEOUT, got %s", c.PushLease)
	check(c.SecretDir == "" || strings.HasPrefix(c.SecretDir, "/"), "CALENDAR_SECRET_DIR must be an absolute path, got %q", c.SecretDir)
	check(c.SyncLogMaxLines >= 10 && c.SyncLogMaxLines <= 100000, "CALENDAR_SYNC_LOG_MAX_LINES must be between 10 and 100000, got %d", c.SyncLogMaxLines)
	check(c.SyncLogRetention >= time.Hour, "CALENDAR_SYNC_LOG_RETENTION must be at least 1h, got %s", c.SyncLogRetention)
	check(c.RelayBatch >= 1 && c.RelayBatch <= 10000, "CALENDAR_RELAY_BATCH must be between 1 and 10000, got %d", c.RelayBatch)
	check(c.RelayClaimIdle >= time.Second, "CALENDAR_RELAY_CLAIM_IDLE must be at least 1s, got %s", c.RelayClaimIdle)
	check(c.MetricsInterval == 0 || c.MetricsInterval >= 100*time.Millisecond, "CALENDAR_METRICS_INTERVAL must be at least 100ms, got %s", c.MetricsInterval)
	return errors.Join(errList...)
}

// Deps are what the calendar shares with its process.
type Deps struct {
	Logger   *slog.Logger
	Redis    redis.UniversalClient
	JS       jetstream.JetStream
	Verifier *auth.Verifier
	// Signer mints the calendar's service tokens for its calls to mailbox.
	Signer  *auth.Signer
	Metrics *prometheus.Registry
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Server holds the options of the gRPC server other than what the service sets itself.
	Server grpcserver.Options
	// StreamReplicas is the replica count of the event streams this service ensures
	// (NATS_STREAM_REPLICAS; 0 leaves it to eventbus.EnsureStream's default).
	StreamReplicas int
	// Partitions is how many partitions the calendar spreads its tenants and push due indexes
	// over (REDIS_PARTITIONS; 0 means redisx.DefaultPartitions). Run refuses data written with
	// another count.
	Partitions int
	// MailboxDialOptions are added to the mailbox client's.
	MailboxDialOptions []grpc.DialOption
	// Getenv and ReadFile resolve CalDAV password references; nil means the process's.
	Getenv   func(string) string
	ReadFile func(string) ([]byte, error)
	// HTTPClient sends CalDAV requests; nil means a client of the push worker's own.
	HTTPClient *http.Client
}

// App is a wired calendar.
type App struct {
	cfg     Config
	deps    Deps
	server  *grpcserver.Server
	relay   *eventbus.Relay
	store   *redisstore.Store
	svc     *calendar.Service
	hub     *calendar.Hub
	users   *directory.Client
	mailbox *grpc.ClientConn
	worker  *push.Worker
	// samplers read the relay's backlog and the push backlog for /metrics.
	samplers []*gauges.Sampler
}

// New wires the calendar; nothing runs until Run.
func New(cfg Config, deps Deps) (*App, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Signer == nil {
		return nil, errors.New("calendar: a signer for service credentials is required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if err := redisx.CheckPartitionCount(deps.Partitions); err != nil {
		return nil, fmt.Errorf("calendar: %w", err)
	}
	conn, err := grpcserver.Dial(cfg.MailboxAddr, append([]grpc.DialOption{
		grpc.WithPerRPCCredentials(auth.ServiceCredentials(deps.Signer, Name)),
	}, deps.MailboxDialOptions...)...)
	if err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, deps: deps, mailbox: conn, hub: calendar.NewHub()}
	// One zone cache for the builder (validation, iCalendar) and the store (the series index).
	builder, err := ical.NewBuilder(ical.Config{})
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("calendar: %w", err)
	}
	store := redisstore.New(deps.Redis, redisstore.Options{
		LogMaxLen: cfg.SyncLogMaxLines, LogRetention: cfg.SyncLogRetention, Partitions: deps.Partitions, Zones: builder.Zones(),
	})
	a.store = store
	scope := secretref.Scope{EnvPrefix: cfg.SecretEnvPrefix, Dir: cfg.SecretDir}
	a.users = directory.New(mailboxv1.NewMailboxServiceClient(conn), cfg.UserCacheTTL, deps.Now)
	a.svc, err = calendar.New(store, a.users, calendar.Options{
		Now: deps.Now, Secrets: scope, MaxAgentAttempts: cfg.AgentMaxAttempts, MaxAgentUnanswered: cfg.AgentMaxUnanswered, Heartbeat: cfg.Heartbeat,
		DeliveryBatch: cfg.DeliveryBatch, LogRetention: cfg.SyncLogRetention, Hub: a.hub, Builder: builder,
	})
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	retry, _ := ParseRetry(cfg.PushRetry) // checked by Validate
	if cfg.Push {
		a.worker = &push.Worker{
			Store: store, Secrets: scope, Getenv: deps.Getenv, ReadFile: deps.ReadFile, HTTPClient: deps.HTTPClient,
			RequestTimeout: cfg.PushTimeout, Retry: retry, MaxAttempts: cfg.PushMaxAttempts, Lease: cfg.PushLease,
			Now: deps.Now, Logger: deps.Logger, Zones: a.svc.Builder().Zones(), Adopt: a.svc.AdoptCalendarChange,
		}
	}
	handler := grpcapi.New(a.svc)
	opts := deps.Server
	opts.Name = append(opts.Name, calendarv1.CalendarService_ServiceDesc.ServiceName)
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
	opts.Register = func(s *grpc.Server) { calendarv1.RegisterCalendarServiceServer(s, handler) }
	srv, err := grpcserver.New(opts)
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("calendar grpc server: %w", err)
	}
	a.server = srv
	a.relay = &eventbus.Relay{
		Client: deps.Redis, JS: deps.JS, Streams: store.EventStreams(), Group: "relay",
		BatchSize: cfg.RelayBatch, ClaimIdle: cfg.RelayClaimIdle, Logger: deps.Logger,
		Stream: eventbus.StreamSpec{Name: events.StreamName, Subjects: events.StreamSubjects, Replicas: deps.StreamReplicas},
	}
	if deps.Metrics != nil {
		if err := a.registerMetrics(); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	return a, nil
}

// Run serves on lis and runs the relay, the notification subscriber, the push worker and the
// user cache's follower until ctx ends. Shutdown: agent streams are told to reconnect elsewhere
// and the gRPC server drains first, then the worker and the followers stop, and the relay last,
// so events written by the last calls still go out (or stay in Redis for the next relay).
func (a *App) Run(ctx context.Context, lis net.Listener) error {
	defer a.mailbox.Close()
	// First, before the relay creates any stream: data of another partition count must not be
	// read or written with this one.
	if err := a.store.CheckPartitions(ctx); err != nil {
		return fmt.Errorf("calendar: %w", err)
	}
	if err := eventbus.EnsureStream(ctx, a.deps.JS, a.relay.Stream); err != nil {
		return fmt.Errorf("ensure stream: %w", err)
	}
	base := context.WithoutCancel(ctx)
	relayCtx, stopRelay := context.WithCancel(base)
	defer stopRelay()
	workCtx, stopWork := context.WithCancel(base)
	defer stopWork()

	sub := a.deps.Redis.Subscribe(workCtx, redisstore.NotifyChannel)
	if _, err := sub.Receive(ctx); err != nil {
		_ = sub.Close()
		return fmt.Errorf("subscribe to %s: %w", redisstore.NotifyChannel, err)
	}
	relay := make(chan error, 1)
	go func() { relay <- a.relay.Run(relayCtx) }()
	work, _ := errgroup.WithContext(workCtx)
	work.Go(func() error { return a.users.Follow(workCtx, a.deps.JS, events.MailboxStreamName, a.deps.Logger) })
	work.Go(func() error {
		return a.users.WatchUsers(workCtx, a.deps.JS, events.MailboxStreamName, a.deps.Logger, a.svc.Reconcile)
	})
	work.Go(func() error {
		for m := range sub.Channel() {
			n, ok := redisstore.ParseNotification(m.Payload)
			switch {
			case !ok:
			case n.Kind == 'w':
				a.hub.Notify(n.Tenant, n.User)
			case n.Kind == 'k':
				a.hub.Kick(n.Tenant, n.User, n.Session)
			case n.Kind == 'p' && a.worker != nil:
				a.worker.Wake(n.Partition)
			}
		}
		return nil
	})
	if a.worker != nil {
		work.Go(func() error { return a.worker.Run(workCtx) })
	}
	work.Go(func() error {
		// Once per deployment (a marker records it): queue and dead items written by a version
		// without the pending and dead indexes. In the background, since it scans the keyspace;
		// the gauges count them from the next sample on. A failure is retried at the next start.
		n, err := a.store.IndexQueues(workCtx, a.now())
		switch {
		case err != nil && workCtx.Err() == nil:
			a.deps.Logger.Warn("calendar: indexing the queues written before the queue indexes failed; retried at the next start", "error", err)
		case n > 0:
			a.deps.Logger.Info("calendar: indexed the queue and dead items written before the queue indexes", "items", n)
		}
		return nil
	})
	for _, s := range a.samplers {
		work.Go(func() error { return s.Run(workCtx) })
	}
	stopStreams := context.AfterFunc(ctx, a.hub.Shutdown)
	defer stopStreams()

	serveErr := a.server.Serve(ctx, lis)
	stopWork()
	_ = sub.Close()
	workErr := work.Wait()
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

// now is the calendar's clock.
func (a *App) now() time.Time {
	if a.deps.Now != nil {
		return a.deps.Now()
	}
	return time.Now()
}

// registerMetrics registers the relay's counters, the push attempts by result and the samplers
// of the event lag (the calendar owns no durable consumer: its followers are ordered consumers
// that start at the stream's end) and of the CalDAV push backlog:
//
//	postamt_calendar_push_attempts_total{result}     ok, retry, dead
//	postamt_calendar_push_pending_entries            deliveries waiting for CalDAV push
//	postamt_calendar_push_due_entries                of those, due now
//	postamt_calendar_push_oldest_due_age_seconds     how long the oldest due one has waited
//	postamt_calendar_pending_entries{target}         deliveries queued, not yet acknowledged
//	postamt_calendar_oldest_pending_age_seconds{target} how long the oldest of them has waited
//	postamt_calendar_dead_items{target}              deliveries given up, waiting for a person
//	postamt_calendar_oldest_dead_age_seconds{target} how long the oldest of them has waited
func (a *App) registerMetrics() error {
	reg := a.deps.Metrics
	pushes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "postamt_calendar_push_attempts_total",
		Help: "CalDAV push attempts by result: ok (the calendar took the revision), retry (failed, tried again later), dead (given up: the delivery is dead and waits for a person).",
	}, []string{"result"})
	for _, r := range []string{"ok", "retry", "dead"} {
		pushes.WithLabelValues(r) // every series from 0, so rate() and increase() see the first failure
	}
	if a.worker != nil {
		a.worker.Pushes = pushes
	}
	pending := prometheus.NewDesc("postamt_calendar_push_pending_entries", "Deliveries waiting for server-side (CalDAV) push: due, retrying later or held by a worker.", nil, nil)
	due := prometheus.NewDesc("postamt_calendar_push_due_entries", "CalDAV deliveries due now and not yet pushed.", nil, nil)
	age := prometheus.NewDesc("postamt_calendar_push_oldest_due_age_seconds", "Seconds since the oldest due CalDAV delivery became due; 0 when none is due.", nil, nil)
	dead := prometheus.NewDesc("postamt_calendar_dead_items",
		"Deliveries given up (agent: too many ERROR answers or unanswered hand-outs; caldav: rejected, unauthorised, too many attempts); each waits for a person or a new revision of its entry.",
		[]string{"target"}, nil)
	deadAge := prometheus.NewDesc("postamt_calendar_oldest_dead_age_seconds",
		"Seconds since the oldest dead delivery of the target died; 0 when there is none.", []string{"target"}, nil)
	queued := prometheus.NewDesc("postamt_calendar_pending_entries",
		"Deliveries queued for the target and not yet acknowledged (agent: most wait for their user's agent to connect; caldav: due, retrying or being pushed).",
		[]string{"target"}, nil)
	queuedAge := prometheus.NewDesc("postamt_calendar_oldest_pending_age_seconds",
		"Seconds since the longest-waiting queued delivery of the target was queued; 0 when none waits.", []string{"target"}, nil)
	now := a.now
	backlog := &gauges.Sampler{
		Name: Name + "-push", Descs: []*prometheus.Desc{pending, due, age, dead, deadAge, queued, queuedAge}, Logger: a.deps.Logger,
		Interval: a.cfg.MetricsInterval,
		Sample: func(ctx context.Context, emit func(*prometheus.Desc, float64, ...string)) error {
			t := now()
			b, err := a.store.PushBacklog(ctx, t)
			if err != nil {
				return err
			}
			totals, err := a.store.QueueTotals(ctx)
			if err != nil {
				return err
			}
			since := func(at time.Time) float64 {
				if at.IsZero() {
					return 0
				}
				return max(t.Sub(at).Seconds(), 0)
			}
			for _, q := range totals {
				emit(queued, float64(q.Pending), string(q.Target))
				emit(queuedAge, since(q.OldestQueued), string(q.Target))
				emit(dead, float64(q.Dead), string(q.Target))
				emit(deadAge, since(q.OldestDied), string(q.Target))
			}
			emit(pending, float64(b.Pending))
			emit(due, float64(b.Due))
			oldest := 0.0
			if !b.OldestDue.IsZero() {
				oldest = max(t.Sub(b.OldestDue).Seconds(), 0)
			}
			emit(age, oldest)
			return nil
		},
	}
	a.samplers = []*gauges.Sampler{eventbus.LagSampler(Name, a.relay, a.deps.JS, a.deps.Logger), backlog}
	for _, c := range []prometheus.Collector{a.relay.Collector(prometheus.Labels{"service": Name}), pushes, a.samplers[0], backlog} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register calendar metrics: %w", err)
		}
	}
	return nil
}
