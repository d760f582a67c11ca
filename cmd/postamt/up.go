package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	gatewayapp "github.com/postamt/postamt/gateway/app"
	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/logging"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// devTenant is the tenant `postamt up` creates so the printed quick start works when pasted.
const devTenant = "dev"

// runUp runs the whole suite on this machine. Defaults suit a laptop: loopback addresses, data
// under ./data, a development signing secret kept in ./data/dev-secret so tokens survive restarts.
func runUp(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool), libs *logging.Libraries) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data", "data", "directory for NATS and Redis data and the development secret")
	grpcAddr := fs.String("grpc", "127.0.0.1:8090", "address of the mailbox gRPC API")
	opsAddr := fs.String("ops", "127.0.0.1:8091", "address of the mailbox's metrics and pprof")
	outboxAddr := fs.String("outbox-grpc", "127.0.0.1:8092", "address of the outbox gRPC API")
	outboxOps := fs.String("outbox-ops", "127.0.0.1:8093", "address of the outbox's metrics and pprof")
	trackerAddr := fs.String("tracker-grpc", "127.0.0.1:8094", "address of the tracker gRPC API")
	trackerOps := fs.String("tracker-ops", "127.0.0.1:8095", "address of the tracker's metrics and pprof")
	calendarAddr := fs.String("calendar-grpc", "127.0.0.1:8096", "address of the calendar gRPC API")
	calendarOps := fs.String("calendar-ops", "127.0.0.1:8097", "address of the calendar's metrics and pprof")
	gatewayAddr := fs.String("gateway-grpc", "127.0.0.1:8070", "address of the gateway's gRPC port (every service through one address)")
	gatewayHTTP := fs.String("gateway-http", "127.0.0.1:8080", "address of the gateway's HTTP/JSON API")
	gatewayOps := fs.String("gateway-ops", "127.0.0.1:8071", "address of the gateway's metrics and pprof")
	logPath := fs.String("log", "", "file the full JSON log goes to (default: postamt.log in the data directory); - writes it to stderr instead, and the terminal shows no delivery lines")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// Absolute, because redis-server resolves its log file after changing into its data directory.
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // G301: the developer's own ./data (postamt up), readable like the checkout
		return fmt.Errorf("create data directory: %w", err)
	}
	secret, err := devSecret(filepath.Join(dir, "dev-secret"), lookup)
	if err != nil {
		return err
	}
	// The services' JSON log goes to a file; the terminal gets the quick start and then one
	// line per delivery attempt (console).
	logOut, term, closeLog, err := openLog(*logPath, dir, stdout, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	level, _ := lookup("LOG_LEVEL")
	if level == "" {
		level = "info"
	}
	log, err := logging.New(logOut, level, "json")
	if err != nil {
		return err
	}
	log = log.With("service", "up")
	libs.Use(log)
	term.printf("starting Postamt; the full log goes to %s", term.where)

	ns, err := startNATS(filepath.Join(dir, "nats"), log)
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()

	redisURL, hasURL := lookup("REDIS_URL")
	if !hasURL || redisURL == "" {
		r, err := startRedis(ctx, filepath.Join(dir, "redis"), log, term.printf)
		if err != nil {
			return err
		}
		defer r.stop()
		redisURL = r.url()
	}

	env := map[string]string{
		"GRPC_ADDR":         *grpcAddr,
		"OPS_ADDR":          *opsAddr,
		"REDIS_URL":         redisURL,
		"NATS_URL":          ns.ClientURL(),
		"AUTH_HS256_SECRET": secret,
		"DRAIN_DELAY":       "0s",
		// One process, one tracer provider (OpenTelemetry's global): one name for its spans.
		"OTEL_SERVICE_NAME": "postamt",
	}
	upLookup := func(k string) (string, bool) {
		if v, ok := lookup(k); ok && k != "REDIS_URL" && k != "NATS_URL" {
			return v, true
		}
		v, ok := env[k]
		return v, ok
	}

	catch, err := startCatcher(filepath.Join(dir, "mail"))
	if err != nil {
		return err
	}
	defer catch.close()

	// Each service is served as on Kubernetes, on its own port; they share this process's
	// Redis and NATS.
	errc := make(chan error, 5)
	codes := gatewayapp.NewConsoleCodes(nil)
	start := func(service string, env map[string]string) error {
		ready := make(chan struct{})
		go func() {
			errc <- serve(ctx, service, logOut, func(k string) (string, bool) {
				if v, ok := env[k]; ok {
					return v, true
				}
				return upLookup(k)
			}, ready, nil, codes)
		}()
		select {
		case err := <-errc:
			if err == nil {
				err = fmt.Errorf("%s stopped at start", service)
			}
			return err
		case <-ready:
			return nil
		}
	}
	if err := start("mailbox", nil); err != nil {
		return err
	}
	if err := start("outbox", map[string]string{"GRPC_ADDR": *outboxAddr, "OPS_ADDR": *outboxOps, "OUTBOX_MAILBOX_ADDR": *grpcAddr, "OUTBOX_TRACKER_ADDR": *trackerAddr}); err != nil {
		return err
	}
	if err := start("tracker", map[string]string{"GRPC_ADDR": *trackerAddr, "OPS_ADDR": *trackerOps, "TRACKER_MAILBOX_ADDR": *grpcAddr}); err != nil {
		return err
	}
	if err := start("calendar", map[string]string{"GRPC_ADDR": *calendarAddr, "OPS_ADDR": *calendarOps, "CALENDAR_MAILBOX_ADDR": *grpcAddr}); err != nil {
		return err
	}
	if err := start("gateway", map[string]string{
		"GRPC_ADDR": *gatewayAddr, "OPS_ADDR": *gatewayOps, "GATEWAY_HTTP_ADDR": *gatewayHTTP,
		"GATEWAY_MAILBOX_ADDR": *grpcAddr, "GATEWAY_OUTBOX_ADDR": *outboxAddr, "GATEWAY_TRACKER_ADDR": *trackerAddr,
		"GATEWAY_CALENDAR_ADDR": *calendarAddr,
	}); err != nil {
		return err
	}
	signer, err := auth.NewSigner(auth.Config{HS256Secret: secret, Audience: "postamt"})
	if err != nil {
		return fmt.Errorf("dev signer: %w", err)
	}
	token, err := signer.Mint(auth.Principal{Tenant: devTenant, User: "dev-admin", Roles: []string{"admin", "operator"}}, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("mint dev token: %w", err)
	}
	host, port := catch.addr()
	if err := seedDev(ctx, *grpcAddr, *outboxAddr, token, host, port); err != nil {
		return err
	}
	// The console URL carries a one-time code for the token, not the token: the browser's
	// history keeps a spent code.
	code := codes.Issue(token, consoleCodeTTL)
	printQuickStart(stdout, *gatewayAddr, *gatewayHTTP, token, catch.dir, code, term.where)
	term.show()
	err = <-errc
	if ctx.Err() != nil {
		term.printf("stopping: the services drain, then NATS and Redis stop; the data stays in %s (make clean deletes it)", displayPath(dir))
	}
	for range 4 {
		if err2 := <-errc; err == nil {
			err = err2
		}
	}
	return err
}

// openLog opens where up's JSON log goes: path (default postamt.log in dir), appended to, with
// the terminal lines of a console on stdout; or, for "-", stderr, with no terminal lines.
func openLog(path, dir string, stdout, stderr io.Writer) (io.Writer, *terminal, func(), error) {
	if path == "-" {
		return stderr, &terminal{c: &console{file: io.Discard, term: stdout}, where: "stderr"}, func() {}, nil
	}
	if path == "" {
		path = filepath.Join(dir, "postamt.log")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600) //nolint:gosec // G304: the developer's own log file
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open the log file: %w", err)
	}
	c := &console{file: f, term: stdout}
	return c, &terminal{c: c, where: displayPath(path)}, func() { _ = f.Close() }, nil
}

// displayPath is path as the terminal names it: ./rel below the working directory, else as is.
func displayPath(path string) string {
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, path); err == nil && !strings.HasPrefix(rel, "..") {
			return "./" + rel
		}
	}
	return path
}

// terminal is up's voice on the terminal: its own lines, and the console's delivery lines once
// shown.
type terminal struct {
	c     *console
	where string // the log file, as the banner names it
}

func (t *terminal) printf(format string, args ...any) { t.c.printf(format, args...) }
func (t *terminal) show()                             { t.c.show() }

// devSecret returns AUTH_HS256_SECRET when set, else the secret kept in path, made on first use.
func devSecret(path string, lookup func(string) (string, bool)) (string, error) {
	if s, ok := lookup("AUTH_HS256_SECRET"); ok && s != "" {
		return s, nil
	}
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) >= 32 { //nolint:gosec // G304: the data directory's dev-secret
		return strings.TrimSpace(string(b)), nil
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("make dev secret: %w", err)
	}
	s := hex.EncodeToString(b[:])
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("keep dev secret: %w", err)
	}
	return s, nil
}

// startNATS runs an embedded JetStream server on a loopback port of its own, logging to log.
func startNATS(storeDir string, log *slog.Logger) (*natsserver.Server, error) {
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host:      "127.0.0.1",
		Port:      natsserver.RANDOM_PORT,
		JetStream: true,
		StoreDir:  storeDir,
		NoSigs:    true,
		NoLog:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	ns.SetLogger(logging.NATSServer(log), false, false)
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded NATS did not become ready within 10s")
	}
	return ns, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close() //nolint:errcheck // only held to learn a free port
	return l.Addr().(*net.TCPAddr).Port, nil
}

// seedDev creates the development tenant, its admin user and the outbox's default connector
// (to the mail catcher) through the APIs, so the quick start has a tenant to act in; all of them
// already existing (a restart) is fine, and the connector is pointed at this run's catcher.
func seedDev(ctx context.Context, addr, outboxAddr, token, catchHost string, catchPort int) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	oconn, err := grpc.NewClient(outboxAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", outboxAddr, err)
	}
	defer oconn.Close()
	c := mailboxv1.NewMailboxServiceClient(conn)
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	_, err = c.CreateTenant(ctx, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: devTenant, DisplayName: "Development"}})
	if status.Code(err) != codes.OK && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("create the %s tenant: %w", devTenant, err)
	}
	_, err = c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{
		UserId: "dev-admin", DisplayName: "Development Admin", Email: "dev-admin@postamt.localhost", Roles: []string{"admin"},
	}})
	if status.Code(err) != codes.OK && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("create the dev-admin user: %w", err)
	}
	_, err = c.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
		MailboxId: "dev-admin", Address: "dev-admin@postamt.localhost", DisplayName: "Development Admin",
		Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL, OwnerUserId: "dev-admin",
	}})
	if status.Code(err) != codes.OK && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("create the dev-admin mailbox: %w", err)
	}
	ob := outboxv1.NewOutboxServiceClient(oconn)
	conn0 := &outboxv1.Connector{
		ConnectorId: "default", DisplayName: "Development mail catcher", Host: catchHost, Port: int32(catchPort),
		TlsMode: outboxv1.TlsMode_TLS_MODE_NONE, MaxAttempts: 5,
		RetryPattern: []*durationpb.Duration{durationpb.New(time.Minute), durationpb.New(5 * time.Minute), durationpb.New(15 * time.Minute), durationpb.New(time.Hour)},
	}
	_, err = ob.CreateConnector(ctx, &outboxv1.CreateConnectorRequest{Connector: conn0})
	if status.Code(err) == codes.AlreadyExists {
		_, err = ob.UpdateConnector(ctx, &outboxv1.UpdateConnectorRequest{Connector: conn0, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"host", "port"}}})
	}
	if err != nil {
		return fmt.Errorf("create the default connector: %w", err)
	}
	return nil
}

// consoleCodeTTL is how long the printed console URL signs in (once).
const consoleCodeTTL = time.Hour

// The quick start's HTTP steps; TestUp sends exactly these through the gateway.
const (
	quickMailbox = `{"mailbox":{"mailbox_id":"team","address":"team@postamt.localhost","display_name":"Team","kind":"MAILBOX_KIND_SHARED"}}`
	quickMember  = `{"user_id":"dev-admin","rights":["RIGHT_SEND_AS"]}`
	quickSubmit  = `{"from_address":"team@postamt.localhost","to":["client@example.com"],"subject":"Hallo vom Team","text_body":"Erste Mail ueber HTTP"}`
	grpcSubmit   = `{"from_address":"dev-admin@postamt.localhost","to":["client@example.com"],"subject":"Hallo","text_body":"Erste Mail"}`
)

// printQuickStart prints what to paste: every call goes through the gateway, gRPC on one
// address for every service and HTTP/JSON with curl.
func printQuickStart(w io.Writer, grpcAddr, httpAddr, token, mailDir, code, logWhere string) {
	_, _ = fmt.Fprintf(w, `
Postamt is up. Gateway: gRPC %[1]s (every service, plaintext), HTTP http://%[4]s
(OpenAPI at /openapi.json). Stop with Ctrl-C.

  Outbox console (signs the dev admin in once, within an hour; afterwards sign in at
  http://%[4]s/console/signin with the token below):
  http://%[4]s/console/signin?code=%[10]s

  export TOKEN=%[2]s

  bin/grpcurl -plaintext %[1]s list
  bin/grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{}' %[1]s postamt.mailbox.v1.MailboxService/GetTenant
  bin/grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '%[6]s' %[1]s postamt.outbox.v1.OutboxService/SubmitEmail

  curl -s -H "Authorization: Bearer $TOKEN" -d '%[7]s' http://%[4]s/v1/mailboxes
  curl -s -H "Authorization: Bearer $TOKEN" -d '%[8]s' http://%[4]s/v1/mailboxes/team/members
  curl -s -H "Authorization: Bearer $TOKEN" -d '%[9]s' http://%[4]s/v1/outbox/emails
  curl -s -H "Authorization: Bearer $TOKEN" 'http://%[4]s/v1/outbox/emails?view=VIEW_ALL'

The token is for tenant %[3]q with the admin and operator roles, valid for 24h. Sent mail
leaves (after the 10s undo delay) through the connector "default" to a mail catcher that
writes it to %[5]s.

The full JSON log goes to %[11]s (LOG_LEVEL=debug for more); below, one line
per delivery attempt and per error.

`, grpcAddr, token, devTenant, httpAddr, mailDir, grpcSubmit, quickMailbox, quickMember, quickSubmit, code, logWhere)
}
