package natstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/postamt/postamt/internal/testkit/freeport"
)

// clusterReadyTimeout bounds how long a cluster may take to elect a JetStream meta leader with
// every peer current, and a restarted server to catch up: generous, because a loaded 2-core
// machine runs the whole suite beside it.
const clusterReadyTimeout = 60 * time.Second

// startAttempts is how often a cluster is started on newly picked ports when a port picked free
// was taken before the server bound it.
const startAttempts = 3

// Cluster is n embedded NATS servers with JetStream, routed to one another, as the prod overlay
// runs them (3 servers, R3 streams), for tests of what a server's loss does. Server i is named
// "n<i+1>" (the names stream and meta leaders are reported by). Its methods are safe for
// concurrent use; those taking tb fail it and must be called from the test's goroutine.
//
// Every server has fixed client and route ports, picked below the kernel's ephemeral range
// (package freeport): routes name their peers' ports before those listen, and a restarted server
// must come back on the client port its clients' URL lists name.
type Cluster struct {
	name string

	// bin and dir are a process cluster's nats-server binary and the directory of its servers'
	// configs, stores and logs (StartProcessCluster); empty for embedded servers.
	bin, dir string

	mu    sync.Mutex
	opts  []*server.Options // of a process cluster: what its config files say
	srvs  []*server.Server  // embedded servers, nil while killed (all nil for processes)
	procs []*process        // processes, nil while killed; nil for embedded servers
}

// StartCluster runs n servers for tb, waits until JetStream has a meta leader and all n peers are
// current, and shuts them down at cleanup. opts adjust every server's options. Tests are skipped
// with -short.
func StartCluster(tb testing.TB, n int, opts ...Option) *Cluster {
	tb.Helper()
	if testing.Short() {
		tb.Skip("natstest: starts a NATS cluster; skipped with -short")
	}
	if n < 1 {
		tb.Fatalf("natstest: a cluster of %d servers", n)
	}
	c := &Cluster{name: "postamt-test"}
	tb.Cleanup(c.shutdownAll)
	var err error
	for range startAttempts {
		if err = c.start(tb, n, opts); err == nil {
			break
		}
		c.shutdownAll()
	}
	if err != nil {
		tb.Fatalf("natstest: start a cluster of %d: %v", n, err)
	}
	c.waitReady(tb, nil)
	return c
}

// start picks ports and starts every server at once (routes to peers not up yet are retried by
// the servers themselves).
func (c *Cluster) start(tb testing.TB, n int, extra []Option) error {
	tb.Helper()
	clientPorts, routePorts := make([]int, n), make([]int, n)
	for i := range n {
		var err error
		if clientPorts[i], err = freeport.Port(); err != nil {
			return err
		}
		if routePorts[i], err = freeport.Port(); err != nil {
			return err
		}
	}
	routes := make([]*url.URL, n)
	for i, p := range routePorts {
		routes[i] = &url.URL{Scheme: "nats", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))}
	}
	c.mu.Lock()
	c.opts, c.srvs = make([]*server.Options, n), make([]*server.Server, n)
	for i := range n {
		o := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       clientPorts[i],
			JetStream:  true,
			StoreDir:   tb.TempDir(),
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: c.name, Host: "127.0.0.1", Port: routePorts[i]},
			// Every server names all, itself included: the servers drop the route to
			// themselves, and the configuration is the same on all, as in the prod overlay.
			Routes: routes,
		}
		for _, opt := range extra {
			opt(o)
		}
		c.opts[i] = o
	}
	c.mu.Unlock()

	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = c.run(i) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// run starts server i on its options and records it.
func (c *Cluster) run(i int) error {
	c.mu.Lock()
	o := c.opts[i].Clone()
	c.mu.Unlock()
	ns, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("server %s: %w", o.ServerName, err)
	}
	ns.Start()
	if !ns.ReadyForConnections(readyTimeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return fmt.Errorf("server %s not ready within %s (client port %d, route port %d taken?)", o.ServerName, readyTimeout, o.Port, o.Cluster.Port)
	}
	c.mu.Lock()
	c.srvs[i] = ns
	c.mu.Unlock()
	return nil
}

// URL lists every server's client URL, comma-separated, as NATS_URL takes them: a client
// connects to any and fails over to the others. Killed servers stay in the list.
func (c *Cluster) URL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	urls := make([]string, len(c.opts))
	for i, o := range c.opts {
		urls[i] = "nats://" + net.JoinHostPort(o.Host, strconv.Itoa(o.Port))
	}
	return strings.Join(urls, ",")
}

// Servers returns the embedded servers by index, nil for one killed, for tests that inspect them.
// A process cluster's are all nil.
func (c *Cluster) Servers() []*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*server.Server(nil), c.srvs...)
}

// Name is server i's name, as stream and meta leaders are reported by.
func (c *Cluster) Name(i int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.opts[i].ServerName
}

// Index returns the index of the server named name, -1 when none is.
func (c *Cluster) Index(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, o := range c.opts {
		if o.ServerName == name {
			return i
		}
	}
	return -1
}

// MetaLeader returns the index of the running server that leads JetStream's meta group, -1 while
// there is none.
func (c *Cluster) MetaLeader() int {
	if c.isProcesses() {
		i, _ := c.processMetaLeader()
		return i
	}
	for i, s := range c.Servers() {
		if s != nil && s.Running() && s.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// StreamLeader returns the index of the running server that leads stream (in the global
// account), -1 while there is none. A process cluster's is the leader the stream's info names,
// as a client asking sees it (the stream leader answers that request).
func (c *Cluster) StreamLeader(stream string) int {
	if c.isProcesses() {
		return c.processStreamLeader(stream)
	}
	for i, s := range c.Servers() {
		if s != nil && s.Running() && s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// Kill shuts server i down at once and waits until it is down: its clients and routes drop and
// the others carry on without it. An embedded server cannot die harder than Shutdown: it steps
// down from the raft groups it leads first, handing the lead to a current peer, so a new leader
// is there sooner than after a crash's election timeout. Everything else a client sees (its
// connection cut, requests in flight unanswered) is a crash's; StartProcessCluster's servers
// crash for real. Killing a killed server does nothing.
//
// A process cluster's server is killed for real: SIGKILL, waiting until the process has exited.
func (c *Cluster) Kill(i int) {
	if c.isProcesses() {
		c.killProcess(i)
		return
	}
	c.mu.Lock()
	ns := c.srvs[i]
	c.srvs[i] = nil
	c.mu.Unlock()
	if ns == nil {
		return
	}
	ns.Shutdown()
	ns.WaitForShutdown()
}

// Restart starts server i again (after Kill; a running one is killed first) on the same ports and
// store directory, and waits until it has rejoined: a meta leader with all peers current, and
// every stream with a leader and all its replicas current (the restarted one caught up).
func (c *Cluster) Restart(tb testing.TB, i int) {
	tb.Helper()
	c.Kill(i)
	var err error
	// The ports were the server's a moment ago; one taken meanwhile (rare below the ephemeral
	// range) is waited for a little, since the clients' URL lists name this one.
	for range startAttempts {
		if c.isProcesses() {
			err = c.runProcess(i)
		} else {
			err = c.run(i)
		}
		if err == nil {
			break
		}
	}
	if err != nil {
		tb.Fatalf("natstest: restart: %v", err)
	}
	c.waitReady(tb, c.StreamsCurrent)
}

// waitReady waits until a meta leader sees every server as a current peer, every running server
// is current with the meta group, and more (when not nil) returns nil.
func (c *Cluster) waitReady(tb testing.TB, more func() error) {
	tb.Helper()
	deadline := time.Now().Add(clusterReadyTimeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		last := c.ready()
		if last == nil && more != nil {
			last = more()
		}
		if last == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("natstest: cluster not ready within %s: %v", clusterReadyTimeout, last)
		}
		<-tick.C
	}
}

// ready reports why the cluster is not ready yet: no meta leader, a peer missing or a running
// server behind the meta group.
func (c *Cluster) ready() error {
	if c.isProcesses() {
		return c.processReady()
	}
	srvs := c.Servers()
	leader := c.MetaLeader()
	if leader < 0 {
		return errors.New("no JetStream meta leader")
	}
	if got := len(srvs[leader].JetStreamClusterPeers()); got != len(srvs) {
		return fmt.Errorf("the meta leader %s sees %d of %d peers", c.Name(leader), got, len(srvs))
	}
	for i, s := range srvs {
		if s == nil {
			continue
		}
		if !s.JetStreamIsCurrent() {
			return fmt.Errorf("server %s is not current with the meta group", c.Name(i))
		}
	}
	return nil
}

// StreamsCurrent returns nil when every stream of the global account has a leader and each of
// its replicas is online and current, else an error naming the first stream that is not (how
// many replicas it has current). Streams are listed through a running server.
func (c *Cluster) StreamsCurrent() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nc, err := c.connectAny()
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	lister := js.ListStreams(ctx)
	for info := range lister.Info() {
		if err := replicasCurrent(info); err != nil {
			return err
		}
	}
	if err := lister.Err(); err != nil {
		return fmt.Errorf("list streams: %w", err)
	}
	return nil
}

// replicasCurrent checks one stream's leader and replicas as its info reports them.
func replicasCurrent(info *jetstream.StreamInfo) error {
	name := info.Config.Name
	ci := info.Cluster
	if ci == nil || ci.Leader == "" {
		return fmt.Errorf("stream %s has no leader", name)
	}
	current := 1 // the leader
	var behind []string
	for _, p := range ci.Replicas {
		if p.Current && !p.Offline {
			current++
		} else {
			behind = append(behind, p.Name)
		}
	}
	if want := max(info.Config.Replicas, 1); current < want || len(behind) > 0 {
		return fmt.Errorf("stream %s: %d of %d replicas current (leader %s; behind or offline: %v)", name, current, want, ci.Leader, behind)
	}
	return nil
}

// connectAny connects to the first running server, without reconnects: for one look.
func (c *Cluster) connectAny() (*nats.Conn, error) {
	for i := range c.size() {
		if !c.running(i) {
			continue
		}
		c.mu.Lock()
		url := "nats://" + net.JoinHostPort(c.opts[i].Host, strconv.Itoa(c.opts[i].Port))
		c.mu.Unlock()
		nc, err := nats.Connect(url, nats.NoReconnect(), nats.Timeout(2*time.Second))
		if err == nil {
			return nc, nil
		}
	}
	return nil, errors.New("no running server to connect to")
}

// Conn returns a connection to the cluster (any server, failing over to the others) that
// reconnects forever and quickly, as a service's would, closed at tb's cleanup; opts are added to
// those.
func (c *Cluster) Conn(tb testing.TB, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(20 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(c.URL(), opts...)
	if err != nil {
		tb.Fatalf("natstest: connect: %v", err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a new connection to the cluster. Async publishes time
// out after 5s, so an acknowledgement lost with a server fails instead of waiting forever.
func (c *Cluster) JetStream(tb testing.TB) jetstream.JetStream {
	tb.Helper()
	js, err := jetstream.New(c.Conn(tb), jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		tb.Fatalf("natstest: jetstream: %v", err)
	}
	return js
}

// shutdownAll stops every running server, in parallel (a process cluster's with SIGKILL: its
// stores are thrown away).
func (c *Cluster) shutdownAll() {
	n := c.size()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { c.Kill(i) })
	}
	wg.Wait()
}

// isProcesses reports whether the servers are processes (StartProcessCluster).
func (c *Cluster) isProcesses() bool { return c.bin != "" }

// processStreamLeader asks the cluster for stream's info and returns the index of the leader it
// names, -1 when there is none or no answer (a leader just killed answers nothing until the
// election). The request's timeout is short: callers poll, and a test timing the failover sees
// the new leader within a second of its election rather than of a long timeout.
func (c *Cluster) processStreamLeader(stream string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	nc, err := c.connectAny()
	if err != nil {
		return -1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return -1
	}
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return -1
	}
	ci := st.CachedInfo().Cluster
	if ci == nil || ci.Leader == "" {
		return -1
	}
	i := c.Index(ci.Leader)
	if i < 0 || !c.running(i) {
		return -1
	}
	return i
}

// StreamMsgs returns how many messages server i holds of stream (in the global account), as its
// own JetStream report says: a replica's count, not the leader's. Server i must be running.
func (c *Cluster) StreamMsgs(i int, stream string) (uint64, error) {
	var info *server.JSInfo
	if c.isProcesses() {
		var err error
		if info, err = c.jsz(i); err != nil {
			return 0, err
		}
	} else {
		s := c.Servers()[i]
		if s == nil {
			return 0, fmt.Errorf("server %s is not running", c.Name(i))
		}
		var err error
		if info, err = s.Jsz(&server.JSzOptions{Accounts: true, Streams: true}); err != nil {
			return 0, fmt.Errorf("%s jsz: %w", c.Name(i), err)
		}
	}
	for _, a := range info.AccountDetails {
		for _, st := range a.Streams {
			if st.Name == stream {
				return st.State.Msgs, nil
			}
		}
	}
	return 0, fmt.Errorf("server %s holds no stream %s", c.Name(i), stream)
}

// MoveStreamLeader asks stream's leader to step down in favour of server to (a stepdown request
// with a preferred placement), for a test that wants one server to lead both the stream and the
// meta group before it kills it. It returns once the request was accepted; the new leader takes
// over a moment later (poll StreamLeader).
func (c *Cluster) MoveStreamLeader(stream string, to int) error {
	nc, err := c.connectAny()
	if err != nil {
		return err
	}
	defer nc.Close()
	req, err := json.Marshal(server.JSApiLeaderStepdownRequest{Placement: &server.Placement{Preferred: c.Name(to)}})
	if err != nil {
		return err
	}
	msg, err := nc.Request(fmt.Sprintf(server.JSApiStreamLeaderStepDownT, stream), req, 5*time.Second)
	if err != nil {
		return fmt.Errorf("stream %s stepdown: %w", stream, err)
	}
	var resp server.JSApiStreamLeaderStepDownResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return fmt.Errorf("stream %s stepdown: %w", stream, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("stream %s stepdown to %s: %w", stream, c.Name(to), resp.Error)
	}
	return nil
}
