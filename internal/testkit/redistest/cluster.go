package redistest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// topologyTimeout bounds every wait for a cluster or a sentinel set to settle: its creation, a
// failover, a migration's last step. Failovers take a few node timeouts; the rest is slack for
// a loaded machine.
const topologyTimeout = 30 * time.Second

// WithShards sets a StartCluster cluster's shape: masters masters (at least 3, as redis-cli
// requires) with replicasEach replicas each. The default is 3 and 1.
func WithShards(masters, replicasEach int) Option {
	return func(c *config) { c.masters, c.replicasEach = masters, replicasEach }
}

// WithNodeTimeout sets --cluster-node-timeout (default 1 s): how long a master may be silent
// before its replica takes over, so a KillMaster takes about two of it.
func WithNodeTimeout(d time.Duration) Option { return func(c *config) { c.nodeTimeout = d } }

// Cluster is a Redis Cluster of spawned redis-server processes, created by redis-cli as an
// operator would create it. Its methods are safe for concurrent use.
type Cluster struct {
	cfg   config
	tls   *tlsFiles
	nodes []*Server
	dir   string // removed by Close when the cluster made it (the shared cluster of Suite)
	owned bool
}

// StartCluster spawns a Redis Cluster for tb (3 masters with a replica each unless WithShards
// says otherwise) and stops it at cleanup. It returns once every node reports cluster_state:ok
// and every replica's link to its master is up. It skips the test like Start.
func StartCluster(tb testing.TB, opts ...Option) *Cluster {
	tb.Helper()
	skipUnlessRedis(tb)
	c, err := startCluster(tb.TempDir(), newConfig(opts))
	if c != nil {
		tb.Cleanup(c.Close)
	}
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return c
}

// startCluster is StartCluster without a test: dir holds every node's data. On an error the
// returned cluster, if not nil, has processes to Close.
func startCluster(dir string, cfg config) (*Cluster, error) {
	if cfg.masters < 3 || cfg.replicasEach < 0 {
		return nil, fmt.Errorf("a cluster of %d masters with %d replicas each: redis-cli needs 3 masters or more", cfg.masters, cfg.replicasEach)
	}
	files, err := tlsFor(cfg, dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, tls: files, dir: dir}
	n := cfg.masters * (1 + cfg.replicasEach)
	for i := range n {
		d := filepath.Join(dir, "node"+strconv.Itoa(i))
		if err := os.MkdirAll(d, 0o700); err != nil {
			return c, err
		}
		s := &Server{dir: d, cfg: cfg, tls: files, kind: clusterNode}
		c.nodes = append(c.nodes, s)
		if err := s.launch(); err != nil {
			return c, err
		}
	}
	args := []string{"--cluster", "create"}
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(cfg.replicasEach), "--cluster-yes")
	out, err := exec.Command("redis-cli", append(args, c.cliArgs()...)...).CombinedOutput()
	if err != nil {
		return c, fmt.Errorf("redis-cli --cluster create: %w\n%s", err, lastLines(string(out), 10))
	}
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	if err := c.waitHealthy(ctx); err != nil {
		return c, fmt.Errorf("cluster created but not healthy: %w", err)
	}
	return c, nil
}

// cliArgs are redis-cli's connection arguments: TLS and credentials.
func (c *Cluster) cliArgs() []string {
	var args []string
	if c.tls != nil {
		args = append(args, "--tls", "--cacert", c.tls.ca)
	}
	if c.cfg.user != "" {
		args = append(args, "--user", c.cfg.user, "--pass", c.cfg.pass, "--no-auth-warning")
	}
	return args
}

// Close kills every node (and removes the data of a cluster not tied to a test).
func (c *Cluster) Close() {
	for _, s := range c.nodes {
		s.Kill()
	}
	if c.owned {
		_ = os.RemoveAll(c.dir)
	}
}

// Nodes are every node, masters and replicas, in the order they were started, running or not.
func (c *Cluster) Nodes() []*Server { return slices.Clone(c.nodes) }

// Addrs are the host:port of every node.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		addrs[i] = s.Addr()
	}
	return addrs
}

// URL is the cluster as the services read it from REDIS_URL: every node's address,
// redis+cluster://127.0.0.1:P1?addr=127.0.0.1:P2&addr=..., rediss+cluster:// with WithTLS and
// user:password@ with WithUser.
func (c *Cluster) URL() string {
	addrs := c.Addrs()
	var b strings.Builder
	b.WriteString(scheme("redis+cluster", c.tls != nil) + "://" + userinfo(c.cfg.user, c.cfg.pass) + addrs[0])
	for i, a := range addrs[1:] {
		if i == 0 {
			b.WriteString("?")
		} else {
			b.WriteString("&")
		}
		b.WriteString("addr=" + a)
	}
	return b.String()
}

// CACertFile is the PEM file of the CA of the nodes' certificate, "" without WithTLS.
func (c *Cluster) CACertFile() string { return c.tls.caFile() }

// TLSConfig trusts the nodes' CA; nil without WithTLS.
func (c *Cluster) TLSConfig() *tls.Config { return c.tls.config() }

// stateReload is how often a cluster client of the kit reloads the slot map. go-redis reloads
// it at once on MOVED, ASK and READONLY, but not when a master is unreachable: with its default
// of 60 s, every command for a failed master's slots fails for up to a minute after a replica
// took over. A service's cluster client needs the same setting.
const stateReload = time.Second

// poolSize is the kit's cluster clients' pool per node. A test hands one client to every service
// it starts (production gives each its own), and on a cluster each service's event relay blocks
// one connection per stream while idle (see eventbus.Relay), so go-redis's default (10 per CPU)
// runs out and commands wait seconds for a connection.
const poolSize = 64

// options are cluster client options for every node, with TLS and credentials.
func (c *Cluster) options() *redis.ClusterOptions {
	return &redis.ClusterOptions{
		Addrs: c.Addrs(), Username: c.cfg.user, Password: c.cfg.pass, TLSConfig: c.tls.config(),
		ClusterStateReloadInterval: stateReload, PoolSize: poolSize,
	}
}

// Client returns a cluster client of every node, closed at tb's cleanup.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	cc := redis.NewClusterClient(c.options())
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Masters are the running nodes that are masters now.
func (c *Cluster) Masters(tb testing.TB) []*Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	masters, err := c.masters(ctx)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return masters
}

func (c *Cluster) masters(ctx context.Context) ([]*Server, error) {
	var masters []*Server
	for _, s := range c.nodes {
		if !s.running() {
			continue
		}
		role, err := roleOf(ctx, s)
		if err != nil {
			return nil, err
		}
		if role == "master" {
			masters = append(masters, s)
		}
	}
	return masters, nil
}

// roleOf is "master" or "slave", from the node's ROLE.
func roleOf(ctx context.Context, s *Server) (string, error) {
	a := s.admin()
	defer a.Close()
	r, err := a.Do(ctx, "ROLE").Slice()
	if err != nil || len(r) == 0 {
		return "", fmt.Errorf("ROLE of %s: %w", s.Addr(), err)
	}
	role, _ := r[0].(string)
	return role, nil
}

// Slot is the hash slot of key.
func (c *Cluster) Slot(tb testing.TB, key string) int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	for _, s := range c.nodes {
		if !s.running() {
			continue
		}
		a := s.admin()
		slot, err := a.ClusterKeySlot(ctx, key).Result()
		a.Close()
		if err != nil {
			tb.Fatalf("redistest: CLUSTER KEYSLOT on %s: %v", s.Addr(), err)
		}
		return int(slot)
	}
	tb.Fatal("redistest: no node of the cluster is running")
	return 0
}

// MasterFor is the node that serves key's slot, as the first running master sees it.
func (c *Cluster) MasterFor(tb testing.TB, key string) *Server {
	tb.Helper()
	slot := c.Slot(tb, key)
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	masters, err := c.masters(ctx)
	if err != nil || len(masters) == 0 {
		tb.Fatalf("redistest: no master to ask for slot %d: %v", slot, err)
	}
	owner, err := c.slotOwner(ctx, masters[0], slot)
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	return owner
}

// slotOwner is the master of slot in view's CLUSTER SLOTS.
func (c *Cluster) slotOwner(ctx context.Context, view *Server, slot int) (*Server, error) {
	a := view.admin()
	defer a.Close()
	//lint:ignore SA1019 CLUSTER SLOTS is deprecated, not removed, and gives the slot ranges this needs in one call
	ranges, err := a.ClusterSlots(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER SLOTS on %s: %w", view.Addr(), err)
	}
	for _, r := range ranges {
		if r.Start <= slot && slot <= r.End && len(r.Nodes) > 0 {
			if s := c.byAddr(r.Nodes[0].Addr); s != nil {
				return s, nil
			}
			return nil, fmt.Errorf("slot %d served by %s, not a node of the cluster", slot, r.Nodes[0].Addr)
		}
	}
	return nil, fmt.Errorf("slot %d is served by no node in %s's view", slot, view.Addr())
}

func (c *Cluster) byAddr(addr string) *Server {
	for _, s := range c.nodes {
		if s.Addr() == addr {
			return s
		}
	}
	return nil
}

// nodeLine is a line of CLUSTER NODES.
type nodeLine struct {
	id, addr string
	flags    []string
	master   string // the master's id, "-" for a master
}

func nodesOf(ctx context.Context, s *Server) ([]nodeLine, error) {
	a := s.admin()
	defer a.Close()
	out, err := a.ClusterNodes(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER NODES on %s: %w", s.Addr(), err)
	}
	var lines []nodeLine
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		lines = append(lines, nodeLine{id: f[0], addr: addr, flags: strings.Split(f[2], ","), master: f[3]})
	}
	return lines, nil
}

// waitHealthy waits until every running node reports cluster_state:ok, sees every node of the
// cluster, flags each one that is not running as failed, and, if a replica, has its link to its
// master up.
func (c *Cluster) waitHealthy(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		why := c.unhealthy(ctx)
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.New(why)
		case <-tick.C:
		}
	}
}

// unhealthy says what keeps the cluster from being healthy, "" when nothing does.
func (c *Cluster) unhealthy(ctx context.Context) string {
	down := map[string]bool{}
	for _, s := range c.nodes {
		if !s.running() {
			down[s.Addr()] = true
		}
	}
	for _, s := range c.nodes {
		if down[s.Addr()] {
			continue
		}
		a := s.admin()
		info, err := a.ClusterInfo(ctx).Result()
		if err == nil && !strings.Contains(info, "cluster_state:ok") {
			err = errors.New("cluster_state is not ok")
		}
		var repl map[string]string
		if err == nil {
			var m map[string]map[string]string
			m, err = a.InfoMap(ctx, "replication").Result()
			repl = m["Replication"]
		}
		a.Close()
		if err != nil {
			return fmt.Sprintf("node %s: %v", s.Addr(), err)
		}
		if repl["role"] == "slave" && repl["master_link_status"] != "up" {
			return fmt.Sprintf("replica %s: link to its master %s:%s is %s", s.Addr(), repl["master_host"], repl["master_port"], repl["master_link_status"])
		}
		lines, err := nodesOf(ctx, s)
		if err != nil {
			return err.Error()
		}
		if len(lines) != len(c.nodes) {
			return fmt.Sprintf("node %s knows %d nodes, want %d", s.Addr(), len(lines), len(c.nodes))
		}
		for _, l := range lines {
			failed := slices.Contains(l.flags, "fail")
			if down[l.addr] && !failed {
				return fmt.Sprintf("node %s does not see the stopped %s as failed yet", s.Addr(), l.addr)
			}
			if !down[l.addr] && (failed || slices.Contains(l.flags, "fail?")) {
				return fmt.Sprintf("node %s sees the running %s as failing (%v)", s.Addr(), l.addr, l.flags)
			}
		}
	}
	return ""
}

// KillMaster kills master with SIGKILL, as a crash would, and returns once a replica has taken
// its slots and the cluster is healthy again (see StartCluster), failing tb after a bounded
// wait. master must be a running master with a replica.
func (c *Cluster) KillMaster(tb testing.TB, master *Server) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	if role, err := roleOf(ctx, master); err != nil || role != "master" {
		tb.Fatalf("redistest: KillMaster of %s, which is no running master (role %q, %v)", master.Addr(), role, err)
	}
	master.Kill()
	if err := c.waitHealthy(ctx); err != nil {
		tb.Fatalf("redistest: no replica took over from the killed master %s within %s: %v", master.Addr(), topologyTimeout, err)
	}
}

// WaitHealthy waits until the cluster is healthy again (every running node ok, every stopped one
// seen as failed, every replica linked), e.g. after a Restart of a node.
func (c *Cluster) WaitHealthy(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	if err := c.waitHealthy(ctx); err != nil {
		tb.Fatalf("redistest: cluster not healthy within %s: %v", topologyTimeout, err)
	}
}

// Flush empties every master (FLUSHALL), so the next test starts from an empty cluster.
func (c *Cluster) Flush(tb testing.TB) {
	tb.Helper()
	if err := c.flush(); err != nil {
		tb.Fatalf("redistest: %v", err)
	}
}

func (c *Cluster) flush() error {
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	masters, err := c.masters(ctx)
	if err != nil {
		return err
	}
	for _, s := range masters {
		a := s.admin()
		err := a.FlushAll(ctx).Err()
		a.Close()
		if err != nil {
			return fmt.Errorf("FLUSHALL on %s: %w", s.Addr(), err)
		}
	}
	return nil
}

// MigrateOption changes how MigrateSlot moves keys.
type MigrateOption func(*migration)

type migration struct {
	batch int
	pause time.Duration
}

// MigrateBatch moves n keys per MIGRATE (default 3).
func MigrateBatch(n int) MigrateOption { return func(m *migration) { m.batch = max(n, 1) } }

// MigratePause waits d after each batch (default none), so a migration stays in progress, with
// keys of the slot on both nodes and clients redirected by ASK, while a load runs beside it.
func MigratePause(d time.Duration) MigrateOption { return func(m *migration) { m.pause = d } }

// MigrateSlot moves slot, with its keys, from its master to the master to, live, as
// redis-cli --cluster reshard does: CLUSTER SETSLOT IMPORTING on to and MIGRATING on the owner,
// MIGRATE of the keys in batches, then SETSLOT NODE on every master. It does nothing when to
// serves the slot already. Call it from the test's goroutine; run the load beside it in another.
func (c *Cluster) MigrateSlot(tb testing.TB, ctx context.Context, slot int, to *Server, opts ...MigrateOption) {
	tb.Helper()
	m := migration{batch: 3}
	for _, o := range opts {
		o(&m)
	}
	if err := c.migrateSlot(ctx, slot, to, m); err != nil {
		tb.Fatalf("redistest: migrate slot %d to %s: %v", slot, to.Addr(), err)
	}
}

func (c *Cluster) migrateSlot(ctx context.Context, slot int, to *Server, m migration) error {
	from, err := c.slotOwner(ctx, to, slot)
	if err != nil {
		return err
	}
	if from == to {
		return nil
	}
	fromID, err := nodeID(ctx, from)
	if err != nil {
		return err
	}
	toID, err := nodeID(ctx, to)
	if err != nil {
		return err
	}
	src, dst := from.admin(), to.admin()
	defer src.Close()
	defer dst.Close()
	if err := dst.Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", fromID).Err(); err != nil {
		return fmt.Errorf("SETSLOT IMPORTING on %s: %w", to.Addr(), err)
	}
	if err := src.Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", toID).Err(); err != nil {
		return fmt.Errorf("SETSLOT MIGRATING on %s: %w", from.Addr(), err)
	}
	host, port, _ := strings.Cut(to.Addr(), ":")
	for {
		keys, err := src.ClusterGetKeysInSlot(ctx, slot, m.batch).Result()
		if err != nil {
			return fmt.Errorf("GETKEYSINSLOT on %s: %w", from.Addr(), err)
		}
		if len(keys) == 0 {
			break
		}
		args := []any{"MIGRATE", host, port, "", 0, 5000}
		if c.cfg.user != "" {
			args = append(args, "AUTH2", c.cfg.user, c.cfg.pass)
		}
		args = append(args, "KEYS")
		for _, k := range keys {
			args = append(args, k)
		}
		if err := src.Do(ctx, args...).Err(); err != nil {
			return fmt.Errorf("MIGRATE from %s: %w", from.Addr(), err)
		}
		if m.pause > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(m.pause):
			}
		}
	}
	// The new owner first, so it never answers ASK for a slot the old one no longer serves.
	order := []*Server{to, from}
	masters, err := c.masters(ctx)
	if err != nil {
		return err
	}
	for _, s := range masters {
		if s != to && s != from {
			order = append(order, s)
		}
	}
	for _, s := range order {
		a := s.admin()
		err := a.Do(ctx, "CLUSTER", "SETSLOT", slot, "NODE", toID).Err()
		a.Close()
		if err != nil {
			return fmt.Errorf("SETSLOT NODE on %s: %w", s.Addr(), err)
		}
	}
	// Wait until every node's view agrees, so MasterFor right after sees the move.
	for {
		agreed := true
		for _, s := range c.nodes {
			if !s.running() {
				continue
			}
			owner, err := c.slotOwner(ctx, s, slot)
			if err != nil || owner != to {
				agreed = false
				break
			}
		}
		if agreed {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nodes do not agree on the new owner: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func nodeID(ctx context.Context, s *Server) (string, error) {
	a := s.admin()
	defer a.Close()
	id, err := a.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		return "", fmt.Errorf("CLUSTER MYID on %s: %w", s.Addr(), err)
	}
	return id, nil
}
