package app_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/gateway/app"
	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/logtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	calendarapp "github.com/postamt/postamt/services/calendar/app"
	mailboxapp "github.com/postamt/postamt/services/mailbox/app"
	outboxapp "github.com/postamt/postamt/services/outbox/app"
	trackerapp "github.com/postamt/postamt/services/tracker/app"
)

// env is the suite behind its gateway: mailbox and outbox on a spawned Redis and an embedded
// JetStream, mail leaving to an SMTP sink, and the gateway in front with its two doors. Clients
// reach the services only through the gateway.
type env struct {
	t       *testing.T
	js      jetstream.JetStream
	signer  *auth.Signer
	httpURL string
	conn    *grpc.ClientConn // to the gateway's gRPC port
	sink    *smtptest.Sink
	logs    *logtest.Buffer // the gateway's log
	// stopGateway drains and stops the gateway (cleanup calls it too) and returns what its Run
	// returned.
	stopGateway func() error
}

func startEnv(t *testing.T, tune func(*app.Config)) *env {
	t.Helper()
	rs, ns := redistest.Start(t), natstest.Start(t)
	rdb := rs.Client(t)
	e := &env{t: t, js: ns.JetStream(t), sink: smtptest.Start(t), logs: &logtest.Buffer{}}
	verifier, signer := authtest.Keys(t)
	e.signer = signer
	logger := slog.New(slog.DiscardHandler)
	serverOpts := grpcserver.Options{ReadinessInterval: 50 * time.Millisecond, DrainTimeout: time.Second}

	mb, err := mailboxapp.New(mailboxapp.Config{RelayBatch: 64, RelayClaimIdle: time.Second, SentView: true}, mailboxapp.Deps{
		Logger: logger, Redis: rdb, JS: e.js, Verifier: verifier, Metrics: prometheus.NewRegistry(), Server: serverOpts,
	})
	if err != nil {
		t.Fatal(err)
	}
	mbAddr := servetest.Run(t, mb.Run)
	ready(t, mbAddr)
	ob, err := outboxapp.New(outboxapp.Config{
		MailboxAddr: mbAddr, DefaultConnector: "default", MaxUndoDelay: 10 * time.Minute,
		MaxMessageBytes: 1 << 20, MaxRecipients: 50, ScheduleHorizon: 30 * 24 * time.Hour, Retention: time.Hour, Dispatch: true,
		ClaimBatch: 64, Lease: 10 * time.Second, ClaimAhead: 1, StopTimeout: 10 * time.Second, SMTPCommandTimeout: 2 * time.Second, SMTPSubmitTimeout: 3 * time.Second,
		SecretEnvPrefix: "POSTAMT_SMTP_", SecretDir: "/run/secrets/postamt", RelayBatch: 256, RelayClaimIdle: time.Second,
		MaxFilterScan: 10_000, MaxSelection: 100_000,
	}, outboxapp.Deps{
		Logger: logger, Redis: rdb, JS: e.js, Verifier: verifier, Signer: signer, Metrics: prometheus.NewRegistry(), Server: serverOpts,
		Getenv: func(string) string { return "" },
	})
	if err != nil {
		t.Fatal(err)
	}
	obAddr := servetest.Run(t, ob.Run)
	ready(t, obAddr)
	cal, err := calendarapp.New(calendarapp.Config{
		MailboxAddr: mbAddr, UserCacheTTL: time.Hour, Heartbeat: time.Second, AgentMaxAttempts: 3, AgentMaxUnanswered: 10, DeliveryBatch: 64,
		Push: false, PushRetry: "1s", PushMaxAttempts: 3, PushTimeout: 2 * time.Second, PushLease: 10 * time.Second,
		SecretEnvPrefix: "POSTAMT_CALDAV_", SecretDir: "/run/secrets/postamt", SyncLogMaxLines: 100, SyncLogRetention: time.Hour,
		RelayBatch: 256, RelayClaimIdle: time.Second,
	}, calendarapp.Deps{Logger: logger, Redis: rdb, JS: e.js, Verifier: verifier, Signer: signer, Metrics: prometheus.NewRegistry(), Server: serverOpts})
	if err != nil {
		t.Fatal(err)
	}
	calAddr := servetest.Run(t, cal.Run)
	ready(t, calAddr)
	tr, err := trackerapp.New(trackerapp.Config{
		MailboxAddr: mbAddr, SyncKindCacheTTL: time.Hour, DecisionRetention: time.Hour, ConsumeSent: true,
		RelayBatch: 256, RelayClaimIdle: time.Second, JournalDomain: "localhost", JournalMaxBytes: 1 << 20,
	}, trackerapp.Deps{Logger: logger, Redis: rdb, JS: e.js, Verifier: verifier, Signer: signer, Metrics: prometheus.NewRegistry(), Server: serverOpts})
	if err != nil {
		t.Fatal(err)
	}
	trAddr := servetest.Run(t, tr.Run)
	ready(t, trAddr)

	cfg := app.Config{
		HTTPAddr: "127.0.0.1:0", MailboxAddr: mbAddr, OutboxAddr: obAddr, TrackerAddr: trAddr, CalendarAddr: calAddr, RatePerSec: 1000, RateBurst: 1000, RateCallers: 1000,
		CORSOrigins: "https://kanzlei.example", MaxBodyBytes: 1 << 20, HTTPTimeout: 10 * time.Second,
	}
	if tune != nil {
		tune(&cfg)
	}
	gwLogger := slog.New(slog.NewJSONHandler(e.logs, nil))
	gw, err := app.New(context.Background(), cfg, app.Deps{Logger: gwLogger, Verifier: verifier, Metrics: prometheus.NewRegistry(), Server: serverOpts})
	if err != nil {
		t.Fatal(err)
	}
	gwAddr, stop := servetest.Start(t, gw.Run)
	e.stopGateway = stop
	e.conn = servetest.Dial(t, gwAddr)
	e.httpURL = "http://" + gw.HTTPAddr()
	health := grpc_health_v1.NewHealthClient(e.conn)
	poll.Eventually(t, "gateway readiness", func() bool {
		r, err := health.Check(context.Background(), &grpc_health_v1.HealthCheckRequest{Service: grpcserver.ReadinessService})
		return err == nil && r.GetStatus() == grpc_health_v1.HealthCheckResponse_SERVING
	})
	return e
}

// ready waits until the server at addr reports ready, so that a test never ends while a service
// is still starting (its Run would then fail on the canceled start-up).
func ready(t *testing.T, addr string) {
	t.Helper()
	health := grpc_health_v1.NewHealthClient(servetest.Dial(t, addr))
	poll.Eventually(t, "readiness of "+addr, func() bool {
		r, err := health.Check(context.Background(), &grpc_health_v1.HealthCheckRequest{Service: grpcserver.ReadinessService})
		return err == nil && r.GetStatus() == grpc_health_v1.HealthCheckResponse_SERVING
	})
}

func (e *env) token(p auth.Principal) string {
	e.t.Helper()
	tok, err := e.signer.Mint(p, time.Hour)
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

func (e *env) admin() string {
	return e.token(auth.Principal{Tenant: "kanzlei", User: "admin", Roles: []string{auth.RoleAdmin, "operator"}})
}

func (e *env) as(user string) string { return e.token(auth.Principal{Tenant: "kanzlei", User: user}) }

// call makes an HTTP request to the gateway and decodes a JSON answer into out (when not nil).
func (e *env) call(method, path, token string, body any, out any, header ...string) *http.Response {
	e.t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			e.t.Fatal(err)
		}
		r = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, e.httpURL+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			e.t.Fatalf("%s %s: decode answer (%s): %v", method, path, resp.Status, err)
		}
	}
	return resp
}

// rpcStatus is google.rpc.Status as the gateway writes it in JSON.
type rpcStatus struct {
	Code    int32             `json:"code"`
	Message string            `json:"message"`
	Details []json.RawMessage `json:"details"`
}

func (s rpcStatus) detailTypes() []string {
	var out []string
	for _, d := range s.Details {
		var typed struct {
			Type string `json:"@type"`
		}
		_ = json.Unmarshal(d, &typed)
		out = append(out, typed.Type)
	}
	return out
}

// seed makes the tenant kanzlei with the user eva, her mailbox and the default connector, over
// the gateway's HTTP side as an operator would with curl.
func (e *env) seed() {
	t := e.t
	t.Helper()
	admin := e.admin()
	host, port, _ := net.SplitHostPort(e.sink.Addr())
	for _, step := range []struct {
		path string
		body any
	}{
		{"/v1/tenants", map[string]any{"tenant": map[string]any{"tenantId": "kanzlei"}}},
		{"/v1/users", map[string]any{"user": map[string]any{"userId": "eva", "displayName": "Eva Beispiel", "email": "eva@kanzlei.example"}}},
		{"/v1/mailboxes", map[string]any{"mailbox": map[string]any{
			"mailboxId": "p-eva", "address": "eva@kanzlei.example", "displayName": "Eva Beispiel", "kind": "MAILBOX_KIND_PERSONAL", "ownerUserId": "eva",
		}}},
		{"/v1/outbox/connectors", map[string]any{"connector": map[string]any{
			"connectorId": "default", "host": host, "port": port, "tlsMode": "TLS_MODE_NONE", "retryPattern": []string{"60s"}, "maxAttempts": 3,
		}}},
	} {
		var st rpcStatus
		if resp := e.call(http.MethodPost, step.path, admin, step.body, &st); resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s: %s %+v", step.path, resp.Status, st)
		}
	}
}

// TestHTTPQuickStart: the README's curl walk through the gateway: create a mailbox, submit an
// email, list the outbox, and the email arrives at the relay.
func TestHTTPQuickStart(t *testing.T) {
	e := startEnv(t, nil)
	e.seed()
	eva := e.as("eva")
	var sub struct {
		Email struct {
			EmailID string `json:"emailId"`
			Status  string `json:"status"`
		} `json:"email"`
	}
	resp := e.call(http.MethodPost, "/v1/outbox/emails", eva, map[string]any{
		"fromAddress": "eva@kanzlei.example", "to": []string{"client@example.com"}, "subject": "Ueber das Gateway", "textBody": "Hallo",
		"sendAt": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
	}, &sub, "X-Request-Id", "quickstart-1")
	if resp.StatusCode != http.StatusOK || sub.Email.EmailID == "" || sub.Email.Status != "EMAIL_STATUS_SCHEDULED" {
		t.Fatalf("submit: %s %+v", resp.Status, sub)
	}
	if got := resp.Header.Get("X-Request-Id"); got != "quickstart-1" {
		t.Errorf("X-Request-Id %q, want the caller's", got)
	}
	poll.Eventually(t, "the request's log line", func() bool {
		return strings.Contains(e.logs.String(), `"path":"/v1/outbox/emails","status":200`) &&
			strings.Contains(e.logs.String(), `"request_id":"quickstart-1","tenant":"kanzlei","user":"eva"`)
	})
	var list struct {
		Emails []struct {
			EmailID string `json:"emailId"`
		} `json:"emails"`
	}
	if resp := e.call(http.MethodGet, "/v1/outbox/emails?view=VIEW_MINE", eva, nil, &list); resp.StatusCode != http.StatusOK || len(list.Emails) != 1 || list.Emails[0].EmailID != sub.Email.EmailID {
		t.Fatalf("list: %s %+v", resp.Status, list)
	}
	if resp := e.call(http.MethodPost, "/v1/outbox/emails:sendNow", eva, map[string]any{"selection": map[string]any{"emailIds": []string{sub.Email.EmailID}}}, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("send now: %s", resp.Status)
	}
	poll.Eventually(t, "the email at the relay", func() bool {
		for _, m := range e.sink.Messages() {
			if strings.Contains(string(m.Data), "Subject: Ueber das Gateway") {
				return true
			}
		}
		return false
	})
}

// TestHTTPConnectorCreatedDisabledAndMove: over HTTP/JSON, "enabled": false creates a connector
// disabled, its mail waits, and an admin moves it by filter (POST /v1/outbox/emails:move) to the
// working connector, where it leaves; anyone else is refused with 403.
func TestHTTPConnectorCreatedDisabledAndMove(t *testing.T) {
	e := startEnv(t, nil)
	e.seed()
	admin, eva := e.admin(), e.as("eva")
	host, port, _ := net.SplitHostPort(e.sink.Addr())
	var created struct {
		Connector map[string]any `json:"connector"`
	}
	resp := e.call(http.MethodPost, "/v1/outbox/connectors", admin, map[string]any{"connector": map[string]any{
		"connectorId": "reserve", "host": host, "port": port, "tlsMode": "TLS_MODE_NONE", "enabled": false,
	}}, &created)
	if enabled, ok := created.Connector["enabled"]; resp.StatusCode != http.StatusOK || !ok || enabled != false {
		t.Fatalf("create: %s %v, want enabled false", resp.Status, created.Connector)
	}
	var sub struct {
		Email struct {
			EmailID string `json:"emailId"`
		} `json:"email"`
	}
	if resp := e.call(http.MethodPost, "/v1/outbox/emails", eva, map[string]any{
		"fromAddress": "eva@kanzlei.example", "to": []string{"client@example.com"}, "subject": "Ueber die Reserve", "textBody": "Hallo", "connectorId": "reserve",
	}, &sub); resp.StatusCode != http.StatusOK {
		t.Fatalf("submit: %s", resp.Status)
	}
	poll.Eventually(t, "the email held as CONNECTOR_DISABLED", func() bool {
		var got struct {
			Email struct {
				Status string `json:"status"`
			} `json:"email"`
		}
		e.call(http.MethodGet, "/v1/outbox/emails/"+sub.Email.EmailID, eva, nil, &got)
		return got.Email.Status == "EMAIL_STATUS_CONNECTOR_DISABLED"
	})
	move := map[string]any{"selection": map[string]any{"view": "VIEW_ALL", "filter": map[string]any{"connectorId": "reserve"}}, "connectorId": "default"}
	var st rpcStatus
	if resp := e.call(http.MethodPost, "/v1/outbox/emails:move", eva, move, &st); resp.StatusCode != http.StatusForbidden || codes.Code(st.Code) != codes.PermissionDenied {
		t.Fatalf("move by eva: %s %+v, want 403", resp.Status, st)
	}
	var moved struct {
		Result struct {
			Matched   string `json:"matched"`
			Succeeded string `json:"succeeded"`
		} `json:"result"`
	}
	if resp := e.call(http.MethodPost, "/v1/outbox/emails:move", admin, move, &moved); resp.StatusCode != http.StatusOK || moved.Result.Matched != "1" || moved.Result.Succeeded != "1" {
		t.Fatalf("move: %s %+v", resp.Status, moved)
	}
	poll.Eventually(t, "the moved email at the relay", func() bool {
		for _, m := range e.sink.Messages() {
			if strings.Contains(string(m.Data), "Subject: Ueber die Reserve") {
				return true
			}
		}
		return false
	})
}

// TestHTTPErrors: errors are google.rpc.Status JSON with their details and the HTTP code of their
// gRPC code, from the edge (401) as from a service (400, 404).
func TestHTTPErrors(t *testing.T) {
	e := startEnv(t, nil)
	e.seed()
	for _, tc := range []struct {
		name, method, path, token string
		body                      any
		wantHTTP                  int
		wantCode                  codes.Code
		wantDetail                string
	}{
		{"no token", http.MethodGet, "/v1/outbox/emails", "", nil, http.StatusUnauthorized, codes.Unauthenticated, ""},
		{"bad token", http.MethodGet, "/v1/outbox/emails", "not-a-jwt", nil, http.StatusUnauthorized, codes.Unauthenticated, ""},
		{"field violation", http.MethodPost, "/v1/outbox/emails", e.as("eva"), map[string]any{"fromAddress": "eva@kanzlei.example", "subject": "ohne Empfaenger"},
			http.StatusBadRequest, codes.InvalidArgument, "type.googleapis.com/google.rpc.BadRequest"},
		{"not found", http.MethodGet, "/v1/outbox/emails/no-such-email", e.as("eva"), nil, http.StatusNotFound, codes.NotFound, "type.googleapis.com/google.rpc.ResourceInfo"},
		{"unknown path", http.MethodGet, "/v1/nothing", e.as("eva"), nil, http.StatusNotFound, codes.NotFound, ""},
		{"body over the bound", http.MethodPost, "/v1/outbox/emails", e.as("eva"), map[string]any{"fromAddress": "eva@kanzlei.example", "textBody": strings.Repeat("x", 2<<20)},
			http.StatusRequestEntityTooLarge, codes.ResourceExhausted, "type.googleapis.com/google.rpc.QuotaFailure"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st rpcStatus
			resp := e.call(tc.method, tc.path, tc.token, tc.body, &st)
			if resp.StatusCode != tc.wantHTTP || codes.Code(st.Code) != tc.wantCode || st.Message == "" {
				t.Fatalf("%s %+v, want HTTP %d with code %s", resp.Status, st, tc.wantHTTP, tc.wantCode)
			}
			if tc.wantDetail != "" && !strings.Contains(strings.Join(st.detailTypes(), " "), tc.wantDetail) {
				t.Errorf("details %v, want a %s", st.detailTypes(), tc.wantDetail)
			}
			if resp.Header.Get("X-Request-Id") == "" {
				t.Error("no X-Request-Id on an error")
			}
		})
	}
}

// TestOpenAPIAndCORS: the OpenAPI document is served without a token, with the API's title and
// version and the bearer token as its security scheme; CORS answers a preflight from an allowed
// origin and ignores others.
func TestOpenAPIAndCORS(t *testing.T) {
	e := startEnv(t, nil)
	var doc struct {
		Swagger string `json:"swagger"`
		Info    struct {
			Title   string `json:"title"`
			Version string `json:"version"`
		} `json:"info"`
		SecurityDefinitions map[string]struct {
			Type string `json:"type"`
			Name string `json:"name"`
			In   string `json:"in"`
		} `json:"securityDefinitions"`
		Security []map[string][]string      `json:"security"`
		Paths    map[string]json.RawMessage `json:"paths"`
	}
	if resp := e.call(http.MethodGet, "/openapi.json", "", nil, &doc); resp.StatusCode != http.StatusOK || doc.Swagger != "2.0" {
		t.Fatalf("openapi: %s %q", resp.Status, doc.Swagger)
	}
	if doc.Info.Title != "Postamt API" || doc.Info.Version != "v1" {
		t.Errorf("openapi info %+v, want the API's title and version", doc.Info)
	}
	if b := doc.SecurityDefinitions["bearer"]; b.Type != "apiKey" || b.In != "header" || b.Name != "Authorization" || len(doc.Security) != 1 || doc.Security[0]["bearer"] == nil {
		t.Errorf("openapi security %+v %v, want the bearer token required everywhere", doc.SecurityDefinitions, doc.Security)
	}
	for _, p := range []string{"/v1/outbox/emails", "/v1/outbox/emails:watch", "/v1/mailboxes"} {
		if _, ok := doc.Paths[p]; !ok {
			t.Errorf("openapi has no path %s", p)
		}
	}
	resp := e.call(http.MethodOptions, "/v1/outbox/emails", "", nil, nil, "Origin", "https://kanzlei.example", "Access-Control-Request-Method", "POST")
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "https://kanzlei.example" || !strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Errorf("preflight: %s %v", resp.Status, resp.Header)
	}
	resp = e.call(http.MethodOptions, "/v1/outbox/emails", "", nil, nil, "Origin", "https://evil.example", "Access-Control-Request-Method", "POST")
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight from another origin allowed: %v", resp.Header)
	}
}

// TestRateLimit: a caller over its budget gets 429 with Retry-After over HTTP and
// RESOURCE_EXHAUSTED with RetryInfo over gRPC, from one shared budget; others are not affected.
func TestRateLimit(t *testing.T) {
	e := startEnv(t, func(c *app.Config) { c.RatePerSec, c.RateBurst = 0.5, 2 })
	eva := e.as("eva")
	for i := range 2 {
		if resp := e.call(http.MethodGet, "/v1/outbox/emails", eva, nil, nil); resp.StatusCode == http.StatusTooManyRequests {
			t.Fatalf("request %d of the burst limited", i+1)
		}
	}
	var st rpcStatus
	resp := e.call(http.MethodGet, "/v1/outbox/emails", eva, nil, &st)
	if resp.StatusCode != http.StatusTooManyRequests || codes.Code(st.Code) != codes.ResourceExhausted {
		t.Fatalf("third request: %s %+v", resp.Status, st)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 2 {
		t.Errorf("Retry-After %q, want 1-2 s", resp.Header.Get("Retry-After"))
	}
	if !strings.Contains(strings.Join(st.detailTypes(), " "), "google.rpc.RetryInfo") {
		t.Errorf("details %v, want RetryInfo", st.detailTypes())
	}
	// The same caller over gRPC shares the budget.
	ctx := authtest.Outgoing(t, e.signer, auth.Principal{Tenant: "kanzlei", User: "eva"})
	_, err := outboxv1.NewOutboxServiceClient(e.conn).ListEmails(ctx, &outboxv1.ListEmailsRequest{})
	s := status.Convert(err)
	if s.Code() != codes.ResourceExhausted {
		t.Fatalf("gRPC: %v, want ResourceExhausted", err)
	}
	var retry *errdetails.RetryInfo
	for _, d := range s.Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil || retry.GetRetryDelay().AsDuration() <= 0 {
		t.Errorf("gRPC details %v, want a RetryInfo delay", s.Details())
	}
	// Another caller has a budget of its own (the call reaches the service: no tenant there).
	_, err = outboxv1.NewOutboxServiceClient(e.conn).ListEmails(authtest.Outgoing(t, e.signer, auth.Principal{Tenant: "kanzlei", User: "max"}), &outboxv1.ListEmailsRequest{})
	if status.Code(err) == codes.ResourceExhausted {
		t.Errorf("max limited by eva's requests: %v", err)
	}
}

// TestGRPCOnePort: one gRPC address reaches every service, unary and streaming, with the
// services' own errors; reflection lists every service for grpcurl.
func TestGRPCOnePort(t *testing.T) {
	e := startEnv(t, nil)
	admin := authtest.Outgoing(t, e.signer, auth.Principal{Tenant: "kanzlei", User: "admin", Roles: []string{auth.RoleAdmin, "operator"}})
	mailbox, outbox := mailboxv1.NewMailboxServiceClient(e.conn), outboxv1.NewOutboxServiceClient(e.conn)
	if _, err := mailbox.CreateTenant(admin, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "kanzlei"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := mailbox.CreateUser(admin, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: "eva", DisplayName: "Eva", Email: "eva@kanzlei.example"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := mailbox.CreateMailbox(admin, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
		MailboxId: "p-eva", Address: "eva@kanzlei.example", DisplayName: "Eva", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL, OwnerUserId: "eva",
	}}); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(e.sink.Addr())
	p, _ := strconv.Atoi(port)
	if _, err := outbox.CreateConnector(admin, &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
		ConnectorId: "default", Host: host, Port: int32(p), TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		RetryPattern: []*durationpb.Duration{durationpb.New(time.Minute)}, MaxAttempts: 3,
	}}); err != nil {
		t.Fatal(err)
	}
	eva := authtest.Outgoing(t, e.signer, auth.Principal{Tenant: "kanzlei", User: "eva"})

	t.Run("a service's error comes back as it was", func(t *testing.T) {
		_, err := outbox.SubmitEmail(eva, &outboxv1.SubmitEmailRequest{FromAddress: "eva@kanzlei.example", Subject: "ohne Empfaenger"})
		s := status.Convert(err)
		if s.Code() != codes.InvalidArgument || len(s.Details()) == 0 {
			t.Fatalf("%v, want InvalidArgument with details", err)
		}
		_, err = mailbox.GetMailbox(context.Background(), &mailboxv1.GetMailboxRequest{MailboxId: "p-eva"})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("without a token: %v", err)
		}
	})
	t.Run("a server stream", func(t *testing.T) {
		ctx, cancel := context.WithCancel(eva)
		defer cancel()
		before := e.consumers()
		stream, err := outbox.WatchEmails(ctx, &outboxv1.WatchEmailsRequest{View: outboxv1.View_VIEW_MINE})
		if err != nil {
			t.Fatal(err)
		}
		poll.Eventually(t, "the watch's consumer", func() bool { return e.consumers() > before })
		m, err := outbox.SubmitEmail(eva, &outboxv1.SubmitEmailRequest{FromAddress: "eva@kanzlei.example", To: []string{"client@example.com"}, Subject: "Beobachtet", TextBody: "x"})
		if err != nil {
			t.Fatal(err)
		}
		r, err := stream.Recv()
		if err != nil || r.GetEmail().GetEmailId() != m.GetEmail().GetEmailId() {
			t.Fatalf("watch: %v (%v)", r, err)
		}
	})
	t.Run("the tracker too", func(t *testing.T) {
		if _, err := trackerv1.NewTrackerServiceClient(e.conn).GetOrgSettings(admin, &trackerv1.GetOrgSettingsRequest{}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a two-way stream: the calendar's live agent", func(t *testing.T) {
		if _, err := mailbox.CreateUser(admin, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{
			UserId: "huber", DisplayName: "Dr. Huber", Email: "huber@kanzlei.example", DirectoryUsername: `KANZLEI\huber`, PracticeUsername: "huber",
		}}); err != nil {
			t.Fatal(err)
		}
		calendar := calendarv1.NewCalendarServiceClient(e.conn)
		if _, err := calendar.UpdateTenantSettings(admin, &calendarv1.UpdateTenantSettingsRequest{Settings: &calendarv1.TenantSettings{LiveSyncEnabled: true}}); err != nil {
			t.Fatal(err)
		}
		start := time.Date(2026, 3, 10, 9, 0, 0, 0, time.UTC)
		if _, err := calendar.CreateEntry(admin, &calendarv1.CreateEntryRequest{Entry: &calendarv1.Entry{
			EntryId: "termin-1", OwnerUserId: "huber", Kind: calendarv1.EntryKind_ENTRY_KIND_APPOINTMENT, Summary: "Mandant A",
			StartTime: timestamppb.New(start), EndTime: timestamppb.New(start.Add(time.Hour)), TimeZone: "Europe/Vienna",
		}}); err != nil {
			t.Fatal(err)
		}
		huber := authtest.Outgoing(t, e.signer, auth.Principal{Tenant: "kanzlei", User: "huber"})
		ctx, cancel := context.WithCancel(huber)
		defer cancel()
		s, err := calendar.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Hello{Hello: &calendarv1.Hello{AgentId: "outlook-pc-1"}}}); err != nil {
			t.Fatal(err)
		}
		var d *calendarv1.Delivery
		for d == nil {
			m, err := s.Recv()
			if err != nil {
				t.Fatalf("before the delivery: %v", err)
			}
			d = m.GetDelivery()
		}
		if d.GetEntry().GetEntryId() != "termin-1" {
			t.Fatalf("delivered %v", d)
		}
		if err := s.Send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Ack{Ack: &calendarv1.Ack{
			Position: d.GetPosition(), Outcome: calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_APPLIED, RemoteId: "outlook-1", RemoteVersion: "v1",
		}}}); err != nil {
			t.Fatal(err)
		}
		poll.Eventually(t, "the ack through the gateway", func() bool {
			st, err := calendar.GetSyncStatus(huber, &calendarv1.GetSyncStatusRequest{})
			return err == nil && st.GetStatus().GetAckedPosition() == d.GetPosition() && st.GetStatus().GetPendingCount() == 0
		})
	})
	t.Run("reflection lists every service", func(t *testing.T) {
		rc, err := reflectionv1.NewServerReflectionClient(e.conn).ServerReflectionInfo(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if err := rc.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		r, err := rc.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range r.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		for _, want := range []string{"postamt.mailbox.v1.MailboxService", "postamt.outbox.v1.OutboxService", "postamt.tracker.v1.TrackerService", "postamt.calendar.v1.CalendarService", "grpc.health.v1.Health"} {
			if !strings.Contains(strings.Join(names, " "), want) {
				t.Errorf("reflection lists %v, missing %s", names, want)
			}
		}
		if err := rc.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "postamt.outbox.v1.OutboxService"}}); err != nil {
			t.Fatal(err)
		}
		if r, err := rc.Recv(); err != nil || len(r.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
			t.Errorf("descriptor of the outbox service: %v (%v)", r, err)
		}
		if err := rc.CloseSend(); err != nil { // as grpcurl does; an open one would hold the drain below
			t.Fatal(err)
		}
	})
	t.Run("the gateway's drain ends forwarded streams", func(t *testing.T) {
		// Last: it stops the gateway. A watch and an agent's stream never end by themselves; the
		// drain ends both (their clients reconnect) instead of holding it until it times out.
		watch, err := outbox.WatchEmails(eva, &outboxv1.WatchEmailsRequest{View: outboxv1.View_VIEW_MINE})
		if err != nil {
			t.Fatal(err)
		}
		agent, err := calendarv1.NewCalendarServiceClient(e.conn).Connect(authtest.Outgoing(t, e.signer, auth.Principal{Tenant: "kanzlei", User: "huber"}))
		if err != nil {
			t.Fatal(err)
		}
		if err := agent.Send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Hello{Hello: &calendarv1.Hello{AgentId: "outlook-pc-1"}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := agent.Recv(); err != nil {
			t.Fatalf("the agent's Welcome: %v", err)
		}
		if err := e.stopGateway(); err != nil {
			t.Fatalf("gateway: %v", err)
		}
		if strings.Contains(e.logs.String(), "drain timeout") {
			t.Errorf("the gateway's drain timed out: a forwarded stream held it\n%s", e.logs.String())
		}
		for _, recv := range []func() error{ // UNAVAILABLE: reconnect (CANCELLED would say the client gave up)
			func() error { _, err := watch.Recv(); return err },
			func() error {
				for {
					if _, err := agent.Recv(); err != nil {
						return err
					}
				}
			},
		} {
			if err := recv(); status.Code(err) != codes.Unavailable {
				t.Errorf("a forwarded stream ended with %v, want UNAVAILABLE", err)
			}
		}
	})
}

// consumers is how many consumers the outbox stream has (a watch is one).
func (e *env) consumers() int {
	info, err := e.js.Stream(context.Background(), "POSTAMT_OUTBOX")
	if err != nil {
		return 0
	}
	return info.CachedInfo().State.Consumers
}

// TestWatchOverHTTP: a server stream over HTTP as newline-delimited JSON, and as server-sent
// events when asked for; its response starts as soon as the watch is in place, before any change
// (server-sent events with a comment line), so a client of a quiet outbox knows it is watching.
func TestWatchOverHTTP(t *testing.T) {
	e := startEnv(t, nil)
	e.seed()
	eva := e.as("eva")
	for _, tc := range []struct {
		accept, contentType, prefix string
	}{
		{"", "application/json", `{"result":`},
		{"text/event-stream", "text/event-stream", `data: {"result":`},
	} {
		t.Run(tc.contentType, func(t *testing.T) {
			poll.Eventually(t, "the outbox stream", func() bool { return e.consumers() > 0 })
			before := e.consumers()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.httpURL+"/v1/outbox/emails:watch?view=VIEW_MINE", nil)
			req.Header.Set("Authorization", "Bearer "+eva)
			if tc.accept != "" {
				req.Header.Set("Accept", tc.accept)
			}
			lines := make(chan string, 16)
			opened := make(chan string, 1)
			go func() {
				defer close(lines)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					opened <- err.Error()
					return
				}
				defer resp.Body.Close()
				opened <- resp.Status + " " + resp.Header.Get("Content-Type")
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					if sc.Text() != "" && !strings.HasPrefix(sc.Text(), ":") {
						lines <- sc.Text()
					}
				}
			}()
			select {
			case got := <-opened:
				if want := "200 OK " + tc.contentType; got != want {
					t.Fatalf("the watch's response: %s, want %s", got, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no response headers from a watch in place while nothing changes")
			}
			if got := e.consumers(); got <= before {
				t.Errorf("the watch answered before its consumer existed (%d consumers, %d before)", got, before)
			}
			var sub struct {
				Email struct {
					EmailID string `json:"emailId"`
				} `json:"email"`
			}
			e.call(http.MethodPost, "/v1/outbox/emails", eva, map[string]any{
				"fromAddress": "eva@kanzlei.example", "to": []string{"client@example.com"}, "subject": "Live " + tc.contentType, "textBody": "x",
				"sendAt": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
			}, &sub)
			select {
			case l := <-lines:
				if !strings.HasPrefix(l, tc.prefix) || !strings.Contains(l, sub.Email.EmailID) {
					t.Errorf("first line %q, want %s... with %s", l, tc.prefix, sub.Email.EmailID)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no change on the watch")
			}
		})
	}
}

// TestBccOverHTTP: through the gateway, as a product's front end calls it, the Bcc of an email is
// shown to its sender and hidden from the sender's team lead in every answer, and the lead's
// search for the Bcc address finds nothing.
func TestBccOverHTTP(t *testing.T) {
	e := startEnv(t, nil)
	e.seed()
	admin := e.admin()
	for _, step := range []struct {
		path string
		body any
	}{
		{"/v1/users", map[string]any{"user": map[string]any{"userId": "max", "displayName": "Max Mustermann", "email": "max@kanzlei.example"}}},
		{"/v1/mailboxes", map[string]any{"mailbox": map[string]any{
			"mailboxId": "p-max", "address": "max@kanzlei.example", "displayName": "Max Mustermann", "kind": "MAILBOX_KIND_PERSONAL", "ownerUserId": "max",
		}}},
		{"/v1/teams", map[string]any{"team": map[string]any{"teamId": "empfang", "displayName": "Empfang", "memberUserIds": []string{"max"}, "leadUserIds": []string{"eva"}}}},
	} {
		var st rpcStatus
		if resp := e.call(http.MethodPost, step.path, admin, step.body, &st); resp.StatusCode != http.StatusOK {
			t.Fatalf("POST %s: %s %+v", step.path, resp.Status, st)
		}
	}
	type email struct {
		EmailID string   `json:"emailId"`
		Bcc     []string `json:"bcc"`
	}
	var sub struct{ Email email }
	e.call(http.MethodPost, "/v1/outbox/emails", e.as("max"), map[string]any{
		"fromAddress": "max@kanzlei.example", "to": []string{"mandant@example.com"}, "bcc": []string{"geheim@anwalt.example"},
		"subject": "Vergleich", "textBody": "x", "sendAt": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
	}, &sub)
	if sub.Email.EmailID == "" || len(sub.Email.Bcc) != 1 {
		t.Fatalf("submit answer %+v", sub)
	}
	for _, who := range []struct {
		name, token string
		bcc         int
	}{{"max", e.as("max"), 1}, {"eva (lead)", e.as("eva"), 0}} {
		var got struct{ Email email }
		if resp := e.call(http.MethodGet, "/v1/outbox/emails/"+sub.Email.EmailID, who.token, nil, &got); resp.StatusCode != http.StatusOK || len(got.Email.Bcc) != who.bcc {
			t.Errorf("%s GET: %s %+v", who.name, resp.Status, got)
		}
		var list struct{ Emails []email }
		e.call(http.MethodGet, "/v1/outbox/emails?view=VIEW_ALL", who.token, nil, &list)
		if len(list.Emails) != 1 || len(list.Emails[0].Bcc) != who.bcc {
			t.Errorf("%s list: %+v", who.name, list)
		}
		e.call(http.MethodGet, "/v1/outbox/emails?view=VIEW_ALL&filter.text=geheim", who.token, nil, &list)
		if len(list.Emails) != who.bcc {
			t.Errorf("%s search for the Bcc address: %+v", who.name, list)
		}
	}
}
