// Package harness runs the outbox the way production does, as separate processes, so fault tests
// (and benchmarks, bench/ P9 and P10) can kill, stop and restart them and the parts around them:
//
//   - a redis-server with the append-only file fsynced on every write (it survives Kill and
//     Restart like a production Redis);
//   - an embedded NATS JetStream server, or a cluster of them (Options.NATSServers) with every
//     stream replicated on each, as the prod overlay runs NATS, optionally as nats-server
//     processes that can crash (Options.NATSProcesses);
//   - `postamt serve mailbox`, and `postamt serve outbox` as one API replica that does not dispatch
//     (OUTBOX_DISPATCH=false; submits, reads and connector changes go through it, so they work
//     whichever dispatcher a test kills) and N dispatching replicas, each a child process on its
//     own free loopback ports with its log in a file (the tail is printed when a test fails);
//   - optionally `postamt serve tracker` and `postamt serve calendar`, the other consumers of the
//     outbox's and mailbox's events;
//   - relays: each an in-process SMTP sink (internal/testkit/smtptest, which records every
//     message and can fail, hang or drop on demand) behind a TCP proxy (internal/testkit/tcpproxy:
//     slow, hung or cut), which connectors point at;
//   - optionally a TCP proxy between every process and the NATS server (Options.NATSProxy), so
//     a test can cut NATS off the network (CutNATS) without stopping it.
//
// Every scenario ends with Check (check.go): it waits until the suite has settled (Settle) and
// then asserts the invariants every fault must keep — no accepted email lost, no duplicate at a
// relay that is not counted as ambiguous (RFC 1047), the ledger, the events in JetStream and the
// projections (the sent view, the tracker) in agreement, every process back to its idle number
// of goroutines, and no log line with a stack trace, a token, the signing secret or a message
// body — and records a row of the results table (results.go), which Main prints at the end of
// the run and writes as Markdown to $POSTAMT_FAULTS_TABLE.
//
// Every tenant is seeded with the user eva and her personal mailbox eva@TENANT.example, so
// Submit can send from it. Everything listens on 127.0.0.1 on free ports; waits poll with a
// deadline. Start skips the test with -short and when redis-server is missing.
package harness

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/metadata"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	"github.com/postamt/postamt/internal/testkit/tcpproxy"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// User is the seeded user of every tenant; she sends from Sender(tenant).
const User = "eva"

// Options shape a suite.
type Options struct {
	// Dispatchers is the number of dispatching outbox replicas; 0 means 1.
	Dispatchers int
	// Tenants are seeded in mailbox; empty means one, "kanzlei".
	Tenants []string
	// OutboxEnv is added to every outbox process's environment, overriding the harness's
	// defaults (e.g. OUTBOX_LEASE, OUTBOX_SMTP_COMMAND_TIMEOUT).
	OutboxEnv map[string]string
	// RedisURL, when set, is the Redis every process uses (a Cluster or a Sentinel set the test
	// started, e.g. redistest.StartCluster(t).URL()); Suite.Redis is then nil. Empty: the harness
	// spawns one redis-server with an fsynced append-only file.
	RedisURL string
	// Env is added to every process's environment (e.g. REDIS_REPLICA_ACKS).
	Env map[string]string
	// NATSServers > 1 runs a NATS cluster of that many servers instead of one server: every
	// process gets all their URLs as NATS_URL and NATS_STREAM_REPLICAS set to the count, so each
	// stream has a replica on every server.
	NATSServers int
	// NATSProcesses runs the cluster's servers as nats-server processes
	// (natstest.StartProcessCluster), so that killing one is a crash (SIGKILL) rather than an
	// embedded server's graceful shutdown, which hands its leaderships over first.
	NATSProcesses bool
	// Tracker runs `postamt serve tracker` (it consumes the outbox's EmailSent into tracking).
	Tracker bool
	// Calendar runs `postamt serve calendar` (it follows the mailbox's events).
	Calendar bool
	// CalendarEnv is added to the calendar process's environment, overriding the harness's
	// defaults: the CalDAV passwords its users' password_refs name (CalDAV.Env), shorter push
	// retries (CALENDAR_PUSH_RETRY).
	CalendarEnv map[string]string
	// NATSProxy puts a TCP proxy between every process and the NATS server (one server only), so
	// CutNATS and RestoreNATS can cut it off the network while it keeps running; the harness's
	// own JetStream reads go to the server directly.
	NATSProxy bool
}

// Suite is a running outbox with everything around it. Its methods may be called from several
// goroutines, but the ones that fail the test (taking tb) only from the test's.
type Suite struct {
	// Redis is the spawned redis-server; nil when Options.RedisURL named another.
	Redis *redistest.Server
	// NATS is the NATS server, nil with a cluster (Options.NATSServers > 1).
	NATS *natstest.Server
	// NATSCluster is the NATS cluster, nil with one server.
	NATSCluster *natstest.Cluster
	Mailbox     *Process
	// Tracker and Calendar run when Options ask for them, nil otherwise.
	Tracker, Calendar *Process
	// API is an outbox replica that does not dispatch: the harness submits, reads and changes
	// connectors through it.
	API *Process
	// Dispatchers are the outbox replicas that send mail.
	Dispatchers []*Process
	// NATSProxy stands between the processes and NATS (Options.NATSProxy), nil otherwise.
	NATSProxy *tcpproxy.Proxy

	signer   *auth.Signer
	tenants  []string
	redisURL string
	// secret is AUTH_HS256_SECRET, and marker is in the body of every email the harness
	// submits: neither may appear in a log.
	secret, marker string

	mu     sync.Mutex
	tokens map[string]bool // every token minted for a request, which no log may show
	relays []*Relay
	idle   map[string]float64 // go_goroutines of each process before the load, by name
	run    *Result            // the scenario's row of the results table
	healed time.Time
	js     jetstream.JetStream
	rdb    redis.UniversalClient
}

// Start runs a suite for tb and stops it at cleanup; when tb fails, the tail of every process's
// log is printed.
func Start(tb testing.TB, o Options) *Suite {
	tb.Helper()
	if o.Dispatchers == 0 {
		o.Dispatchers = 1
	}
	if len(o.Tenants) == 0 {
		o.Tenants = []string{"kanzlei"}
	}
	var rs *redistest.Server
	redisURL := o.RedisURL
	if redisURL == "" {
		rs = redistest.Start(tb, redistest.WithAOF()) // skips with -short or without redis-server
		redisURL = rs.URL()
	}
	s := &Suite{Redis: rs, tenants: o.Tenants, redisURL: redisURL, secret: authtest.Config().HS256Secret, marker: newMarker(), tokens: map[string]bool{}}
	var natsURL, replicas string
	if o.NATSServers > 1 {
		if o.NATSProcesses {
			s.NATSCluster = natstest.StartProcessCluster(tb, o.NATSServers)
		} else {
			s.NATSCluster = natstest.StartCluster(tb, o.NATSServers)
		}
		natsURL, replicas = s.NATSCluster.URL(), strconv.Itoa(o.NATSServers)
	} else {
		s.NATS = natstest.Start(tb)
		natsURL = s.NATS.URL()
		if o.NATSProxy {
			s.NATSProxy = tcpproxy.Start(tb, strings.TrimPrefix(natsURL, "nats://"))
			natsURL = "nats://" + s.NATSProxy.Addr()
		}
	}
	if o.NATSProxy && s.NATSProxy == nil {
		tb.Fatal("harness: Options.NATSProxy needs one NATS server, not a cluster")
	}
	bin := Binary(tb)
	_, s.signer = authtest.Keys(tb)
	logDir := tb.TempDir()

	common := func() map[string]string {
		env := map[string]string{
			"REDIS_URL":         redisURL,
			"NATS_URL":          natsURL,
			"AUTH_HS256_SECRET": s.secret,
			"LOG_FORMAT":        "json",
			"LOG_LEVEL":         "info",
			// A short drain delay: no load balancer needs to notice a test's replica leave.
			"DRAIN_DELAY": "100ms",
		}
		if replicas != "" {
			env["NATS_STREAM_REPLICAS"] = replicas
		}
		maps.Copy(env, o.Env)
		return env
	}
	s.Mailbox = newProcess(tb, "mailbox", bin, logDir, common(), "serve", "mailbox")
	// Registered before the processes start: stops them all at cleanup, after printing their
	// logs when the test failed.
	tb.Cleanup(func() {
		all := s.processes()
		if tb.Failed() {
			for _, p := range all {
				tb.Log(p.LogTail(40))
			}
		}
		var wg sync.WaitGroup
		for _, p := range all {
			wg.Go(p.Kill)
		}
		wg.Wait()
	})
	s.startAll(tb, s.Mailbox)
	s.seedMailbox(tb)

	outboxEnv := func(dispatch bool) map[string]string {
		env := common()
		env["OUTBOX_MAILBOX_ADDR"] = s.Mailbox.GRPCAddr
		env["OUTBOX_DISPATCH"] = strconv.FormatBool(dispatch)
		// Mail is due at once unless a test sets send_at: no undo delay to wait out.
		env["OUTBOX_DEFAULT_UNDO_DELAY"] = "0s"
		// A relay that died is replaced soon (as the tracker's and the calendar's): the tests
		// wait for its events.
		env["OUTBOX_RELAY_CLAIM_IDLE"] = "5s"
		maps.Copy(env, o.OutboxEnv)
		return env
	}
	s.API = newProcess(tb, "outbox-api", bin, logDir, outboxEnv(false), "serve", "outbox")
	for i := range o.Dispatchers {
		s.Dispatchers = append(s.Dispatchers, newProcess(tb, fmt.Sprintf("outbox-%d", i+1), bin, logDir, outboxEnv(true), "serve", "outbox"))
	}
	starting := append([]*Process{s.API}, s.Dispatchers...)
	if o.Tracker {
		env := common()
		env["TRACKER_MAILBOX_ADDR"] = s.Mailbox.GRPCAddr
		// A relay that died is replaced soon: the tests wait for its events.
		env["TRACKER_RELAY_CLAIM_IDLE"] = "5s"
		s.Tracker = newProcess(tb, "tracker", bin, logDir, env, "serve", "tracker")
		starting = append(starting, s.Tracker)
	}
	if o.Calendar {
		env := common()
		env["CALENDAR_MAILBOX_ADDR"] = s.Mailbox.GRPCAddr
		env["CALENDAR_RELAY_CLAIM_IDLE"] = "5s"
		maps.Copy(env, o.CalendarEnv)
		s.Calendar = newProcess(tb, "calendar", bin, logDir, env, "serve", "calendar")
		starting = append(starting, s.Calendar)
	}
	s.startAll(tb, starting...)
	s.MarkIdle(tb)
	s.describe(tb)
	return s
}

// processes lists every process of the suite.
func (s *Suite) processes() []*Process {
	all := []*Process{s.Mailbox}
	for _, p := range []*Process{s.API, s.Tracker, s.Calendar} {
		if p != nil {
			all = append(all, p)
		}
	}
	return append(all, s.Dispatchers...)
}

// startAll starts ps together and waits until each serves. A process that exits before serving
// (its port, free a moment ago, was taken meanwhile) is given new ports and started again.
func (s *Suite) startAll(tb testing.TB, ps ...*Process) {
	tb.Helper()
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Go(func() {
			for try := 0; ; try++ {
				if errs[i] = p.start(); errs[i] != nil {
					return
				}
				if errs[i] = p.waitServing(); errs[i] == nil || try == 2 || !strings.Contains(p.Log(), "address already in use") {
					return
				}
				p.retryPorts(tb)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			tb.Fatalf("harness: %v\n%s", err, ps[i].LogTail(30)) //nolint:gosec // G602: errs is made with len(ps)
		}
	}
}

// retryPorts moves a process that could not listen to new free ports.
func (p *Process) retryPorts(tb testing.TB) {
	p.GRPCAddr, p.OpsAddr = freeAddr(tb), freeAddr(tb)
	for i, kv := range p.env {
		switch {
		case strings.HasPrefix(kv, "GRPC_ADDR="):
			p.env[i] = "GRPC_ADDR=" + p.GRPCAddr
		case strings.HasPrefix(kv, "OPS_ADDR="):
			p.env[i] = "OPS_ADDR=" + p.OpsAddr
		}
	}
	_ = p.conn.Close()
	p.conn = servetest.Dial(tb, p.GRPCAddr)
}

// CutNATS cuts every process off NATS (Options.NATSProxy): their connections drop and none can
// reconnect until RestoreNATS; the server itself runs on.
func (s *Suite) CutNATS(tb testing.TB) {
	tb.Helper()
	if s.NATSProxy == nil {
		tb.Fatal("harness: CutNATS needs Options.NATSProxy")
	}
	s.NATSProxy.Refuse(true)
}

// RestoreNATS lets the processes reconnect to NATS after CutNATS.
func (s *Suite) RestoreNATS(tb testing.TB) {
	tb.Helper()
	if s.NATSProxy == nil {
		tb.Fatal("harness: RestoreNATS needs Options.NATSProxy")
	}
	s.NATSProxy.Refuse(false)
}

// Tenants are the seeded tenants.
func (s *Suite) Tenants() []string { return s.tenants }

// Sender is the address the seeded user sends from in tenant.
func Sender(tenant string) string { return User + "@" + tenant + ".example" }

// ctx returns a context whose outgoing metadata carries a one-hour token for p.
func (s *Suite) ctx(p auth.Principal) context.Context {
	tok, err := s.signer.Mint(p, time.Hour)
	if err != nil {
		panic(fmt.Sprintf("harness: mint a token: %v", err)) // only a bad signer config fails; authtest's is fixed
	}
	s.mu.Lock()
	s.tokens[tok] = true
	s.mu.Unlock()
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

// Admin is a request context of an administrator of tenant (who may also create tenants).
func (s *Suite) Admin(tenant string) context.Context {
	return s.ctx(auth.Principal{Tenant: tenant, User: "admin", Roles: []string{auth.RoleAdmin, "operator"}})
}

// AsUser is a request context of the seeded user of tenant.
func (s *Suite) AsUser(tenant string) context.Context {
	return s.ctx(auth.Principal{Tenant: tenant, User: User})
}

// Outbox is a client of the API replica.
func (s *Suite) Outbox() outboxv1.OutboxServiceClient { return s.OutboxOf(s.API) }

// OutboxOf is a client of one outbox process (to call a dispatcher itself: EnableConnector on
// the replica that reloads its connectors at once, say).
func (s *Suite) OutboxOf(p *Process) outboxv1.OutboxServiceClient {
	return outboxv1.NewOutboxServiceClient(p.Conn())
}

// seedMailbox creates every tenant with the user and her personal mailbox.
func (s *Suite) seedMailbox(tb testing.TB) {
	tb.Helper()
	mb := mailboxv1.NewMailboxServiceClient(s.Mailbox.Conn())
	for _, tenant := range s.tenants {
		ctx := s.Admin(tenant)
		if _, err := mb.CreateTenant(ctx, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: tenant}}); err != nil {
			tb.Fatalf("harness: create tenant %s: %v", tenant, err)
		}
		if _, err := mb.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: User, DisplayName: "Eva Beispiel", Email: Sender(tenant)}}); err != nil {
			tb.Fatalf("harness: create user in %s: %v", tenant, err)
		}
		if _, err := mb.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
			MailboxId: "p-" + User, Address: Sender(tenant), DisplayName: "Eva Beispiel",
			Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL, OwnerUserId: User,
		}}); err != nil {
			tb.Fatalf("harness: create mailbox in %s: %v", tenant, err)
		}
	}
}
