package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/sethvargo/go-envconfig"
	"golang.org/x/sync/errgroup"

	gatewayapp "github.com/postamt/postamt/gateway/app"
	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/logging"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/telemetry"
	calendarapp "github.com/postamt/postamt/services/calendar/app"
	mailboxapp "github.com/postamt/postamt/services/mailbox/app"
	outboxapp "github.com/postamt/postamt/services/outbox/app"
	trackerapp "github.com/postamt/postamt/services/tracker/app"
)

// serveConfig is everything `postamt serve` reads from the environment.
type serveConfig struct {
	config.Common
	Mailbox  mailboxapp.Config
	Outbox   outboxapp.Config
	Tracker  trackerapp.Config
	Calendar calendarapp.Config
	Gateway  gatewayapp.Config
}

// validate checks the part of the service to run; config.Load checked the shared part (the
// embedded Common's Validate).
func (c *serveConfig) validate(service string) error {
	switch service {
	case mailboxapp.Name:
		return c.Mailbox.Validate()
	case outboxapp.Name:
		return c.Outbox.Validate()
	case trackerapp.Name:
		return c.Tracker.Validate()
	case calendarapp.Name:
		return c.Calendar.Validate()
	case gatewayapp.Name:
		return c.Gateway.Validate()
	}
	return nil
}

// knownServices are the services `postamt serve` can run.
var knownServices = []string{mailboxapp.Name, outboxapp.Name, trackerapp.Name, calendarapp.Name, gatewayapp.Name}

// app is what every service's wiring offers its process.
type app interface {
	Run(ctx context.Context, lis net.Listener) error
}

func runServe(ctx context.Context, args []string, stderr io.Writer, lookup func(string) (string, bool), libs *logging.Libraries) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("serve: name the one service to run (each has its own GRPC_ADDR): one of %v", knownServices)
	}
	return serve(ctx, fs.Arg(0), stderr, lookup, nil, libs, nil)
}

// serve runs a service with the environment's configuration, logging to stderr; ready (when not
// nil) is closed once the gRPC listener accepts connections. libs (when not nil) is pointed at
// the service's logger: the libraries' lines are then the service's (postamt up, which runs
// several services in one process, points it at its own logger instead). codes are the
// gateway's one-time console sign-in codes (`postamt up` only; nil elsewhere).
func serve(ctx context.Context, service string, stderr io.Writer, lookup func(string) (string, bool), ready chan<- struct{}, libs *logging.Libraries, codes *gatewayapp.ConsoleCodes) error {
	if !slices.Contains(knownServices, service) {
		return fmt.Errorf("unknown service %q; known: %v", service, knownServices)
	}
	var cfg serveConfig
	if err := config.Load(ctx, envconfig.LookuperFunc(lookup), &cfg); err != nil {
		return err
	}
	if err := cfg.validate(service); err != nil {
		return err
	}
	logger, err := logging.New(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	shutdownTracing, err := telemetry.SetupTracing(ctx, cfg.TraceExport(service), logger.With("service", service))
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = shutdownTracing(sctx)
	}()

	log := logger.With("service", service)
	if libs != nil {
		libs.Use(log)
	}
	verifier, err := auth.NewVerifier(cfg.Auth, auth.WithLogger(log))
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	serverOpts := grpcserver.Options{
		MaxRecvBytes: cfg.GRPCMaxRecvBytes,
		DrainDelay:   cfg.DrainDelay,
		DrainTimeout: cfg.DrainTimeout,
	}
	var svc app
	if service == gatewayapp.Name {
		// The gateway keeps no state: no Redis, no NATS.
		svc, err = gatewayapp.New(ctx, cfg.Gateway, gatewayapp.Deps{Logger: log, Verifier: verifier, Metrics: reg, Server: serverOpts, ConsoleCodes: codes})
	} else {
		rdb, err := redisx.Open(ctx, cfg.RedisURL, append(cfg.RedisOptions(), redisx.WithClientName("postamt-"+service))...)
		if err != nil {
			return err
		}
		defer rdb.Close()
		nc, err := nats.Connect(cfg.NATSURL, append(natsLogging(log), nats.Name("postamt"), nats.MaxReconnects(-1))...)
		if err != nil {
			return fmt.Errorf("connect to NATS at %s: %w", cfg.NATSURL, err)
		}
		defer nc.Drain() //nolint:errcheck // on the way out: a failed drain leaves nothing to do but exit
		// Acknowledgements that never come (a stream leader lost with a publish in flight,
		// while this connection stays up on a surviving server) must time out: otherwise each
		// stays pending in the client for good, and once the relay's connection has collected
		// the client's maximum of pending acks every asynchronous publish stalls and fails, and
		// the relay stops publishing. The relay waits 10 s for a batch's acks by default.
		js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(publishAckTimeout))
		if err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
		serverOpts.Readiness = []grpcserver.Check{{Name: "nats", Probe: natsProbe(nc)}}
		// Not the err of the if above: this block's own, shadowed by rdb's.
		if svc, err = newService(service, cfg, log, rdb, js, verifier, reg, serverOpts); err != nil {
			return err
		}
	}
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.GRPCAddr, err)
	}
	ops := telemetry.NewOpsServer(cfg.OpsAddr, reg, logger)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return ops.Run(gctx) })
	g.Go(func() error { return svc.Run(gctx, lis) })
	logger.Info("serving", "service", service, "grpc", lis.Addr().String(), "ops", cfg.OpsAddr)
	if ready != nil {
		close(ready)
	}
	return g.Wait()
}

// newService wires one of the services that keep state in Redis and speak over NATS.
func newService(service string, cfg serveConfig, log *slog.Logger, rdb redis.UniversalClient, js jetstream.JetStream, verifier *auth.Verifier, reg *prometheus.Registry, opts grpcserver.Options) (app, error) {
	if service == mailboxapp.Name {
		return mailboxapp.New(cfg.Mailbox, mailboxapp.Deps{Logger: log, Redis: rdb, JS: js, Verifier: verifier, Metrics: reg, Server: opts, StreamReplicas: cfg.NATSStreamReplicas, Partitions: cfg.RedisPartitions})
	}
	// The others call mailbox with service credentials.
	signer, err := auth.NewSigner(cfg.Auth)
	if err != nil {
		return nil, fmt.Errorf("%s service credentials: %w", service, err)
	}
	switch service {
	case outboxapp.Name:
		return outboxapp.New(cfg.Outbox, outboxapp.Deps{Logger: log, Redis: rdb, JS: js, Verifier: verifier, Signer: signer, Metrics: reg, Server: opts, StreamReplicas: cfg.NATSStreamReplicas, Partitions: cfg.RedisPartitions})
	case trackerapp.Name:
		return trackerapp.New(cfg.Tracker, trackerapp.Deps{Logger: log, Redis: rdb, JS: js, Verifier: verifier, Signer: signer, Metrics: reg, Server: opts, StreamReplicas: cfg.NATSStreamReplicas, Partitions: cfg.RedisPartitions})
	case calendarapp.Name:
		return calendarapp.New(cfg.Calendar, calendarapp.Deps{Logger: log, Redis: rdb, JS: js, Verifier: verifier, Signer: signer, Metrics: reg, Server: opts, StreamReplicas: cfg.NATSStreamReplicas, Partitions: cfg.RedisPartitions})
	}
	return nil, fmt.Errorf("unknown service %q", service)
}

// publishAckTimeout bounds how long the JetStream client keeps an asynchronous publish's
// acknowledgement pending: longer than the relays wait for a batch (eventbus.Relay's
// PublishTimeout, 10 s by default), so a slow acknowledgement still counts.
const publishAckTimeout = 15 * time.Second

// natsLogging logs the NATS connection's changes and asynchronous errors (a slow consumer, a
// permission refused), which nats.go reports only to handlers.
func natsLogging(log *slog.Logger) []nats.Option {
	return []nats.Option{
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats: disconnected; reconnecting", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats: reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Warn("nats: asynchronous error", "subject", sub.Subject, "error", err)
				return
			}
			log.Warn("nats: asynchronous error", "error", err)
		}),
	}
}

// natsProbe reports the NATS connection's health for readiness.
func natsProbe(nc *nats.Conn) func(context.Context) error {
	return func(context.Context) error {
		if !nc.IsConnected() {
			return fmt.Errorf("nats: %s", nc.Status())
		}
		return nil
	}
}
