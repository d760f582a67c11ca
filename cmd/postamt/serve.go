package main

import (
	"context"
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
	outboxapp "github.com/postamt/postamt/services/outbox/app"
)

// serveConfig is everything `postamt serve` reads from the environment.
type serveConfig struct {
	config.Common
	Mailbox mailboxapp.Config
	Outbox  outboxapp.Config
}

// validate checks the part of the service to run; config.Load checked the shared part (the
// embedded Common's Validate).
func (c *serveConfig) validate(service string) error {
	switch service {
	case mailboxapp.Name:
		return c.Mailbox.Validate()
	case outboxapp.Name:
		return c.Outbox.Validate()
	}
	return nil
}

// knownServices are the services `postamt serve` can run.
var knownServices = []string{mailboxapp.Name, outboxapp.Name}

// app is what every service's wiring offers its process.
type app interface {
	Run(ctx context.Context, lis net.Listener) error
}

func runServe(ctx context.Context, args []string, stderr io.Writer, lookup func(string) (string, bool)) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("serve: name the one service to run (each has its own GRPC_ADDR): one of %v", knownServices)
	}
	return serve(ctx, fs.Arg(0), stderr, lookup, nil)
}

// serve runs a service with the environment's configuration; ready (when not nil) is closed once
// the gRPC listener accepts connections.
func serve(ctx context.Context, service string, stderr io.Writer, lookup func(string) (string, bool), ready chan<- struct{}) error {
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

	serverOpts := grpcserver.Options{
		MaxRecvBytes: cfg.GRPCMaxRecvBytes,
		DrainDelay:   cfg.DrainDelay,
		DrainTimeout: cfg.DrainTimeout,
		Readiness:    []grpcserver.Check{{Name: "nats", Probe: natsProbe(nc)}},
	}
	var svc app
	switch service {
	case mailboxapp.Name:
		svc, err = mailboxapp.New(cfg.Mailbox, mailboxapp.Deps{
			Logger: logger.With("service", service), Redis: rdb, JS: js, Verifier: verifier, Metrics: reg, Server: serverOpts,
		})
	case outboxapp.Name:
		var signer *auth.Signer
		signer, err = auth.NewSigner(cfg.Auth)
		if err != nil {
			return fmt.Errorf("outbox service credentials: %w", err)
		}
		svc, err = outboxapp.New(cfg.Outbox, outboxapp.Deps{
			Logger: logger.With("service", service), Redis: rdb, JS: js, Verifier: verifier, Signer: signer, Metrics: reg, Server: serverOpts,
		})
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

// natsProbe reports the NATS connection's health for readiness.
func natsProbe(nc *nats.Conn) func(context.Context) error {
	return func(context.Context) error {
		if !nc.IsConnected() {
			return fmt.Errorf("nats: %s", nc.Status())
		}
		return nil
	}
}
