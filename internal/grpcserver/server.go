// Package grpcserver is the one place a Postamt gRPC server is built, so every service has the
// same health and readiness, reflection, tracing, recovery, request ids, logs, metrics, auth,
// error mapping, limits and drain. A service only registers its API.
package grpcserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/postamt/postamt/internal/auth"
)

// ReadinessService is the health service name whose status includes the dependencies (Redis,
// NATS). Kubernetes readiness probes ask for it; liveness asks for "" (the process).
const ReadinessService = "readiness"

// Check is one dependency the server is ready only with.
type Check struct {
	Name  string
	Probe func(ctx context.Context) error
}

// Options configure a Server. Zero values are the documented defaults.
type Options struct {
	// Name lists the service names reported by health besides "" and ReadinessService; they
	// follow readiness.
	Name []string
	// Logger receives request logs; nil discards.
	Logger *slog.Logger
	// Verifier authenticates calls; nil leaves every call unauthenticated (tests of open servers
	// only: services always set it).
	Verifier *auth.Verifier
	// MaxRecvBytes bounds a request; 0 means 32 MiB.
	MaxRecvBytes int
	// Readiness are the dependencies probed every ReadinessInterval (0: 2s), each with a timeout of
	// the interval.
	Readiness         []Check
	ReadinessInterval time.Duration
	// DrainDelay is the time between NOT_SERVING and GracefulStop; DrainTimeout bounds GracefulStop
	// (0: 30s) before running calls are cut.
	DrainDelay   time.Duration
	DrainTimeout time.Duration
	// Metrics receives the request metrics; nil skips them.
	Metrics prometheus.Registerer
	// Register adds the service implementations.
	Register func(*grpc.Server)
}

// Server is a configured gRPC server with health and drain.
type Server struct {
	opts   Options
	grpc   *grpc.Server
	health *health.Server
	log    *slog.Logger

	mu    sync.Mutex
	ready bool
}

// New builds the server; nothing listens until Serve.
func New(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxRecvBytes == 0 {
		opts.MaxRecvBytes = 32 << 20
	}
	if opts.ReadinessInterval == 0 {
		opts.ReadinessInterval = 2 * time.Second
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	m, err := newMetrics(opts.Metrics)
	if err != nil {
		return nil, err
	}
	// Order: recovery outermost; the error mapping wraps auth so its errors get codes too; the
	// innermost step hands the authenticated context back to the log line.
	unary := []grpc.UnaryServerInterceptor{recoverUnary(opts.Logger), requestIDUnary(), logUnary(opts.Logger, m), mapErrorsUnary()}
	stream := []grpc.StreamServerInterceptor{recoverStream(opts.Logger), requestIDStream(), logStream(opts.Logger, m), mapErrorsStream()}
	if opts.Verifier != nil {
		unary = append(unary, auth.UnaryServerInterceptor(opts.Verifier))
		stream = append(stream, auth.StreamServerInterceptor(opts.Verifier))
	}
	unary = append(unary, rememberUnary())
	stream = append(stream, rememberStream())
	s := &Server{opts: opts, log: opts.Logger, health: health.NewServer()}
	s.grpc = grpc.NewServer(
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.MaxRecvMsgSize(opts.MaxRecvBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 2 * time.Minute, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	if opts.Register != nil {
		opts.Register(s.grpc)
	}
	s.setReadiness(false)
	return s, nil
}

// GRPC exposes the underlying server, for registering more services before Serve.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

func (s *Server) setReadiness(ready bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ready {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus(ReadinessService, st)
	for _, n := range s.opts.Name {
		s.health.SetServingStatus(n, st)
	}
}

// probe runs every readiness check once and reports the result.
func (s *Server) probe(ctx context.Context) {
	var failed error
	for _, c := range s.opts.Readiness {
		pctx, cancel := context.WithTimeout(ctx, s.opts.ReadinessInterval)
		err := c.Probe(pctx)
		cancel()
		if err != nil {
			failed = errors.Join(failed, fmt.Errorf("%s: %w", c.Name, err))
		}
	}
	s.mu.Lock()
	changed := s.ready != (failed == nil)
	s.ready = failed == nil
	s.mu.Unlock()
	if !changed {
		return
	}
	if failed != nil {
		s.log.Warn("not ready", "error", failed)
	} else {
		s.log.Info("ready")
	}
	s.setReadiness(failed == nil)
}

// Serve serves on lis until ctx ends, then drains: every health status NOT_SERVING, DrainDelay
// for load balancers to notice, GracefulStop bounded by DrainTimeout, then Stop.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	probeCtx, stopProbe := context.WithCancel(ctx)
	probed := make(chan struct{})
	go func() {
		defer close(probed)
		t := time.NewTicker(s.opts.ReadinessInterval)
		defer t.Stop()
		for {
			s.probe(probeCtx)
			select {
			case <-probeCtx.Done():
				return
			case <-t.C:
			}
		}
	}()
	serveErr := make(chan error, 1)
	go func() { serveErr <- s.grpc.Serve(lis) }()

	select {
	case err := <-serveErr:
		stopProbe()
		<-probed
		return fmt.Errorf("grpc serve: %w", err)
	case <-ctx.Done():
	}
	stopProbe()
	<-probed
	s.health.Shutdown() // every service NOT_SERVING, and stays so
	if s.opts.DrainDelay > 0 {
		time.Sleep(s.opts.DrainDelay)
	}
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(s.opts.DrainTimeout):
		s.log.Warn("drain timeout: cutting running calls", "timeout", s.opts.DrainTimeout)
		s.grpc.Stop()
		<-stopped
	}
	if err := <-serveErr; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("grpc serve: %w", err)
	}
	return nil
}
