package grpcserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/logging"
)

// RequestIDHeader carries the request id in (request metadata) and out (response header). A
// caller's id is kept, so a request through the gateway and the services shares one id; Dial
// forwards it on outgoing calls.
const RequestIDHeader = "x-request-id"

// maxRequestIDLen bounds a caller's request id; longer or odd ones are replaced.
const maxRequestIDLen = 128

type requestIDKey struct{}

// RequestID returns the id of the request being served, or "" outside a request.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// WithRequestID returns ctx carrying id, for background work that wants its outgoing calls (via
// Dial) and logs tied to one id.
func WithRequestID(ctx context.Context, id string) context.Context {
	return logging.WithAttrs(context.WithValue(ctx, requestIDKey{}, id), slog.String("request_id", id))
}

// AcceptRequestID returns a caller's request id when the servers would keep it, else a new one:
// the same rule for edges that are not gRPC (the gateway's HTTP side), so that one id follows a
// request however it came in.
func AcceptRequestID(id string) string {
	if validRequestID(id) {
		return id
	}
	return newRequestID()
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// validRequestID accepts ids a log line can show as they are: printable ASCII without spaces or
// quotes, bounded in length.
func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for _, r := range id {
		if r <= ' ' || r > '~' || r == '"' || r == '\\' {
			return false
		}
	}
	return true
}

func withRequestID(ctx context.Context) context.Context {
	id := ""
	// One key, without copying the whole metadata map as FromIncomingContext would.
	if v := metadata.ValueFromIncomingContext(ctx, RequestIDHeader); len(v) > 0 && validRequestID(v[0]) {
		id = v[0]
	}
	if id == "" {
		id = newRequestID()
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(RequestIDHeader, id)) // fails only once headers are sent
	return WithRequestID(ctx, id)
}

func requestIDUnary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		return h(withRequestID(ctx), req)
	}
}

func requestIDStream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(srv, &ctxStream{ServerStream: ss, ctx: withRequestID(ss.Context())})
	}
}

// ctxStream is a server stream with a replaced context.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

// recovered turns a panic into a bare Internal status and logs it with its stack: one bad request
// must not take the process down, and the caller learns nothing of the internals.
func recovered(ctx context.Context, log *slog.Logger, method string, r any) error {
	log.ErrorContext(ctx, "panic in gRPC handler", "method", method, "panic", r, "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}

func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				resp, err = nil, recovered(ctx, log, info.FullMethod, r)
			}
		}()
		return h(ctx, req)
	}
}

//nolint:contextcheck // a stream interceptor's context is the stream's (ss.Context()), not its builder's
func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = recovered(ss.Context(), log, info.FullMethod, r)
			}
		}()
		return h(srv, ss)
	}
}

// metrics are the request counters and latencies, in the names and labels of
// go-grpc-prometheus, so the usual dashboards work.
type metrics struct {
	handled *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	handled := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "grpc_server_handled_total",
		Help: "RPCs completed on the server, by service, method and status code.",
	}, []string{"grpc_service", "grpc_method", "grpc_code"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "grpc_server_handling_seconds",
		Help:    "Time from the start of an RPC to its status, by service and method.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"grpc_service", "grpc_method"})
	var err error
	if handled, err = register(reg, handled); err != nil {
		return nil, err
	}
	if latency, err = register(reg, latency); err != nil {
		return nil, err
	}
	return &metrics{handled: handled, latency: latency}, nil
}

// register registers c, or returns the equal collector registered before (by another server of the
// same process).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

func splitMethod(fullMethod string) (service, method string) {
	service, method, ok := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if !ok {
		return "unknown", fullMethod
	}
	return service, method
}

func (m *metrics) observe(fullMethod string, code codes.Code, d time.Duration) {
	if m == nil {
		return
	}
	service, method := splitMethod(fullMethod)
	m.handled.WithLabelValues(service, method, code.String()).Inc()
	m.latency.WithLabelValues(service, method).Observe(d.Seconds())
}

// call is what the inner interceptors tell the outer observe interceptor about a call: the
// authenticated context (for the principal) and the error before mapping (for the log).
type call struct {
	ctx context.Context
	err error
	// dependency names the dependency of an outage (errs.ToStatusContext), for the log.
	dependency string
}

type callKey struct{}

// logCall logs a finished call: method, code, duration, request id, trace id and the principal by
// id (a calling service as peer_service); never messages or tokens. Health checks and reflection are logged at debug so probes do not
// flood the log; Internal-like codes (bugs) at error, with the unmapped error (the status hides
// it); Unavailable (an outage) at warn, with the dependency that failed.
//
//nolint:contextcheck // logs with context.Background on purpose: the attributes are explicit (see below)
func logCall(log *slog.Logger, c *call, method string, err error, d time.Duration) {
	code := status.Code(err)
	level := slog.LevelInfo
	switch {
	case code == codes.Internal || code == codes.Unknown || code == codes.DataLoss:
		level = slog.LevelError
	case code == codes.Unavailable:
		level = slog.LevelWarn
	case auth.OpenMethod(method):
		level = slog.LevelDebug
	}
	// The attributes are explicit, so the line does not depend on the handler type; hence
	// context.Background, which keeps logging.New's handler from adding them a second time.
	bg := context.Background()
	if !log.Enabled(bg, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs,
		slog.String("method", method), slog.String("code", code.String()),
		slog.Duration("duration", d), slog.String("request_id", RequestID(c.ctx)),
	)
	if sc := trace.SpanContextFromContext(c.ctx); sc.IsValid() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	if p, ok := auth.FromContext(c.ctx); ok {
		attrs = append(attrs, slog.String("tenant", p.Tenant))
		if p.User != "" {
			attrs = append(attrs, slog.String("user", p.User))
		}
		if p.Service != "" {
			// The calling service, under a key of its own: "service" is the service that
			// logs (the logger's own attribute), and a second one would make parsers
			// attribute the line to the caller.
			attrs = append(attrs, slog.String("peer_service", p.Service))
		}
	}
	if c.dependency != "" {
		attrs = append(attrs, slog.String("dependency", c.dependency))
	}
	if err != nil {
		detail := c.err
		if detail == nil {
			detail = err
		}
		attrs = append(attrs, slog.String("error", detail.Error()))
	}
	log.LogAttrs(bg, level, "rpc", attrs...)
}

func observeUnary(log *slog.Logger, m *metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		c := &call{ctx: ctx}
		resp, err := h(context.WithValue(ctx, callKey{}, c), req)
		d := time.Since(start)
		m.observe(info.FullMethod, status.Code(err), d)
		logCall(log, c, info.FullMethod, err, d)
		return resp, err
	}
}

func observeStream(log *slog.Logger, m *metrics) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		start := time.Now()
		c := &call{ctx: ss.Context()}
		err := h(srv, &ctxStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callKey{}, c)})
		d := time.Since(start)
		m.observe(info.FullMethod, status.Code(err), d)
		logCall(log, c, info.FullMethod, err, d)
		return err
	}
}

// remember records the authenticated context for the log line.
func remember(ctx context.Context) {
	if c, ok := ctx.Value(callKey{}).(*call); ok {
		c.ctx = ctx
	}
}

func rememberUnary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		remember(ctx)
		return h(ctx, req)
	}
}

func rememberStream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		remember(ss.Context())
		return h(srv, ss)
	}
}

// mapError turns a domain error into the status the caller sees (errs.ToStatusContext: a
// dependency's outage is Unavailable with RetryInfo, a bug Internal), and keeps the original and
// the failed dependency for the log line.
func mapError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	s, dep := errs.ToStatusContext(ctx, err)
	if c, ok := ctx.Value(callKey{}).(*call); ok {
		c.err, c.dependency = err, dep
	}
	return s.Err()
}

func mapErrorsUnary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		resp, err := h(ctx, req)
		if err != nil {
			return nil, mapError(ctx, err)
		}
		return resp, nil
	}
}

func mapErrorsStream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return mapError(ss.Context(), h(srv, ss))
	}
}
