package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/sethvargo/go-envconfig"
	"golang.org/x/sync/errgroup"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/logging"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/telemetry"
	mailboxapp "github.com/postamt/postamt/services/mailbox/app"
)

// serveConfig is everything `postamt serve` reads from the environment.
type serveConfig struct {
	config.Common
	Mailbox mailboxapp.Config
}

// Validate implements config.Validator for the parts that have rules.
func (c *serveConfig) Validate() error {
	return errors.Join(c.Common.Validate(), c.Mailbox.Validate())
}

// knownServices are the services `postamt serve` can run.
var knownServices = []string{"mailbox"}

func runServe(ctx context.Context, args []string, stderr io.Writer, lookup func(string) (string, bool)) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("serve: name the services to run: %v", knownServices)
	}
	return serve(ctx, fs.Args(), stderr, lookup, nil)
}

// serve runs the named services with the environment's configuration; ready (when not nil) is
// closed once the gRPC listener accepts connections.
func serve(ctx context.Context, services []string, stderr io.Writer, lookup func(string) (string, bool), ready chan<- struct{}) error {
	for _, s := range services {
		if !slices.Contains(knownServices, s) {
			return fmt.Errorf("unknown service %q; known: %v", s, knownServices)
		}
	}
	var cfg serveConfig
	if err := config.Load(ctx, envconfig.LookuperFunc(lookup), &cfg); err != nil {
		return err
	}
	logger, err := logging.New(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	shutdownTracing, err := telemetry.SetupTracing(ctx, "postamt", cfg.OTLPEndpoint)
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = shutdownTracing(sctx)
	}()

	rdb, err := redisx.Open(ctx, cfg.RedisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	nc, err := nats.Connect(cfg.NATSURL, nats.Name("postamt"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", cfg.NATSURL, err)
	}
	defer nc.Drain()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	verifier, err := auth.NewVerifier(cfg.Auth)
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	mb, err := mailboxapp.New(cfg.Mailbox, mailboxapp.Deps{
		Logger:   logger.With("service", mailboxapp.Name),
		Redis:    rdb,
		JS:       js,
		Verifier: verifier,
		Metrics:  reg,
		Server: grpcserver.Options{
			MaxRecvBytes: cfg.GRPCMaxRecvBytes,
			DrainDelay:   cfg.DrainDelay,
			DrainTimeout: cfg.DrainTimeout,
			Readiness:    []grpcserver.Check{{Name: "nats", Probe: natsProbe(nc)}},
		},
	})
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
	g.Go(func() error { return mb.Run(gctx, lis) })
	logger.Info("serving", "services", services, "grpc", lis.Addr().String(), "ops", cfg.OpsAddr)
	if ready != nil {
		close(ready)
	}
	return g.Wait()
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
