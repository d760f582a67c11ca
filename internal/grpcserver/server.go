// Package grpcserver is the one place a Postamt gRPC server is built, so that every service has
// the same health and readiness, reflection, tracing, panic recovery, request ids, request logs,
// metrics, authentication, error mapping, limits and drain. A service only registers its API.
//
// The shape follows temporal's frontend service (Start/Stop): health is failed first so load
// balancers stop sending, then the server drains, then what is left is cut.
package grpcserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
)

// ReadinessService is the health service name whose status includes the dependencies (Redis,
// NATS): Kubernetes readiness probes ask for it (grpc.health.v1 with service "readiness"), while
// liveness asks for "" (the process itself).
const ReadinessService = "readiness"

// Defaults of the Options fields left zero.
const (
	DefaultMaxRecvBytes      = 32 << 20
	DefaultReadinessInterval = 2 * time.Second
	DefaultDrainTimeout      = 30 * time.Second
)

// Keepalive settings shared by servers and Dial: clients ping idle connections every
// clientPingInterval, which must not be more often than the servers' enforcement minimum, or the
// server closes the connection with "too many pings".
const (
	serverPingInterval = 2 * time.Minute
	pingTimeout        = 20 * time.Second
	minClientPing      = 10 * time.Second
	clientPingInterval = 30 * time.Second
)

// Check is one dependency the server is ready only with: Probe returns nil while it is usable.
// Probe must honour its context's deadline.
type Check struct {
	// Name says which dependency failed, in the log.
	Name string
	// Probe reports whether the dependency is usable now.
	Probe func(ctx context.Context) error
}

// Options configure a Server. Zero values are the documented defaults.
type Options struct {
	// Name lists the full names of the services registered (e.g. "postamt.mailbox.v1.MailboxService");
	// their health status follows readiness, like ReadinessService.
	Name []string
	// Logger receives request logs and readiness changes; nil discards them.
	Logger *slog.Logger
	// Verifier authenticates calls; nil accepts every call unauthenticated (only for tests of open
	// servers: services always set it).
	Verifier *auth.Verifier
	// MaxRecvBytes bounds a request message; 0 means DefaultMaxRecvBytes.
	MaxRecvBytes int
	// Readiness are the dependencies probed every ReadinessInterval, concurrently, each with the
	// interval as its timeout.
	Readiness []Check
	// ReadinessInterval is how often readiness is probed; 0 means DefaultReadinessInterval.
	ReadinessInterval time.Duration
	// DrainDelay is the time between reporting NOT_SERVING and refusing new calls, so load
	// balancers and Kubernetes notice first; 0 (tests) goes straight on.
	DrainDelay time.Duration
	// DrainTimeout bounds how long running calls may take to finish once the drain refuses new
	// ones; then they are cut. 0 means DefaultDrainTimeout.
	DrainTimeout time.Duration
	// EndOnDrain lists the full names of server streams that never end by themselves (watches,
	// e.g. "/postamt.outbox.v1.OutboxService/WatchEmails"): when the drain refuses new calls,
	// their context ends, so that an open watch does not hold the drain for DrainTimeout (a
	// browser tab on the console kept `postamt up` from stopping for 30 s). Their clients
	// reconnect, to another replica.
	EndOnDrain []string
	// Metrics receives the request counters and latencies; nil skips them. Servers of one process
	// may share a registerer: the collectors are registered once and shared.
	Metrics prometheus.Registerer
	// TracerProvider makes the server spans; nil means OpenTelemetry's global provider (see
	// telemetry.SetupTracing).
	TracerProvider trace.TracerProvider
	// Register adds the service implementations.
	Register func(*grpc.Server)
	// ServerOptions are added after the server's own: the gateway's forwarding handler and codec,
	// and its interceptors, which run inside the chain above (after auth).
	ServerOptions []grpc.ServerOption
	// Reflect names services this server answers without registering them (the gateway forwards
	// them); reflection lists them too, from the descriptors linked into the binary.
	Reflect []string
	// TenantExists, when set, refuses writes (methods of the Name services not declared
	// NO_SIDE_EFFECTS) into a tenant that does not exist with FAILED_PRECONDITION
	// TENANT_NOT_FOUND; services that do not own tenants set it to ask mailbox.
	TenantExists TenantExists
}

// Server is a gRPC server with the suite's interceptors, health, reflection and drain.
type Server struct {
	opts   Options
	grpc   *grpc.Server
	health *health.Server
	log    *slog.Logger

	mu      sync.Mutex
	ready   bool
	serving bool

	// draining is closed when the drain refuses new calls; the streams of EndOnDrain end then.
	draining chan struct{}
}

// New builds the server and registers health, reflection and opts.Register's services; nothing
// listens until Serve.
func New(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxRecvBytes == 0 {
		opts.MaxRecvBytes = DefaultMaxRecvBytes
	}
	if opts.ReadinessInterval == 0 {
		opts.ReadinessInterval = DefaultReadinessInterval
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = DefaultDrainTimeout
	}
	switch {
	case opts.MaxRecvBytes < 0, opts.ReadinessInterval < 0, opts.DrainTimeout < 0, opts.DrainDelay < 0:
		return nil, errors.New("grpcserver: negative MaxRecvBytes, ReadinessInterval, DrainDelay or DrainTimeout")
	}
	for _, c := range opts.Readiness {
		if c.Name == "" || c.Probe == nil {
			return nil, fmt.Errorf("grpcserver: readiness check %q needs a name and a probe", c.Name)
		}
	}
	m, err := newMetrics(opts.Metrics)
	if err != nil {
		return nil, err
	}

	// The chain, outermost first:
	//   recover      a panic anywhere in the chain becomes Internal instead of killing the process
	//   request id   taken from x-request-id or made; into the context, the logs and the header
	//   observe      one log line and the metrics per call, with the code the caller sees
	//   recover      a panic in the handler, so that it is logged and counted as Internal too
	//   map errors   domain errors (the handler's and auth's) become statuses, exactly once
	//   auth         the principal into the context; open methods pass
	//   tenant       writes into a tenant that does not exist are refused (TenantExists)
	//   principal    hands the authenticated context back to the log line
	unary := []grpc.UnaryServerInterceptor{
		recoverUnary(opts.Logger), requestIDUnary(), observeUnary(opts.Logger, m),
		recoverUnary(opts.Logger), mapErrorsUnary(),
	}
	stream := []grpc.StreamServerInterceptor{
		recoverStream(opts.Logger), requestIDStream(), observeStream(opts.Logger, m),
		recoverStream(opts.Logger), mapErrorsStream(),
	}
	if opts.Verifier != nil {
		unary = append(unary, auth.UnaryServerInterceptor(opts.Verifier))
		stream = append(stream, auth.StreamServerInterceptor(opts.Verifier))
	}
	if opts.TenantExists != nil {
		g, err := newTenantGuard(opts.TenantExists, opts.Name)
		if err != nil {
			return nil, err
		}
		unary = append(unary, g.unary())
		stream = append(stream, g.stream())
	}
	unary = append(unary, rememberUnary())
	stream = append(stream, rememberStream())
	draining := make(chan struct{})
	if len(opts.EndOnDrain) > 0 {
		stream = append(stream, endOnDrainStream(opts.EndOnDrain, draining))
	}

	otelOpts := []otelgrpc.Option{otelgrpc.WithFilter(notHealth)}
	if opts.TracerProvider != nil {
		otelOpts = append(otelOpts, otelgrpc.WithTracerProvider(opts.TracerProvider))
	}
	s := &Server{opts: opts, log: opts.Logger, health: health.NewServer(), draining: draining}
	serverOpts := []grpc.ServerOption{
		grpc.StatsHandler(otelgrpc.NewServerHandler(otelOpts...)),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.MaxRecvMsgSize(opts.MaxRecvBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: serverPingInterval, Timeout: pingTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: minClientPing, PermitWithoutStream: true}),
		// Reused handler goroutines keep their grown stacks: without them every call starts on a
		// fresh 8 KiB stack and grows it through the interceptor chain (copystack was 8% of CPU in
		// the P5 benchmark). Calls beyond the workers still get goroutines of their own.
		grpc.NumStreamWorkers(uint32(4 * runtime.GOMAXPROCS(0))),
	}
	s.grpc = grpc.NewServer(append(serverOpts, opts.ServerOptions...)...)
	healthpb.RegisterHealthServer(s.grpc, s.health)
	if len(opts.Reflect) == 0 {
		reflection.Register(s.grpc)
	} else {
		ro := reflection.ServerOptions{Services: reflected{s.grpc, opts.Reflect}}
		reflectionv1.RegisterServerReflectionServer(s.grpc, reflection.NewServerV1(ro))
		reflectionv1alpha.RegisterServerReflectionServer(s.grpc, reflection.NewServer(ro))
	}
	if opts.Register != nil {
		opts.Register(s.grpc)
	}
	// Alive from the start; ready only once the first probe round has passed.
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.setReadiness(false)
	return s, nil
}

// notHealth keeps health checks out of traces: probes every few seconds would drown the rest.
func notHealth(info *stats.RPCTagInfo) bool {
	return !auth.OpenMethod(info.FullMethodName)
}

// Ready reports whether the last readiness round passed.
func (s *Server) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready
}

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

// probe runs every readiness check once, concurrently, and publishes the result when it changed.
// A probe still running at the deadline counts as failed and is left behind, so a probe that
// ignores its context can hold neither readiness nor the drain.
func (s *Server) probe(ctx context.Context) {
	checks := s.opts.Readiness
	pctx, cancel := context.WithTimeout(ctx, s.opts.ReadinessInterval)
	defer cancel()
	type result struct {
		i   int
		err error
	}
	results := make(chan result, len(checks)) // buffered: a late probe never blocks
	for i, c := range checks {
		go func() { results <- result{i, c.Probe(pctx)} }()
	}
	errList := make([]error, len(checks))
	answered := make([]bool, len(checks))
collect:
	for range checks {
		select {
		case r := <-results:
			answered[r.i] = true
			if r.err != nil {
				errList[r.i] = fmt.Errorf("%s: %w", checks[r.i].Name, r.err)
			}
		case <-pctx.Done():
			for i, ok := range answered {
				if !ok {
					errList[i] = fmt.Errorf("%s: no answer within %s", checks[i].Name, s.opts.ReadinessInterval)
				}
			}
			break collect
		}
	}
	if ctx.Err() != nil {
		return // draining: the result means nothing
	}
	failed := errors.Join(errList...)
	s.mu.Lock()
	changed := s.ready != (failed == nil)
	s.ready = failed == nil
	s.mu.Unlock()
	if !changed {
		return
	}
	if failed != nil {
		s.log.Warn("not ready", "error", failed.Error())
	} else {
		s.log.Info("ready")
	}
	s.setReadiness(failed == nil)
}

// Serve serves on lis until ctx ends, then drains: every health status NOT_SERVING, DrainDelay
// for load balancers to notice, GracefulStop (new calls refused, running ones finish) bounded by
// DrainTimeout, then Stop, which cuts what is still running. It returns nil after a drain, or the
// error that ended serving early. A Server serves once.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	s.mu.Lock()
	if s.serving {
		s.mu.Unlock()
		return errors.New("grpcserver: Serve called twice")
	}
	s.serving = true
	s.mu.Unlock()

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
		s.grpc.Stop()
		return fmt.Errorf("grpc serve on %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	stopProbe()
	<-probed

	s.log.Info("draining", "delay", s.opts.DrainDelay, "timeout", s.opts.DrainTimeout)
	s.health.Shutdown() // every service NOT_SERVING, and it stays so
	if s.opts.DrainDelay > 0 {
		<-time.After(s.opts.DrainDelay)
	}
	cut := time.AfterFunc(s.opts.DrainTimeout, func() {
		s.log.Warn("drain timeout: cutting running calls", "timeout", s.opts.DrainTimeout)
		s.grpc.Stop()
	})
	close(s.draining)
	s.grpc.GracefulStop()
	cut.Stop()
	if err := <-serveErr; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("grpc serve on %s: %w", lis.Addr(), err)
	}
	s.log.Info("drained")
	return nil
}

// reflected is what reflection lists: the registered services and the forwarded ones. Reflection
// reads only the names; their descriptors come from the protobuf registry of the binary.
type reflected struct {
	srv   *grpc.Server
	names []string
}

func (r reflected) GetServiceInfo() map[string]grpc.ServiceInfo {
	out := r.srv.GetServiceInfo()
	for _, n := range r.names {
		if _, ok := out[n]; !ok {
			out[n] = grpc.ServiceInfo{}
		}
	}
	return out
}

// endOnDrainStream ends the context of the streams named in methods when draining closes (see
// Options.EndOnDrain); one that then ends as cancelled answers UNAVAILABLE. It is the innermost
// interceptor: the handler's context is the caller's, authenticated, and ends with the drain as
// well.
//
//nolint:contextcheck // a stream interceptor's context is the stream's (ss.Context()), not its builder's
func endOnDrainStream(methods []string, draining <-chan struct{}) grpc.StreamServerInterceptor {
	names := make(map[string]bool, len(methods))
	for _, m := range methods {
		names[m] = true
	}
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !names[info.FullMethod] {
			return handler(srv, ss)
		}
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		go func() {
			select {
			case <-draining:
				cancel()
			case <-ctx.Done():
			}
		}()
		err := handler(srv, &drainingStream{ServerStream: ss, ctx: ctx})
		if err != nil && ss.Context().Err() == nil && (errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled) {
			// Ended by the drain, not by its client (a forwarded stream's upstream call answers
			// CANCELLED then): UNAVAILABLE tells the client to reconnect, to another replica.
			return errs.Unavailable("the server is shutting down; reconnect", time.Second, nil)
		}
		return err
	}
}

// drainingStream is a stream whose context ends with the drain.
type drainingStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *drainingStream) Context() context.Context { return s.ctx }
