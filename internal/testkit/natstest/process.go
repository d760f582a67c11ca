package natstest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/postamt/postamt/internal/testkit/freeport"
)

// ServerBinEnv names an environment variable holding a nats-server binary for StartProcessCluster
// to run instead of building one: to test against another release. It must be 2.10 or newer (see
// minVersion).
const ServerBinEnv = "NATSTEST_SERVER"

// processReadyTimeout bounds how long a nats-server process may take to accept connections after
// it was started: longer than an embedded server's, since a restart after SIGKILL first recovers
// its store (rebuilding the indexes a crash left unwritten).
const processReadyTimeout = 30 * time.Second

// minVersion is the oldest nats-server the process cluster runs: 2.10 brought consumers with
// several filter subjects (the services' consumers use FilterSubjects, and nats.go refuses a
// server that drops them) and the jetstream sync_interval option the prod config sets. Debian's
// /usr/sbin/nats-server (2.9.10 in bookworm) is older, which is why the binary is built from the
// module by default.
var minVersion = [2]int{2, 10}

// process is one running nats-server.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has exited and been reaped
	log    *os.File
}

// StartProcessCluster is StartCluster with every server a nats-server process of its own instead
// of an embedded one, so that Kill is a crash: SIGKILL, with no leadership handed over, no store
// closed cleanly, requests in flight never answered, and the others noticing only when the raft
// election timeout passes. Restart recovers the store the crash left, on the same ports.
//
// The binary is $NATSTEST_SERVER when set, else built (once per call, from the Go build cache)
// from the nats-server module this module requires, the same release the embedded servers run.
// Each server has a config file of its own in tb's temp dir, as the prod overlay's (server_name,
// client, cluster and monitoring ports, jetstream with sync_interval: always), and dies with the
// test binary (Pdeathsig on Linux). Servers() lists nil for every server of a process cluster;
// the other methods work for both kinds. Tests are skipped with -short, and when no binary can be
// had.
func StartProcessCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	if testing.Short() {
		tb.Skip("natstest: starts a NATS cluster; skipped with -short")
	}
	if n < 1 {
		tb.Fatalf("natstest: a cluster of %d servers", n)
	}
	bin := serverBinary(tb)
	// The directory is made before Cleanup(shutdownAll) is registered, so it is removed after
	// the processes are dead (cleanups run last first), never under a running server.
	dir := tb.TempDir()
	c := &Cluster{name: "postamt-test", bin: bin, dir: dir}
	tb.Cleanup(c.shutdownAll)
	var err error
	for range startAttempts {
		if err = c.startProcesses(n); err == nil {
			break
		}
		c.shutdownAll()
	}
	if err != nil {
		tb.Fatalf("natstest: start a cluster of %d nats-server processes: %v", n, err)
	}
	c.waitReady(tb, nil)
	return c
}

// serverBinary returns the nats-server to run, skipping tb when there is none new enough.
func serverBinary(tb testing.TB) string {
	tb.Helper()
	bin := os.Getenv(ServerBinEnv)
	if bin == "" {
		var err error
		if bin, err = buildServer(tb.TempDir()); err != nil {
			tb.Skipf("natstest: no nats-server to run: %v (set %s to a nats-server %d.%d or newer; Debian's is too old)", err, ServerBinEnv, minVersion[0], minVersion[1])
		}
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		tb.Skipf("natstest: %s --version: %v", bin, err)
	}
	if !versionAtLeast(string(out), minVersion) {
		tb.Skipf("natstest: %s is %s; the process cluster needs %d.%d or newer (several filter subjects per consumer, sync_interval)", bin, strings.TrimSpace(string(out)), minVersion[0], minVersion[1])
	}
	return bin
}

// buildServer builds nats-server from the module this package's module requires, in this
// package's source directory (so that module's go.mod decides the release), into dir. Compiles
// come from the Go build cache: after the first, it costs a link.
func buildServer(dir string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		return "", errors.New("the natstest sources are not at hand (built with -trimpath?)")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		//lint:ignore SA1019 only for a test binary run without go test (which puts GOROOT/bin on PATH) on the machine that built it
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "nats-server")
	cmd := exec.Command(goBin, "build", "-o", out, "github.com/nats-io/nats-server/v2")
	cmd.Dir = filepath.Dir(file)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build nats-server: %w: %s", err, bytes.TrimSpace(msg))
	}
	return out, nil
}

var versionRE = regexp.MustCompile(`v?(\d+)\.(\d+)\.\d+`)

// versionAtLeast reports whether `nats-server --version` output names min or later.
func versionAtLeast(out string, min [2]int) bool {
	m := versionRE.FindStringSubmatch(out)
	if m == nil {
		return false
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	return major > min[0] || major == min[0] && minor >= min[1]
}

// startProcesses picks ports, writes every server's config and starts them all (routes to peers
// not up yet are retried by the servers themselves).
func (c *Cluster) startProcesses(n int) error {
	ports := make([][3]int, n) // client, route, monitoring
	for i := range n {
		for k := range ports[i] {
			var err error
			if ports[i][k], err = freeport.Port(); err != nil {
				return err
			}
		}
	}
	routes := make([]string, n)
	for i := range n {
		routes[i] = "nats://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i][1]))
	}
	c.mu.Lock()
	c.opts, c.srvs, c.procs = make([]*server.Options, n), make([]*server.Server, n), make([]*process, n)
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		c.opts[i] = &server.Options{
			ServerName: name,
			Host:       "127.0.0.1",
			Port:       ports[i][0],
			HTTPHost:   "127.0.0.1",
			HTTPPort:   ports[i][2],
			JetStream:  true,
			StoreDir:   filepath.Join(c.dir, name, "jetstream"),
			Cluster:    server.ClusterOpts{Name: c.name, Host: "127.0.0.1", Port: ports[i][1]},
		}
	}
	c.mu.Unlock()
	for i := range n {
		if err := c.writeConfig(i, routes); err != nil {
			return err
		}
	}
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- c.runProcess(i) }()
	}
	var all []error
	for range n {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// configTemplate is a server's config, as the prod overlay's nats.conf: every server names all
// routes, itself included (a server drops the route to itself), and every write is fsynced
// before it is acknowledged (sync_interval: always), so a SIGKILL loses nothing acknowledged.
const configTemplate = `# natstest: server %[1]s of a process cluster
server_name: %[1]s
listen: 127.0.0.1:%[2]d
http: 127.0.0.1:%[3]d
jetstream {
  store_dir: %[4]q
  sync_interval: always
}
cluster {
  name: %[5]s
  listen: 127.0.0.1:%[6]d
  routes: [
%[7]s  ]
}
`

// writeConfig writes server i's config file, dir/n<i+1>/nats.conf.
func (c *Cluster) writeConfig(i int, routes []string) error {
	c.mu.Lock()
	o := c.opts[i]
	c.mu.Unlock()
	var rs strings.Builder
	for _, r := range routes {
		fmt.Fprintf(&rs, "    %s\n", r)
	}
	conf := fmt.Sprintf(configTemplate, o.ServerName, o.Port, o.HTTPPort, o.StoreDir, c.name, o.Cluster.Port, rs.String())
	if err := os.MkdirAll(o.StoreDir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(c.configPath(i), []byte(conf), 0o644)
}

func (c *Cluster) configPath(i int) string {
	return filepath.Join(c.dir, c.Name(i), "nats.conf")
}

func (c *Cluster) logPath(i int) string {
	return filepath.Join(c.dir, c.Name(i), "nats.log")
}

// runProcess starts server i's process on its config and waits until it accepts connections as
// itself (a server of someone else's on the port is not taken for it). Its output is appended to
// dir/n<i+1>/nats.log, quoted when it fails to start.
func (c *Cluster) runProcess(i int) error {
	name := c.Name(i)
	log, err := os.OpenFile(c.logPath(i), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.bin, "-c", c.configPath(i))
	cmd.Stdout, cmd.Stderr = log, log
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start nats-server %s: %w", name, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{}), log: log}
	go func() {
		_ = cmd.Wait()
		_ = log.Close()
		close(p.exited)
	}()
	c.mu.Lock()
	c.procs[i] = p
	url := "nats://" + net.JoinHostPort(c.opts[i].Host, strconv.Itoa(c.opts[i].Port))
	c.mu.Unlock()

	deadline := time.Now().Add(processReadyTimeout)
	for {
		select {
		case <-p.exited:
			c.killProcess(i)
			return fmt.Errorf("nats-server %s exited at start (%v; port taken?):\n%s", name, cmd.ProcessState, c.logTail(i, 10))
		default:
		}
		nc, err := nats.Connect(url, nats.NoReconnect(), nats.Timeout(time.Second))
		if err == nil {
			got := nc.ConnectedServerName()
			nc.Close()
			if got == name {
				return nil
			}
			err = fmt.Errorf("the server on %s is %q", url, got)
		}
		if time.Now().After(deadline) {
			c.killProcess(i)
			return fmt.Errorf("nats-server %s not ready within %s: %w\n%s", name, processReadyTimeout, err, c.logTail(i, 10))
		}
		time.Sleep(20 * time.Millisecond) // polling a port; no event to wait on
	}
}

// killProcess sends server i SIGKILL and waits until it has exited. It does nothing when the
// server is not running.
func (c *Cluster) killProcess(i int) {
	c.mu.Lock()
	p := c.procs[i]
	c.procs[i] = nil
	c.mu.Unlock()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// logTail is the last n lines of server i's log.
func (c *Cluster) logTail(i, n int) string {
	b, _ := os.ReadFile(c.logPath(i))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}

// running reports whether server i is up (of either kind).
func (c *Cluster) running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.procs != nil {
		p := c.procs[i]
		if p == nil {
			return false
		}
		select {
		case <-p.exited:
			return false
		default:
			return true
		}
	}
	return c.srvs[i] != nil && c.srvs[i].Running()
}

// jsz asks server i's monitoring endpoint for its JetStream report (/jsz), with streams.
func (c *Cluster) jsz(i int) (*server.JSInfo, error) {
	c.mu.Lock()
	o := c.opts[i]
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	url := "http://" + net.JoinHostPort(o.HTTPHost, strconv.Itoa(o.HTTPPort)) + "/jsz?accounts=true&streams=true"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s /jsz: %w", o.ServerName, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s /jsz: %s", o.ServerName, resp.Status)
	}
	var info server.JSInfo
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		return nil, fmt.Errorf("%s /jsz: %w", o.ServerName, err)
	}
	return &info, nil
}

// processMetaLeader returns the index of the running server whose /jsz names itself the meta
// leader, -1 while none does. A server's own report is asked, not a peer's, which may still name
// a leader that has just died.
func (c *Cluster) processMetaLeader() (int, *server.JSInfo) {
	for i := range c.size() {
		if !c.running(i) {
			continue
		}
		info, err := c.jsz(i)
		if err == nil && info.Meta != nil && info.Meta.Leader == c.Name(i) {
			return i, info
		}
	}
	return -1, nil
}

// processReady is ready for a process cluster: the meta leader's /jsz lists every other server
// as a peer, and each running one as current.
func (c *Cluster) processReady() error {
	leader, info := c.processMetaLeader()
	if leader < 0 {
		return errors.New("no JetStream meta leader")
	}
	peers := make(map[string]*server.PeerInfo)
	for _, p := range info.Meta.Replicas {
		peers[p.Name] = p
	}
	for i := range c.size() {
		if i == leader {
			continue
		}
		p, ok := peers[c.Name(i)]
		switch {
		case !ok:
			return fmt.Errorf("the meta leader %s does not list %s as a peer", c.Name(leader), c.Name(i))
		case c.running(i) && (!p.Current || p.Offline):
			return fmt.Errorf("server %s is not current with the meta group (leader %s)", c.Name(i), c.Name(leader))
		}
	}
	return nil
}

// size is the number of servers.
func (c *Cluster) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.opts)
}
