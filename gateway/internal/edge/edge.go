// Package edge is what the gateway does to every request before it reaches a service: a request
// id, CORS, a bound on the body, authentication with the services' own JWT rules, and the
// per-caller rate limit. The same checks apply on both doors (HTTP/JSON and gRPC), so a caller
// meets one set of rules.
package edge

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"

	"github.com/postamt/postamt/gateway/internal/console"
	"github.com/postamt/postamt/gateway/internal/limit"
	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/grpcserver"
)

// OpenAPIPath is where the HTTP side serves the API's OpenAPI document, without authentication.
const OpenAPIPath = "/openapi.json"

// Options configure the HTTP edge.
type Options struct {
	// Mux serves the services' HTTP mappings; made by NewMux, whose error handler writes the
	// errors of the edge too, so they have the same google.rpc.Status shape and HTTP codes.
	Mux *runtime.ServeMux
	// Verifier authenticates callers by their bearer token, which is passed on unchanged.
	Verifier *auth.Verifier
	// Limiter is the per-caller rate limit shared with the gRPC side.
	Limiter *limit.Limiter
	// CORSOrigins are the origins browsers may call from; "*" allows any. Empty: no CORS headers.
	CORSOrigins []string
	// MaxBodyBytes bounds a request body.
	MaxBodyBytes int64
	// OpenAPI is the document served at OpenAPIPath.
	OpenAPI []byte
	// Console serves /console/ and lets the API accept its session cookie; nil serves no
	// console and accepts no cookie.
	Console *console.Console
	// Logger receives one line per request (method, path, status, duration, request id, caller);
	// nil discards them.
	Logger *slog.Logger
}

// CallerKey names a caller's rate-limit bucket: per user, and per service for service tokens.
func CallerKey(p auth.Principal) string {
	if p.IsService() {
		return p.Tenant + "\x00svc\x00" + p.Service
	}
	return p.Tenant + "\x00usr\x00" + p.User
}

// Handler returns the HTTP side of the gateway.
func Handler(o Options) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	serve := o.serve
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		x := &exchange{maxBody: o.MaxBodyBytes}
		serve(sw, r.WithContext(withExchange(r.Context(), x)), x)
		caller := x.caller
		attrs := []slog.Attr{
			slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Int("status", sw.status),
			slog.Duration("duration", time.Since(start)), slog.String("request_id", w.Header().Get("X-Request-Id")),
		}
		// The caller by id, only what it has; a calling service under peer_service, never a
		// second "service" beside the gateway's own.
		for _, a := range []slog.Attr{slog.String("tenant", caller.Tenant), slog.String("user", caller.User), slog.String("peer_service", caller.Service)} {
			if a.Value.String() != "" {
				attrs = append(attrs, a)
			}
		}
		if x.failed != nil {
			attrs = append(attrs, slog.String("code", x.failed.Code().String()), slog.String("error", x.failed.Message()))
		}
		// A 5xx is the suite's fault (or a dependency's), never the caller's: it is an error.
		level := slog.LevelInfo
		if sw.status >= http.StatusInternalServerError {
			level = slog.LevelError
		}
		o.Logger.LogAttrs(r.Context(), level, "http request", attrs...)
	})
}

// statusWriter remembers the status for the log line; it keeps Flush, which grpc-gateway needs
// for streams.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool // the header is out: a later status (a stream's error after openStream) is logged only
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	if w.wrote {
		return
	}
	w.wrote = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// serve handles one request; x learns the caller, when authenticated.
func (o Options) serve(w http.ResponseWriter, r *http.Request, x *exchange) {
	id := grpcserver.AcceptRequestID(r.Header.Get("X-Request-Id"))
	r.Header.Set("X-Request-Id", id) // passed on to the service as x-request-id metadata
	w.Header().Set("X-Request-Id", id)
	if o.cors(w, r) {
		return
	}
	if r.URL.Path == OpenAPIPath && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(o.OpenAPI)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(o.OpenAPI)
		}
		return
	}
	if o.Console != nil && (r.URL.Path == "/console" || strings.HasPrefix(r.URL.Path, console.Path)) {
		if r.URL.Path == "/console" {
			http.Redirect(w, r, console.Path, http.StatusMovedPermanently)
			return
		}
		o.Console.ServeHTTP(w, r)
		return
	}
	ctx := grpcserver.WithRequestID(r.Context(), id)
	if err := o.sessionCookie(r); err != nil {
		o.fail(ctx, w, r, err)
		return
	}
	// The gRPC side's rules (auth.Verifier.Authenticate): one Authorization value, "Bearer
	// <token>" with the scheme in any case; no message repeats what was sent.
	switch vals := r.Header.Values("Authorization"); {
	case len(vals) == 0 || vals[0] == "":
		o.fail(ctx, w, r, errs.Unauthenticated("missing bearer token (Authorization: Bearer <JWT>)", nil))
		return
	case len(vals) > 1:
		o.fail(ctx, w, r, errs.Unauthenticated("more than one Authorization header", nil))
		return
	}
	token, err := auth.BearerToken(r.Header.Get("Authorization"))
	if err != nil {
		o.fail(ctx, w, r, err)
		return
	}
	p, err := o.Verifier.Verify(token)
	if err != nil {
		o.fail(ctx, w, r, err)
		return
	}
	x.caller = p
	if wait, ok := o.Limiter.Allow(CallerKey(p)); !ok {
		o.fail(ctx, w, r, limited(wait)) // Retry-After from its RetryInfo
		return
	}
	if r.ContentLength > o.MaxBodyBytes {
		o.fail(ctx, w, r, x.tooLarge()) // 413, before reading it
		return
	}
	// A body without a length stops at the bound too.
	r.Body = boundedBody{ReadCloser: http.MaxBytesReader(w, r.Body, o.MaxBodyBytes), x: x}
	o.Mux.ServeHTTP(w, r.WithContext(ctx))
}

// sessionCookie turns the console's session cookie into the Authorization header of a request
// that has none, when the console's own scripts sent it (console.Token); an explicit
// Authorization header wins. Cookies never travel on to the services (grpc-gateway would pass
// them on as metadata): the token reaches them only as the bearer token.
func (o Options) sessionCookie(r *http.Request) error {
	defer r.Header.Del("Cookie")
	if o.Console == nil || len(r.Header.Values("Authorization")) > 0 {
		return nil
	}
	token, err := o.Console.Token(r)
	if err != nil {
		return errs.PermissionDenied("CROSS_SITE_REQUEST", err.Error())
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	return nil
}

func limited(wait time.Duration) error {
	return errs.ResourceExhausted("RATE_LIMITED", "too many requests from this caller; retry after the delay given", wait)
}

// fail writes err as the services' errors are written: a google.rpc.Status in the marshaler the
// request asked for, with its HTTPStatus.
func (o Options) fail(ctx context.Context, w http.ResponseWriter, r *http.Request, err error) {
	_, out := runtime.MarshalerForRequest(o.Mux, r)
	runtime.HTTPError(ctx, o.Mux, out, w, r, errs.ToStatus(err).Err())
}

// cors sets the CORS headers for an allowed origin and answers a preflight; it reports whether
// the request was answered.
func (o Options) cors(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || len(o.CORSOrigins) == 0 || !slices.Contains(o.CORSOrigins, "*") && !slices.Contains(o.CORSOrigins, origin) {
		return false
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	h.Set("Access-Control-Expose-Headers", "X-Request-Id, Retry-After")
	if r.Method != http.MethodOptions || r.Header.Get("Access-Control-Request-Method") == "" {
		return false
	}
	h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE")
	h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Request-Id")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
	return true
}

// LimitUnary applies the per-caller limit to unary gRPC calls; it runs after authentication.
// Open methods (health, reflection) carry no principal and are not limited.
func LimitUnary(l *limit.Limiter) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := allow(ctx, l); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// LimitStream applies the per-caller limit to the start of streaming gRPC calls (and to every
// forwarded call, which the gateway handles as a stream).
//
//nolint:contextcheck // a stream interceptor's context is the stream's (ss.Context()), not its builder's
func LimitStream(l *limit.Limiter) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := allow(ss.Context(), l); err != nil {
			return err
		}
		return h(srv, ss)
	}
}

func allow(ctx context.Context, l *limit.Limiter) error {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return nil
	}
	if wait, ok := l.Allow(CallerKey(p)); !ok {
		return limited(wait)
	}
	return nil
}
