package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/logging"
	"github.com/postamt/postamt/internal/testkit/freeport"
	"github.com/postamt/postamt/internal/testkit/logtest"
	"github.com/postamt/postamt/internal/testkit/poll"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
)

// libs are the library loggers TestMain installs for the whole test binary, once, before any
// test runs gRPC (see execute).
var libs *logging.Libraries

func TestMain(m *testing.M) {
	libs = installLibraryLoggers(os.Stderr)
	os.Exit(m.Run())
}

// runCmd runs a command as run does, with the library loggers TestMain installed.
func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) error {
	return execute(ctx, args, stdout, stderr, lookup, libs)
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := runCmd(context.Background(), []string{"version"}, &out, io.Discard, env(nil)); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "postamt dev\n" {
		t.Errorf("version = %q", got)
	}
}

func TestUnknownCommand(t *testing.T) {
	if err := runCmd(context.Background(), []string{"frobnicate"}, io.Discard, io.Discard, env(nil)); err == nil {
		t.Error("unknown command accepted")
	}
	if err := runCmd(context.Background(), []string{"serve", "nosuch"}, io.Discard, io.Discard, env(nil)); err == nil {
		t.Error("unknown service accepted")
	}
}

// TestConfigDocIsCurrent keeps docs/configuration.md in step with the config structs.
func TestConfigDocIsCurrent(t *testing.T) {
	want, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	if got := configDoc(); got != string(want) {
		t.Errorf("docs/configuration.md is out of date; regenerate it with: go run ./cmd/postamt config > docs/configuration.md")
	}
}

func TestTokenIsVerifiable(t *testing.T) {
	const secret = "token-test-secret-token-test-secret!"
	var out bytes.Buffer
	err := runCmd(context.Background(), []string{"token", "-tenant", "kanzlei", "-user", "max", "-roles", "admin,operator", "-teams", "t1"},
		&out, io.Discard, env(map[string]string{"AUTH_HS256_SECRET": secret}))
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(auth.Config{HS256Secret: secret, Audience: "postamt"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Verify(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	if p.Tenant != "kanzlei" || p.User != "max" || !p.HasRole("operator") || len(p.Teams) != 1 {
		t.Errorf("principal = %+v", p)
	}
}

// TestUp runs `postamt up` as `make run` does (its own redis-server, as on a fresh clone), then
// follows its printed quick start: the grpcurl list (reflection, no token) and a call with the
// printed token; it checks what the terminal shows (the quick start, then a calm line per
// delivery, no JSON) and the JSON log file, and that a redis-server killed under the suite is
// restarted and the suite serves again.
func TestUp(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not installed")
	}
	a := freeport.Addrs(t, 11) // distinct: eleven random ports meet now and then
	grpcAddr, opsAddr, outboxAddr, outboxOps := a[0], a[1], a[2], a[3]
	trackerAddr, trackerOps, gwAddr, gwHTTP, gwOps := a[4], a[5], a[6], a[7], a[8]
	calendarAddr, calendarOps := a[9], a[10]
	dataDir := t.TempDir()
	var out logtest.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runCmd(ctx, []string{"up", "-data", dataDir, "-grpc", grpcAddr, "-ops", opsAddr, "-outbox-grpc", outboxAddr, "-outbox-ops", outboxOps,
			"-tracker-grpc", trackerAddr, "-tracker-ops", trackerOps, "-calendar-grpc", calendarAddr, "-calendar-ops", calendarOps, "-gateway-grpc", gwAddr, "-gateway-http", gwHTTP, "-gateway-ops", gwOps}, &out, io.Discard,
			env(nil))
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("up: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("up did not stop within 30s of its context ending")
		}
		if !strings.Contains(out.String(), "stopping: the services drain") {
			t.Errorf("the terminal does not say that up stops:\n%s", out.String())
		}
		logs, err := os.ReadFile(filepath.Join(dataDir, "postamt.log"))
		if err != nil {
			t.Fatalf("the log file: %v", err)
		}
		checkLog(t, string(logs))
	}()

	tokenRE := regexp.MustCompile(`export TOKEN=(\S+)`)
	var token string
	deadline := time.Now().Add(60 * time.Second)
	for token == "" {
		select {
		case err := <-done:
			done <- err // for the deferred wait, which would otherwise report a hang
			t.Fatalf("up ended early: %v\n%s", err, out.String())
		default:
		}
		if m := tokenRE.FindStringSubmatch(out.String()); m != nil {
			token = m[1]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no quick start printed:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "grpcurl -plaintext "+gwAddr+" list") {
		t.Errorf("quick start lacks the grpcurl list line:\n%s", out.String())
	}

	// Everything goes through the gateway, as the quick start says.
	conn, err := grpc.NewClient(gwAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	t.Run("reflection lists the mailbox service", func(t *testing.T) {
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		if l := fmt.Sprint(names); !strings.Contains(l, "postamt.mailbox.v1.MailboxService") || !strings.Contains(l, "postamt.outbox.v1.OutboxService") || !strings.Contains(l, "postamt.tracker.v1.TrackerService") || !strings.Contains(l, "postamt.calendar.v1.CalendarService") {
			t.Errorf("services = %v", names)
		}
	})
	t.Run("the printed submits reach the mail catcher", func(t *testing.T) {
		if !strings.Contains(out.String(), "'"+grpcSubmit+"' "+gwAddr+" postamt.outbox.v1.OutboxService/SubmitEmail") {
			t.Fatalf("quick start lacks the gRPC submit line:\n%s", out.String())
		}
		req := &outboxv1.SubmitEmailRequest{}
		if err := protojson.Unmarshal([]byte(grpcSubmit), req); err != nil {
			t.Fatal(err)
		}
		if _, err := outboxv1.NewOutboxServiceClient(conn).SubmitEmail(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), req); err != nil {
			t.Fatal(err)
		}
		// The curl steps, as printed.
		for _, step := range []struct{ body, path string }{{quickMailbox, "/v1/mailboxes"}, {quickMember, "/v1/mailboxes/team/members"}, {quickSubmit, "/v1/outbox/emails"}} {
			if !strings.Contains(out.String(), "-d '"+step.body+"' http://"+gwHTTP+step.path) {
				t.Fatalf("quick start lacks the curl line for %s:\n%s", step.path, out.String())
			}
			hreq, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+gwHTTP+step.path, strings.NewReader(step.body))
			hreq.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(hreq)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("POST %s: %s %s", step.path, resp.Status, b)
			}
		}
		// The dev-admin has the default undo delay (10s) before the mail leaves.
		deadline := time.Now().Add(30 * time.Second)
		for {
			files, _ := filepath.Glob(filepath.Join(dataDir, "mail", "*.eml"))
			var all strings.Builder
			for _, f := range files {
				b, _ := os.ReadFile(f)
				all.Write(b)
			}
			if strings.Contains(all.String(), "Subject: Hallo\r\n") && strings.Contains(all.String(), "Subject: Hallo vom Team") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("not both mails caught in %s after 30s (%d files)", filepath.Join(dataDir, "mail"), len(files))
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("the gateway's one port reaches every service", func(t *testing.T) {
		authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		for name, call := range map[string]func() error{
			"mailbox": func() error {
				_, err := mailboxv1.NewMailboxServiceClient(conn).GetTenant(authed, &mailboxv1.GetTenantRequest{})
				return err
			},
			"outbox": func() error {
				_, err := outboxv1.NewOutboxServiceClient(conn).CountEmails(authed, &outboxv1.CountEmailsRequest{})
				return err
			},
			"tracker": func() error {
				_, err := trackerv1.NewTrackerServiceClient(conn).GetOrgSettings(authed, &trackerv1.GetOrgSettingsRequest{})
				return err
			},
			"calendar": func() error {
				_, err := calendarv1.NewCalendarServiceClient(conn).GetTenantSettings(authed, &calendarv1.GetTenantSettingsRequest{})
				return err
			},
		} {
			if err := call(); err != nil {
				t.Errorf("%s through the gateway: %v", name, err)
			}
		}
	})
	t.Run("the terminal shows deliveries, not the log", func(t *testing.T) {
		term := out.String()
		if !strings.Contains(term, filepath.Join(dataDir, "postamt.log")) {
			t.Errorf("the banner does not name the log file:\n%s", term)
		}
		if strings.Contains(term, `{"time"`) {
			t.Errorf("the terminal shows JSON log lines:\n%s", term)
		}
		poll.Eventually(t, "two delivery lines on the terminal", func() bool {
			return strings.Count(out.String(), "  sent       email ") >= 2
		})
	})
	t.Run("a killed redis-server is restarted", func(t *testing.T) {
		pidFile := filepath.Join(dataDir, "redis", "redis.pid")
		pidOf := func() int {
			b, _ := os.ReadFile(pidFile)
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			return pid
		}
		first := pidOf()
		if first == 0 {
			t.Fatalf("no pid in %s", pidFile)
		}
		if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		poll.Eventually(t, "a new redis-server", func() bool { p := pidOf(); return p != 0 && p != first })
		poll.Eventually(t, "the terminal to say redis-server was restarted", func() bool {
			return strings.Contains(out.String(), "restarting it") && strings.Contains(out.String(), "redis-server is back")
		})
		// The killed one is reaped: no <defunct> child left.
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", first)); err == nil {
			t.Errorf("the killed redis-server is still a process: %s", b)
		}
		c := mailboxv1.NewMailboxServiceClient(conn)
		authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
		poll.Eventually(t, "the suite to serve again", func() bool {
			_, err := c.GetTenant(authed, &mailboxv1.GetTenantRequest{})
			return err == nil
		})
		poll.Eventually(t, "every service ready again", func() bool {
			for _, addr := range []string{grpcAddr, outboxAddr, trackerAddr, calendarAddr} {
				if !ready(ctx, addr) {
					return false
				}
			}
			return true
		})
	})
	t.Run("the printed token works", func(t *testing.T) {
		c := mailboxv1.NewMailboxServiceClient(conn)
		r, err := c.GetTenant(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), &mailboxv1.GetTenantRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if r.GetTenant().GetTenantId() != devTenant {
			t.Errorf("tenant = %v", r.GetTenant())
		}
	})
}

// checkLog checks the whole log of a run of the suite: every line one JSON object without a
// duplicate key, no empty service, one line per delivery attempt, one relay summary per service
// and round instead of one line per stream.
func checkLog(t *testing.T, log string) {
	t.Helper()
	for _, p := range logtest.Check(log) {
		t.Errorf("log: %s", p)
	}
	if strings.Contains(log, `"service":""`) {
		t.Errorf("a log line has an empty service")
	}
	if !strings.Contains(log, `"msg":"delivery attempt"`) || !strings.Contains(log, `"outcome":"sent"`) {
		t.Errorf("no delivery attempt logged as sent")
	}
	if strings.Contains(log, `"msg":"relay: publishing stream"`) {
		t.Errorf("the relay logs a line per stream")
	}
	if strings.Contains(log, `client@example.com`) {
		t.Errorf("a recipient's address is logged")
	}
	if t.Failed() || os.Getenv("POSTAMT_TEST_SHOWLOG") != "" {
		t.Logf("log:\n%s", log)
	}
}

// ready reports whether the gRPC server at addr reports its readiness service SERVING.
func ready(ctx context.Context, addr string) bool {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: grpcserver.ReadinessService})
	return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
}
