package redistest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// masterName is the name the sentinels monitor the master under.
const masterName = "postamt"

// WithSentinelPassword makes the sentinels require password (requirepass), which the services
// read from REDIS_SENTINEL_PASSWORD; the sentinels use it among themselves too.
func WithSentinelPassword(password string) Option {
	return func(c *config) { c.sentinelPass = password }
}

// WithDownAfter sets the sentinels' down-after-milliseconds (default 1 s): how long a master
// may be silent before the sentinels fail it over.
func WithDownAfter(d time.Duration) Option { return func(c *config) { c.downAfter = d } }

// Sentinel is a master with replicas watched by sentinels (1, 2 and 3 by default), every one a
// spawned redis-server. Its methods are safe for concurrent use.
type Sentinel struct {
	cfg       config
	tls       *tlsFiles
	data      []*Server // the master started first, then the replicas
	sentinels []*Server
}

// StartSentinel spawns a sentinel set for tb and stops it at cleanup. It returns once every
// replica is linked to the master and every sentinel knows the master, its replicas and the
// other sentinels, so a failover can start right away. It skips the test like Start.
func StartSentinel(tb testing.TB, opts ...Option) *Sentinel {
	tb.Helper()
	skipUnlessRedis(tb)
	cfg := newConfig(opts)
	dir := tb.TempDir()
	files, err := tlsFor(cfg, dir)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	s := &Sentinel{cfg: cfg, tls: files}
	tb.Cleanup(s.Close)
	if err := s.start(dir); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return s
}

func (s *Sentinel) start(dir string) error {
	mkdir := func(name string) (string, error) {
		d := filepath.Join(dir, name)
		return d, os.MkdirAll(d, 0o700)
	}
	for i := range 1 + s.cfg.sentinelReplicas {
		d, err := mkdir("data" + strconv.Itoa(i))
		if err != nil {
			return err
		}
		n := &Server{dir: d, cfg: s.cfg, tls: s.tls}
		if i > 0 {
			host, port, _ := net.SplitHostPort(s.data[0].Addr())
			n.extra = []string{"--replicaof", host, port}
		}
		s.data = append(s.data, n)
		if err := n.launch(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	if err := s.waitLinked(ctx, s.data[0]); err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(s.data[0].Addr())
	conf := []string{
		"sentinel resolve-hostnames no",
		"sentinel announce-hostnames no",
		fmt.Sprintf("sentinel monitor %s %s %s 2", masterName, host, port),
		fmt.Sprintf("sentinel down-after-milliseconds %s %d", masterName, s.cfg.downAfter.Milliseconds()),
		// The least a failover may take before another sentinel tries again; small so a failed
		// attempt is retried within a test's patience.
		fmt.Sprintf("sentinel failover-timeout %s %d", masterName, max(3*s.cfg.downAfter.Milliseconds(), 3000)),
		fmt.Sprintf("sentinel parallel-syncs %s %d", masterName, s.cfg.sentinelReplicas),
	}
	if s.cfg.user != "" {
		conf = append(conf,
			fmt.Sprintf("sentinel auth-user %s %s", masterName, s.cfg.user),
			fmt.Sprintf("sentinel auth-pass %s %s", masterName, s.cfg.pass))
	}
	for i := range s.cfg.sentinels {
		d, err := mkdir("sentinel" + strconv.Itoa(i))
		if err != nil {
			return err
		}
		// The sentinel rewrites its file as it learns; a Restart starts from what it learnt.
		if err := os.WriteFile(filepath.Join(d, "sentinel.conf"), []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
			return err
		}
		n := &Server{dir: d, cfg: s.cfg, tls: s.tls, kind: sentinelNode}
		s.sentinels = append(s.sentinels, n)
		if err := n.launch(); err != nil {
			return err
		}
	}
	return s.waitSettled(ctx, s.data[0], false)
}

// Close kills every process of the set.
func (s *Sentinel) Close() {
	for _, n := range slices.Concat(s.sentinels, s.data) {
		n.Kill()
	}
}

// MasterName is the name the sentinels monitor the master under.
func (s *Sentinel) MasterName() string { return masterName }

// SentinelAddrs are the host:port of every sentinel.
func (s *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.sentinels))
	for i, n := range s.sentinels {
		addrs[i] = n.Addr()
	}
	return addrs
}

// URL is the set as the services read it from REDIS_URL:
// redis+sentinel://127.0.0.1:S1/0?master_name=postamt&addr=127.0.0.1:S2&addr=127.0.0.1:S3,
// rediss+sentinel:// with WithTLS. The user and password in it, with WithUser, are the data
// nodes' (unlike go-redis's ParseFailoverURL, which takes them for the sentinels'); the
// sentinels' own password, WithSentinelPassword, is not in the URL.
func (s *Sentinel) URL() string {
	addrs := s.SentinelAddrs()
	var b strings.Builder
	b.WriteString(scheme("redis+sentinel", s.tls != nil) + "://" + userinfo(s.cfg.user, s.cfg.pass) + addrs[0] + "/0?master_name=" + masterName)
	for _, a := range addrs[1:] {
		b.WriteString("&addr=" + a)
	}
	return b.String()
}

// CACertFile is the PEM file of the CA of the servers' certificate, "" without WithTLS.
func (s *Sentinel) CACertFile() string { return s.tls.caFile() }

// TLSConfig trusts the servers' CA; nil without WithTLS.
func (s *Sentinel) TLSConfig() *tls.Config { return s.tls.config() }

// Client returns a failover client (redis.NewFailoverClient) that finds the master through the
// sentinels, closed at tb's cleanup.
func (s *Sentinel) Client(tb testing.TB) *redis.Client {
	tb.Helper()
	c := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName: masterName, SentinelAddrs: s.SentinelAddrs(), SentinelPassword: s.cfg.sentinelPass,
		Username: s.cfg.user, Password: s.cfg.pass, TLSConfig: s.tls.config(),
	})
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Sentinels are the sentinel processes, running or not.
func (s *Sentinel) Sentinels() []*Server { return slices.Clone(s.sentinels) }

// DataNodes are the master and the replicas, running or not, in the order they were started.
func (s *Sentinel) DataNodes() []*Server { return slices.Clone(s.data) }

// Master is the data node the running sentinels report as master; it fails tb when they
// disagree or report an address that is not one of the set's.
func (s *Sentinel) Master(tb testing.TB) *Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	m, err := s.reportedMaster(ctx)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return m
}

// Replicas are the data nodes other than the master the sentinels report.
func (s *Sentinel) Replicas(tb testing.TB) []*Server {
	tb.Helper()
	m := s.Master(tb)
	var r []*Server
	for _, n := range s.data {
		if n != m {
			r = append(r, n)
		}
	}
	return r
}

// reportedMaster is the master every running sentinel reports.
func (s *Sentinel) reportedMaster(ctx context.Context) (*Server, error) {
	var master string
	for _, n := range s.sentinels {
		if !n.running() {
			continue
		}
		a := redis.NewSentinelClient(n.options())
		addr, err := a.GetMasterAddrByName(ctx, masterName).Result()
		a.Close()
		if err != nil {
			return nil, fmt.Errorf("sentinel %s: GET-MASTER-ADDR-BY-NAME: %w", n.Addr(), err)
		}
		got := net.JoinHostPort(addr[0], addr[1])
		if master != "" && got != master {
			return nil, fmt.Errorf("sentinels disagree on the master: %s and %s", master, got)
		}
		master = got
	}
	for _, n := range s.data {
		if n.Addr() == master {
			return n, nil
		}
	}
	return nil, fmt.Errorf("sentinels report master %q, not a node of the set", master)
}

// waitLinked waits until every running data node other than master and except is its replica
// with the link up.
func (s *Sentinel) waitLinked(ctx context.Context, master *Server, except ...*Server) error {
	return waitFor(ctx, func() string {
		for _, n := range s.data {
			if n == master || !n.running() || slices.Contains(except, n) {
				continue
			}
			a := n.admin()
			m, err := a.InfoMap(ctx, "replication").Result()
			a.Close()
			if err != nil {
				return fmt.Sprintf("replica %s: %v", n.Addr(), err)
			}
			r := m["Replication"]
			if got := net.JoinHostPort(r["master_host"], r["master_port"]); r["role"] != "slave" || got != master.Addr() || r["master_link_status"] != "up" {
				return fmt.Sprintf("%s is %s of %s with link %s, want the linked replica of %s", n.Addr(), r["role"], got, r["master_link_status"], master.Addr())
			}
		}
		return ""
	})
}

// waitSettled waits until every running sentinel reports master, knows the running replicas
// as healthy and knows the other running sentinels, and every replica is linked to master. With
// follow set, a failover the sentinels make meanwhile (a master slow to answer on a loaded
// machine is taken for down after down-after-milliseconds) is followed: the wait goes on for the
// master they agree on now.
func (s *Sentinel) waitSettled(ctx context.Context, master *Server, follow bool) error {
	if err := s.waitLinked(ctx, master); err != nil {
		return err
	}
	var replicas, others int
	for _, n := range s.data {
		if n.running() {
			replicas++
		}
	}
	replicas-- // the master
	for _, n := range s.sentinels {
		if n.running() {
			others++
		}
	}
	others--
	return waitFor(ctx, func() string {
		m, err := s.reportedMaster(ctx)
		if follow && err == nil && m != nil && m != master {
			master = m
		}
		if err != nil || m != master {
			return fmt.Sprintf("sentinels report master %v (%v), want %s", addrOf(m), err, master.Addr())
		}
		for _, n := range s.sentinels {
			if !n.running() {
				continue
			}
			a := redis.NewSentinelClient(n.options())
			mi, err := a.Master(ctx, masterName).Result()
			var rs []map[string]string
			if err == nil {
				rs, err = a.Replicas(ctx, masterName).Result()
			}
			a.Close()
			if err != nil {
				return fmt.Sprintf("sentinel %s: %v", n.Addr(), err)
			}
			if mi["flags"] != "master" || mi["num-other-sentinels"] != strconv.Itoa(others) {
				return fmt.Sprintf("sentinel %s: master flags %s, %s other sentinels, want master and %d", n.Addr(), mi["flags"], mi["num-other-sentinels"], others)
			}
			healthy := 0
			for _, r := range rs {
				if r["flags"] == "slave" && r["master-link-status"] == "ok" {
					healthy++
				}
			}
			if healthy < replicas {
				return fmt.Sprintf("sentinel %s knows %d healthy replicas, want %d", n.Addr(), healthy, replicas)
			}
		}
		return ""
	})
}

func addrOf(s *Server) string {
	if s == nil {
		return "none"
	}
	return s.Addr()
}

// waitFor polls why until it returns "" or ctx ends, and then returns its last answer.
func waitFor(ctx context.Context, why func() string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		w := why()
		if w == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New(w)
		case <-tick.C:
		}
	}
}

// Failover has the sentinels promote a replica (SENTINEL FAILOVER) and returns once every
// sentinel reports the new master and the other replicas are linked to it. The old master
// becomes a replica when a sentinel next looks at it (within about 10 s; WaitSettled waits for
// it); until then it still accepts writes, and a write it acknowledged after the promotion is
// lost, as with a real sentinel set without min-replicas-to-write.
func (s *Sentinel) Failover(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	old, err := s.reportedMaster(ctx)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	var sentinel *Server
	for _, n := range s.sentinels {
		if n.running() {
			sentinel = n
			break
		}
	}
	if sentinel == nil {
		tb.Fatal("redistest: no sentinel is running")
	}
	a := redis.NewSentinelClient(sentinel.options())
	defer a.Close()
	// INPROG or NOGOODSLAVE right after a change: the sentinel is still catching up.
	var lastErr error
	if err := waitFor(ctx, func() string {
		if lastErr = a.Failover(ctx, masterName).Err(); lastErr != nil {
			return lastErr.Error()
		}
		return ""
	}); err != nil {
		tb.Fatalf("redistest: SENTINEL FAILOVER: %v", err)
	}
	s.waitNewMaster(tb, ctx, old)
}

// KillMaster kills the master with SIGKILL, as a crash would, and returns once the sentinels
// have promoted a replica and the other running replicas are linked to it. The killed node
// stays down until Restart brings it back as a replica.
func (s *Sentinel) KillMaster(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	old, err := s.reportedMaster(ctx)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	old.Kill()
	s.waitNewMaster(tb, ctx, old)
}

// Restart restarts data node n as a replica of the master the sentinels report, as its config
// file (which a sentinel rewrites on every change) would in production: the kit's nodes have
// none, and a node that came back as a master waits, sometimes for over 30 s, for the sentinels
// to demote it. It returns once the set has settled (see WaitSettled).
func (s *Sentinel) Restart(tb testing.TB, n *Server) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	master, err := s.reportedMaster(ctx)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	if master == n {
		n.Restart(tb)
	} else {
		host, port, _ := net.SplitHostPort(master.Addr())
		n.setExtra([]string{"--replicaof", host, port})
		n.Restart(tb)
	}
	s.WaitSettled(tb)
}

// WaitSettled waits until the sentinels agree on a master that every other running data node
// replicates, e.g. after a Restart.
func (s *Sentinel) WaitSettled(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	var master *Server
	if err := waitFor(ctx, func() string {
		var err error
		if master, err = s.reportedMaster(ctx); err != nil {
			return err.Error()
		}
		return ""
	}); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	if err := s.waitSettled(ctx, master, true); err != nil {
		tb.Fatalf("redistest: sentinel set not settled within %s: %v", topologyTimeout, err)
	}
}

func (s *Sentinel) waitNewMaster(tb testing.TB, ctx context.Context, old *Server) {
	tb.Helper()
	var master *Server
	if err := waitFor(ctx, func() string {
		m, err := s.reportedMaster(ctx)
		if err != nil {
			return err.Error()
		}
		if m == old {
			return "the sentinels still report the old master " + old.Addr()
		}
		master = m
		return ""
	}); err != nil {
		tb.Fatalf("redistest: no failover from %s within %s: %v", old.Addr(), topologyTimeout, err)
	}
	if err := s.waitLinked(ctx, master, old); err != nil {
		tb.Fatalf("redistest: replicas not linked to the new master %s within %s: %v", master.Addr(), topologyTimeout, err)
	}
}
