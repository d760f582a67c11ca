// Package app wires the gateway: the one front door of the suite. Its gRPC port forwards every
// service's calls (one address for clients and grpcurl, with reflection of every service); its
// HTTP port serves every service's HTTP/JSON mapping through grpc-gateway, with the OpenAPI
// document. Both authenticate with the services' own JWT rules and pass the token on, so each
// service still decides what the caller may do; both apply one per-caller rate limit.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/postamt/postamt/gateway/internal/console"
	"github.com/postamt/postamt/gateway/internal/edge"
	"github.com/postamt/postamt/gateway/internal/limit"
	"github.com/postamt/postamt/gateway/internal/proxy"
	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	postamtproto "github.com/postamt/postamt/proto"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
)

// Name is the gateway's name in logs and metrics.
const Name = "gateway"

// Config is the gateway's own configuration; the shared part (GRPC_ADDR, auth, drain) is
// config.Common, read by the caller.
type Config struct {
	HTTPAddr     string        `env:"GATEWAY_HTTP_ADDR, default=:8080" desc:"listen address of the HTTP/JSON API and /openapi.json"`
	MailboxAddr  string        `env:"GATEWAY_MAILBOX_ADDR, default=127.0.0.1:9090" desc:"gRPC address of the mailbox service"`
	OutboxAddr   string        `env:"GATEWAY_OUTBOX_ADDR, default=127.0.0.1:9092" desc:"gRPC address of the outbox service"`
	TrackerAddr  string        `env:"GATEWAY_TRACKER_ADDR, default=127.0.0.1:9094" desc:"gRPC address of the tracker service"`
	CalendarAddr string        `env:"GATEWAY_CALENDAR_ADDR, default=127.0.0.1:9096" desc:"gRPC address of the calendar service (its live agents' Connect streams too)"`
	RatePerSec   float64       `env:"GATEWAY_RATE, default=100" desc:"requests per second each caller (a user, or a service, of a tenant) may make, over HTTP and gRPC together"`
	RateBurst    int           `env:"GATEWAY_RATE_BURST, default=200" desc:"requests a caller may make at once before GATEWAY_RATE applies"`
	RateCallers  int           `env:"GATEWAY_RATE_CALLERS, default=100000" desc:"callers whose rate the gateway remembers; beyond it, idle ones are forgotten first"`
	CORSOrigins  string        `env:"GATEWAY_CORS_ORIGINS" desc:"comma-separated origins browsers may call the HTTP API from (* for any); empty sends no CORS headers"`
	MaxBodyBytes int64         `env:"GATEWAY_MAX_BODY_BYTES, default=37748736" desc:"largest HTTP request body, in bytes (a 25 MiB email with base64 attachments in JSON needs about 34 MiB)"`
	HTTPTimeout  time.Duration `env:"GATEWAY_HTTP_READ_TIMEOUT, default=60s" desc:"time to read an HTTP request, headers and body"`
	Console      bool          `env:"GATEWAY_CONSOLE, default=true" desc:"serve the outbox console at /console/ and accept its HttpOnly session cookie on the HTTP API (same-origin calls only)"`
	// The console's sign-in with the identity provider (docs/console.md); off without an issuer.
	OIDCIssuer           string `env:"GATEWAY_OIDC_ISSUER" desc:"OpenID Connect issuer URL the console signs people in with (code flow with PKCE); empty: sign-in by pasted token only"`
	OIDCClientID         string `env:"GATEWAY_OIDC_CLIENT_ID" desc:"the gateway's client id at GATEWAY_OIDC_ISSUER"`
	OIDCClientSecretFile string `env:"GATEWAY_OIDC_CLIENT_SECRET_FILE" desc:"file holding the client secret (a confidential client); empty for a public client"`
	OIDCRedirectURL      string `env:"GATEWAY_OIDC_REDIRECT_URL" desc:"the console's callback as registered at the provider: https://<gateway>/console/callback"`
	OIDCScopes           string `env:"GATEWAY_OIDC_SCOPES, default=openid" desc:"space-separated scopes the console asks the provider for (openid always)"`
}

// Validate checks the values no default can fix.
func (c *Config) Validate() error {
	var errList []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errList = append(errList, fmt.Errorf(format, args...))
		}
	}
	check(c.HTTPAddr != "", "GATEWAY_HTTP_ADDR is required")
	check(c.MailboxAddr != "" && c.OutboxAddr != "" && c.TrackerAddr != "" && c.CalendarAddr != "", "GATEWAY_MAILBOX_ADDR, GATEWAY_OUTBOX_ADDR, GATEWAY_TRACKER_ADDR and GATEWAY_CALENDAR_ADDR are required")
	check(c.RatePerSec > 0 && c.RatePerSec <= 1e6, "GATEWAY_RATE must be above 0 and at most 1000000, got %g", c.RatePerSec)
	check(c.RateBurst >= 1 && c.RateBurst <= 1e6, "GATEWAY_RATE_BURST must be between 1 and 1000000, got %d", c.RateBurst)
	check(c.RateCallers >= 1 && c.RateCallers <= 10_000_000, "GATEWAY_RATE_CALLERS must be between 1 and 10000000, got %d", c.RateCallers)
	check(c.MaxBodyBytes >= 1024, "GATEWAY_MAX_BODY_BYTES must be at least 1024, got %d", c.MaxBodyBytes)
	check(c.HTTPTimeout >= time.Second, "GATEWAY_HTTP_READ_TIMEOUT must be at least 1s, got %s", c.HTTPTimeout)
	check(c.OIDCIssuer == "" || c.OIDCClientID != "" && c.OIDCRedirectURL != "", "GATEWAY_OIDC_ISSUER needs GATEWAY_OIDC_CLIENT_ID and GATEWAY_OIDC_REDIRECT_URL")
	return errors.Join(errList...)
}

func (c *Config) origins() []string {
	var out []string
	for o := range strings.SplitSeq(c.CORSOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, o)
		}
	}
	return out
}

// Deps are what the gateway shares with its process.
type Deps struct {
	Logger   *slog.Logger
	Verifier *auth.Verifier
	Metrics  *prometheus.Registry
	// Server is the base of the gRPC server's options (drain, limits); the gateway adds the rest.
	Server grpcserver.Options
	// Now is the clock of the rate limit and the console's cookies; nil means time.Now.
	Now func() time.Time
	// ConsoleCodes are the one-time sign-in codes the console accepts (`postamt up` issues one
	// for its dev user); nil accepts none, as in production, where people sign in with a token
	// of the identity provider.
	ConsoleCodes *ConsoleCodes
}

// ConsoleCodes are one-time console sign-in codes, each standing for a token: the URL `postamt
// up` prints carries a code, never the token.
type ConsoleCodes = console.Codes

// NewConsoleCodes returns an empty set of codes; now is its clock (nil: time.Now).
func NewConsoleCodes(now func() time.Time) *ConsoleCodes { return console.NewCodes(now) }

// App is a wired gateway.
type App struct {
	cfg     Config
	deps    Deps
	conns   []*grpc.ClientConn
	server  *grpcserver.Server
	http    *http.Server
	httpLis net.Listener
}

// New dials the services (lazily: nothing connects until the first call), builds both servers
// and opens the HTTP listener, so a wrong address fails at start-up.
func New(ctx context.Context, cfg Config, deps Deps) (_ *App, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Verifier == nil {
		return nil, errors.New("gateway: a verifier is required: the edge authenticates every call")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	a := &App{cfg: cfg, deps: deps}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	dial := func(addr string) (*grpc.ClientConn, error) {
		conn, err := grpcserver.Dial(addr, grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(grpcserver.DefaultMaxRecvBytes)))
		if err == nil {
			a.conns = append(a.conns, conn)
		}
		return conn, err
	}
	mailbox, err := dial(cfg.MailboxAddr)
	if err != nil {
		return nil, err
	}
	outbox, err := dial(cfg.OutboxAddr)
	if err != nil {
		return nil, err
	}
	tracker, err := dial(cfg.TrackerAddr)
	if err != nil {
		return nil, err
	}
	calendar, err := dial(cfg.CalendarAddr)
	if err != nil {
		return nil, err
	}
	fwd := proxy.New(map[string]*grpc.ClientConn{
		calendarv1.CalendarService_ServiceDesc.ServiceName: calendar,
		mailboxv1.MailboxService_ServiceDesc.ServiceName:   mailbox,
		outboxv1.OutboxService_ServiceDesc.ServiceName:     outbox,
		trackerv1.TrackerService_ServiceDesc.ServiceName:   tracker,
	})
	limiter := limit.New(cfg.RatePerSec, cfg.RateBurst, cfg.RateCallers, deps.Now)

	opts := deps.Server
	opts.Logger, opts.Verifier, opts.Metrics = deps.Logger, deps.Verifier, deps.Metrics
	opts.Name = fwd.Services()
	slices.Sort(opts.Name)
	opts.Reflect = opts.Name
	// A forwarded watch or agent stream ends with the gateway's drain too (its client reconnects).
	opts.EndOnDrain = append(opts.EndOnDrain, outboxv1.OutboxService_WatchEmails_FullMethodName, calendarv1.CalendarService_Connect_FullMethodName)
	opts.ServerOptions = append(opts.ServerOptions,
		grpc.UnknownServiceHandler(fwd.Handler),
		grpc.ForceServerCodecV2(proxy.NewCodec()),
		grpc.ChainUnaryInterceptor(edge.LimitUnary(limiter)),
		grpc.ChainStreamInterceptor(edge.LimitStream(limiter)),
	)
	if a.server, err = grpcserver.New(opts); err != nil {
		return nil, err
	}

	mux, err := edge.NewMux(opts.Name,
		runtime.WithIncomingHeaderMatcher(func(k string) (string, bool) {
			if strings.EqualFold(k, grpcserver.RequestIDHeader) {
				return grpcserver.RequestIDHeader, true
			}
			return runtime.DefaultHeaderMatcher(k)
		}),
		runtime.WithOutgoingHeaderMatcher(func(k string) (string, bool) {
			if k == grpcserver.RequestIDHeader {
				return "", false // the edge has set X-Request-Id already
			}
			return runtime.MetadataHeaderPrefix + k, true
		}),
	)
	if err != nil {
		return nil, err
	}
	if err := mailboxv1.RegisterMailboxServiceHandlerClient(ctx, mux, mailboxv1.NewMailboxServiceClient(mailbox)); err != nil {
		return nil, fmt.Errorf("gateway: mailbox routes: %w", err)
	}
	if err := outboxv1.RegisterOutboxServiceHandlerClient(ctx, mux, outboxv1.NewOutboxServiceClient(outbox)); err != nil {
		return nil, fmt.Errorf("gateway: outbox routes: %w", err)
	}
	if err := trackerv1.RegisterTrackerServiceHandlerClient(ctx, mux, trackerv1.NewTrackerServiceClient(tracker)); err != nil {
		return nil, fmt.Errorf("gateway: tracker routes: %w", err)
	}
	if err := calendarv1.RegisterCalendarServiceHandlerClient(ctx, mux, calendarv1.NewCalendarServiceClient(calendar)); err != nil {
		return nil, fmt.Errorf("gateway: calendar routes: %w", err)
	}
	var con *console.Console
	if cfg.Console {
		copts := console.Options{Verifier: deps.Verifier, Codes: deps.ConsoleCodes, Logger: deps.Logger, Now: deps.Now}
		if cfg.OIDCIssuer != "" {
			var secret []byte
			if cfg.OIDCClientSecretFile != "" {
				if secret, err = os.ReadFile(cfg.OIDCClientSecretFile); err != nil {
					return nil, fmt.Errorf("gateway: GATEWAY_OIDC_CLIENT_SECRET_FILE: %w", err)
				}
			}
			copts.OIDC = &console.OIDC{
				Issuer: cfg.OIDCIssuer, ClientID: cfg.OIDCClientID, ClientSecret: strings.TrimSpace(string(secret)),
				RedirectURL: cfg.OIDCRedirectURL, Scopes: strings.Fields(cfg.OIDCScopes),
			}
		}
		if con, err = console.New(copts); err != nil {
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	a.http = &http.Server{
		Handler: edge.Handler(edge.Options{
			Mux: mux, Verifier: deps.Verifier, Limiter: limiter, CORSOrigins: cfg.origins(),
			MaxBodyBytes: cfg.MaxBodyBytes, OpenAPI: postamtproto.OpenAPI(), Logger: deps.Logger, Console: con,
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       cfg.HTTPTimeout,
		ErrorLog:          slog.NewLogLogger(deps.Logger.Handler(), slog.LevelWarn),
	}
	if a.httpLis, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return nil, fmt.Errorf("gateway: listen on GATEWAY_HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	return a, nil
}

// HTTPAddr is the address the HTTP side listens on (useful with port 0).
func (a *App) HTTPAddr() string { return a.httpLis.Addr().String() }

// Run serves gRPC on lis and HTTP on the HTTP listener until ctx ends, then drains both: the
// gRPC side by its drain sequence, the HTTP side by refusing new requests and letting running
// ones (a watch stream at most DRAIN_TIMEOUT) finish.
func (a *App) Run(ctx context.Context, lis net.Listener) error {
	defer a.close()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.server.Serve(gctx, lis) })
	g.Go(func() error {
		if err := a.http.Serve(a.httpLis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("gateway http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		timeout := a.deps.Server.DrainTimeout
		if timeout == 0 {
			timeout = grpcserver.DefaultDrainTimeout
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.deps.Server.DrainDelay+timeout)
		defer cancel()
		if err := a.http.Shutdown(sctx); err != nil {
			_ = a.http.Close()
			return fmt.Errorf("gateway http drain: %w", err)
		}
		return nil
	})
	return g.Wait()
}

func (a *App) close() {
	if a.httpLis != nil {
		_ = a.httpLis.Close()
	}
	for _, c := range a.conns {
		_ = c.Close()
	}
}
