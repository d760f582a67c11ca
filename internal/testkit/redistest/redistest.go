// Package redistest spawns a real redis-server for a test, on a free loopback port with its data
// in the test's temp dir, so tests never share state or collide with a developer's Redis.
//
// A server per test is cheap (a few milliseconds) and is the default pattern:
//
//	rdb := redistest.Start(t).Client(t)
//
// WithCluster runs the server as a one-node Redis Cluster that serves every slot, so code under
// test meets cluster rules (CROSSSLOT for keys of one command or script in different slots)
// through a *redis.ClusterClient:
//
//	rdb := redistest.Start(t, redistest.WithCluster()).ClusterClient(t)
//
// Tests are skipped with -short and when redis-server is not on PATH.
package redistest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/testkit/freeport"
)

// startTimeout bounds how long a spawned server may take to answer PING.
const startTimeout = 10 * time.Second

// config is what the options set; Start, StartCluster and StartSentinel read the parts that
// concern them.
type config struct {
	aof     bool
	cluster bool // Start: a one-node cluster serving every slot
	args    []string
	tls     bool
	user    string
	pass    string

	masters          int           // StartCluster
	replicasEach     int           // StartCluster
	nodeTimeout      time.Duration // StartCluster
	sentinelReplicas int           // StartSentinel
	sentinels        int           // StartSentinel
	sentinelPass     string        // StartSentinel
	downAfter        time.Duration // StartSentinel
}

func newConfig(opts []Option) config {
	c := config{
		masters: 3, replicasEach: 1, nodeTimeout: time.Second,
		sentinelReplicas: 2, sentinels: 3, downAfter: time.Second,
	}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// Option changes how the servers run.
type Option func(*config)

// WithAOF turns the append-only file on with an fsync per write, so data survives Kill and
// Restart as in production; fault tests use it. Without it the server keeps nothing on disk
// (--save "" --appendonly no) and Restart starts empty.
func WithAOF() Option { return func(c *config) { c.aof = true } }

// WithArgs passes extra configuration to redis-server (every data node of a cluster or sentinel
// set, not the sentinels), e.g. "--maxmemory", "64mb", for tests that need a setting the
// defaults lack.
func WithArgs(args ...string) Option {
	return func(c *config) { c.args = append(c.args, args...) }
}

// WithCluster runs the server in cluster mode with all 16384 slots assigned to it; use
// ClusterClient. The cluster state survives Restart. StartCluster ignores it.
func WithCluster() Option { return func(c *config) { c.cluster = true } }

// WithTLS serves TLS only (no plaintext port), with a CA and a server certificate for 127.0.0.1
// and localhost generated for the run; replication, the cluster bus and the sentinels' links
// use TLS too. Clients of the kit trust the CA (TLSConfig, CACertFile); client certificates are
// not required.
func WithTLS() Option { return func(c *config) { c.tls = true } }

// WithUser creates an ACL user with every right and turns the default user off, so only clients
// that authenticate as name with password get in; replicas, cluster nodes and sentinels
// authenticate as that user too. password must not contain spaces (it goes into config lines).
func WithUser(name, password string) Option {
	return func(c *config) { c.user, c.pass = name, password }
}

// Server is a spawned redis-server (a data node, or a sentinel of StartSentinel). Its methods
// are safe for concurrent use.
type Server struct {
	dir   string
	cfg   config
	tls   *tlsFiles
	kind  kind
	extra []string // more arguments: --replicaof for a sentinel set's replica; guarded by mu

	mu      sync.Mutex
	port    int
	busPort int // the cluster bus port of a member of StartCluster's cluster
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd's process has exited
}

// kind is what a Server runs as.
type kind int

const (
	standalone kind = iota
	clusterNode
	sentinelNode
)

// Start spawns a redis-server for tb and kills it at cleanup. It skips the test in -short mode
// and when redis-server is not installed, and fails it when the server does not come up.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	skipUnlessRedis(tb)
	cfg := newConfig(opts)
	dir := tb.TempDir()
	files, err := tlsFor(cfg, dir)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	s := &Server{dir: dir, cfg: cfg, tls: files}
	tb.Cleanup(s.Kill)
	if err := s.launch(); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return s
}

// skipUnlessRedis skips tb in -short mode and when redis-server or redis-cli is missing.
func skipUnlessRedis(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("redistest: spawns redis-server; skipped with -short")
	}
	for _, bin := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(bin); err != nil {
			tb.Skipf("redistest: %s is not on PATH (Debian: apt-get install redis-server; macOS: brew install redis)", bin)
		}
	}
}

// launch starts the server on a free port, trying again on another when the port was taken.
func (s *Server) launch() error {
	var err error
	for range 5 { // a port found free can be taken by another process before redis binds it
		var port, bus int
		if port, err = freePort(); err != nil {
			return err
		}
		if s.kind == clusterNode {
			if bus, err = freePort(); err != nil {
				return err
			}
		}
		if err = s.start(port, bus); err == nil {
			return nil
		}
	}
	return err
}

// freePort is a port for the server to bind (freeport says why not port 0).
func freePort() (int, error) { return freeport.Port() }

// args is redis-server's command line for port (and bus, the cluster bus port).
func (s *Server) argv(port, bus int) []string {
	var args []string
	if s.kind == sentinelNode {
		args = append(args, filepath.Join(s.dir, "sentinel.conf"), "--sentinel")
	}
	args = append(args, "--bind", "127.0.0.1", "--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"), "--daemonize", "no")
	if s.tls != nil {
		args = append(args, "--port", "0", "--tls-port", strconv.Itoa(port),
			"--tls-cert-file", s.tls.cert, "--tls-key-file", s.tls.key, "--tls-ca-cert-file", s.tls.ca,
			"--tls-auth-clients", "no", "--tls-replication", "yes")
		if s.kind == clusterNode || (s.kind == standalone && s.cfg.cluster) {
			args = append(args, "--tls-cluster", "yes")
		}
	} else {
		args = append(args, "--port", strconv.Itoa(port))
	}
	if s.kind == sentinelNode {
		if s.cfg.sentinelPass != "" {
			args = append(args, "--requirepass", s.cfg.sentinelPass)
		}
		return args
	}
	// A replica's first sync is immediate: no waiting 5 s for more replicas to share a diskless
	// transfer, which is what makes a topology slow to start.
	args = append(args, "--save", "", "--repl-diskless-sync-delay", "0")
	if s.cfg.aof {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	if s.kind == clusterNode || s.cfg.cluster {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(s.dir, "nodes.conf"))
	}
	if s.kind == clusterNode {
		args = append(args, "--cluster-port", strconv.Itoa(bus),
			"--cluster-node-timeout", strconv.FormatInt(s.cfg.nodeTimeout.Milliseconds(), 10))
	}
	if s.cfg.user != "" {
		args = append(args, "--user", s.cfg.user, "on", ">"+s.cfg.pass, "~*", "&*", "+@all",
			"--user", "default", "off", "--masteruser", s.cfg.user, "--masterauth", s.cfg.pass)
	}
	s.mu.Lock()
	args = append(args, s.extra...)
	s.mu.Unlock()
	return append(args, s.cfg.args...)
}

// setExtra replaces the arguments beyond the configuration, for the next start.
func (s *Server) setExtra(extra []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.extra = extra
}

// start runs redis-server on port and waits until it answers PING. The caller holds no lock.
func (s *Server) start(port, bus int) error {
	cmd := exec.Command("redis-server", s.argv(port, bus)...)
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.mu.Lock()
	s.port, s.busPort, s.cmd, s.exited = port, bus, cmd, exited
	s.mu.Unlock()

	err := s.waitReady(cmd.Process.Pid, exited)
	if err == nil && s.kind == standalone && s.cfg.cluster {
		err = s.assignSlots()
	}
	if err != nil {
		s.Kill()
		log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
		return fmt.Errorf("redis-server on port %d: %w\n%s", port, err, lastLines(string(log), 5))
	}
	return nil
}

// options are the client options of the server: its address, TLS and credentials.
func (s *Server) options() *redis.Options {
	o := &redis.Options{Addr: s.Addr(), TLSConfig: s.tls.config()}
	if s.kind == sentinelNode {
		o.Password = s.cfg.sentinelPass
	} else {
		o.Username, o.Password = s.cfg.user, s.cfg.pass
	}
	return o
}

// admin is a client of the server for the kit's own commands: no retries, short timeouts.
func (s *Server) admin() *redis.Client {
	o := s.options()
	o.MaxRetries, o.DialTimeout, o.PoolSize = -1, time.Second, 2
	return redis.NewClient(o)
}

// waitReady polls INFO until the server of process pid answers, the process exits, or the
// deadline passes. It checks the answering process's id, so a server of someone else that
// grabbed the port is never mistaken for ours.
func (s *Server) waitReady(pid int, exited <-chan struct{}) error {
	c := s.admin()
	defer c.Close()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		info, err := c.InfoMap(ctx, "server").Result()
		cancel()
		if err == nil {
			if got := info["Server"]["process_id"]; got != strconv.Itoa(pid) {
				return fmt.Errorf("port taken by another redis-server (process %s)", got)
			}
			return nil
		}
		select {
		case <-exited:
			return errors.New("redis-server exited")
		case <-deadline.C:
			return fmt.Errorf("no answer within %s: %w", startTimeout, err)
		case <-tick.C:
		}
	}
}

// assignSlots gives the one node every slot (unless nodes.conf already did, after a restart) and
// waits until the cluster reports ok.
func (s *Server) assignSlots() error {
	c := s.admin()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := c.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER INFO: %w", err)
		}
		if strings.Contains(info, "cluster_state:ok") {
			return nil
		}
		if strings.Contains(info, "cluster_slots_assigned:0\r") {
			if err := c.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", 0, 16383).Err(); err != nil {
				return fmt.Errorf("CLUSTER ADDSLOTSRANGE: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not ok within %s: %s", startTimeout, info)
		case <-tick.C:
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func addr(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// scheme is base ("redis", "redis+cluster") with an s after redis for TLS.
func scheme(base string, tls bool) string {
	if tls {
		return "rediss" + strings.TrimPrefix(base, "redis")
	}
	return base
}

// userinfo is "user:password@" escaped for a URL, "" without a password.
func userinfo(user, pass string) string {
	if pass == "" && user == "" {
		return ""
	}
	return url.UserPassword(user, pass).String() + "@"
}

// Addr is the server's host:port.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return addr(s.port)
}

// URL is the server's URL, for code under test that is configured by REDIS_URL:
// redis://127.0.0.1:P/0, rediss:// with WithTLS, and user:password@ with WithUser (a sentinel's
// URL carries no credentials).
func (s *Server) URL() string {
	o := s.options()
	return scheme("redis", s.tls != nil) + "://" + userinfo(o.Username, o.Password) + s.Addr() + "/0"
}

// CACertFile is the PEM file of the CA that signed the server's certificate, "" without WithTLS.
func (s *Server) CACertFile() string { return s.tls.caFile() }

// TLSConfig trusts the server's CA; nil without WithTLS.
func (s *Server) TLSConfig() *tls.Config { return s.tls.config() }

// Client returns a client of the server, closed at tb's cleanup.
func (s *Server) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewClient(s.options())
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// ClusterClient returns a cluster client of a server started WithCluster, closed at tb's cleanup.
func (s *Server) ClusterClient(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	if !s.cfg.cluster {
		tb.Fatal("redistest: ClusterClient needs a server started WithCluster")
	}
	o := s.options()
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{o.Addr}, Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// running reports whether the server's process is alive (not killed, not exited).
func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// Kill stops the server with SIGKILL, as a crash would, and returns once the process is gone.
// It does nothing when the server is not running.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// Restart kills the server if it runs and starts it again on the same port and data directory,
// so clients reconnect to the same address. With WithAOF the data is still there. A cluster node
// comes back with its nodes.conf (a killed master rejoins as a replica of its successor); a
// sentinel with the configuration it rewrote.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Kill()
	s.mu.Lock()
	port, bus := s.port, s.busPort
	s.mu.Unlock()
	if err := s.start(port, bus); err != nil {
		tb.Fatalf("redistest: restart: %v", err)
	}
}

// RestartWith is Restart with args added to the command line for this start only (a later
// Restart starts the server as configured again), for a test that starts it as an operator
// would in a recovery: say, on a restored RDB with the append-only file off
// ("--appendonly", "no"), since a server with AOF on and no AOF starts empty instead of loading
// the RDB.
func (s *Server) RestartWith(tb testing.TB, args ...string) {
	tb.Helper()
	s.mu.Lock()
	configured := s.extra
	s.mu.Unlock()
	s.setExtra(append(slices.Clone(configured), args...))
	defer s.setExtra(configured)
	s.Restart(tb)
}

// Dir is the server's data directory (--dir): its RDB and append-only files, for a test that
// copies or destroys them (a backup and restore drill) while the server is down.
func (s *Server) Dir() string { return s.dir }

// StartReplica spawns a replica of s (--replicaof, with opts) and returns once it is linked to
// s, for tests of replication without a Sentinel set or a Cluster (redisx's replica
// acknowledgements). Restart keeps it a replica of s.
func (s *Server) StartReplica(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	_, port, _ := net.SplitHostPort(s.Addr())
	r := Start(tb, append(opts, WithArgs("--replicaof", "127.0.0.1", port))...)
	r.WaitLinked(tb)
	return r
}

// WaitLinked waits until s is a replica whose link to its master is up (after StartReplica, or
// a Restart of a replica).
func (s *Server) WaitLinked(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	err := waitFor(ctx, func() string {
		a := s.admin()
		defer a.Close()
		m, err := a.InfoMap(ctx, "replication").Result()
		if err != nil {
			return fmt.Sprintf("%s: %v", s.Addr(), err)
		}
		if r := m["Replication"]; r["role"] != "slave" || r["master_link_status"] != "up" {
			return fmt.Sprintf("%s is %s with link %s, want a linked replica", s.Addr(), r["role"], r["master_link_status"])
		}
		return ""
	})
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
}

// CPU is the CPU time (user and system) the redis-server behind rdb has used so far, from INFO
// cpu: what a benchmark divides by its units of work to report Redis's share of the cost.
func CPU(tb testing.TB, rdb redis.UniversalClient) time.Duration {
	tb.Helper()
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		tb.Fatal(err)
	}
	var secs float64
	for _, line := range strings.Split(info, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatalf("INFO cpu %s: %v", k, err)
			}
			secs += f
		}
	}
	return time.Duration(secs * float64(time.Second))
}
