package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/freeport"
	"github.com/postamt/postamt/internal/testkit/servetest"
)

// StartTimeout bounds how long a process may take to report SERVING on its readiness health
// service (it connects to Redis and NATS and, for the outbox, loads its connectors first).
const StartTimeout = 30 * time.Second

// Process is one `postamt serve SERVICE` child process on its own loopback ports, with its output
// in a log file. Restart keeps the ports, so clients reconnect to the same address. Its methods
// are safe for concurrent use.
type Process struct {
	// Name tells processes apart in logs and failure messages ("outbox-1").
	Name string
	// GRPCAddr and OpsAddr are the process's GRPC_ADDR and OPS_ADDR (/metrics).
	GRPCAddr, OpsAddr string
	// LogPath is the file its stdout and stderr go to, across restarts.
	LogPath string

	bin  string
	args []string
	env  []string
	conn *grpc.ClientConn

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	state  *os.ProcessState
}

// Exit is how a process ended.
type Exit struct {
	// Code is the exit status, -1 when a signal ended the process.
	Code int
	// Signal is the signal that ended it, if one did.
	Signal string
	// Took is the time from the signal sent to the exit.
	Took time.Duration
	// TimedOut reports that the process had not exited within the wait and was killed.
	TimedOut bool
}

// String says how the process ended, for logs and failure messages.
func (e Exit) String() string {
	s := fmt.Sprintf("exit status %d after %s", e.Code, e.Took.Round(time.Millisecond))
	if e.Signal != "" {
		s = fmt.Sprintf("killed by %s after %s", e.Signal, e.Took.Round(time.Millisecond))
	}
	if e.TimedOut {
		s = "did not exit in time, " + s
	}
	return s
}

// newProcess prepares a process with free ports; start runs it.
func newProcess(tb testing.TB, name, bin, logDir string, env map[string]string, args ...string) *Process {
	tb.Helper()
	p := &Process{Name: name, bin: bin, args: args, LogPath: logDir + "/" + name + ".log"}
	p.GRPCAddr, p.OpsAddr = freeAddr(tb), freeAddr(tb)
	env["GRPC_ADDR"], env["OPS_ADDR"] = p.GRPCAddr, p.OpsAddr
	for _, k := range []string{"PATH", "HOME", "TMPDIR"} { // nothing else of the developer's environment leaks in
		if v, ok := os.LookupEnv(k); ok {
			env[k] = v
		}
	}
	for k, v := range env {
		p.env = append(p.env, k+"="+v)
	}
	p.conn = servetest.Dial(tb, p.GRPCAddr)
	return p
}

// freeAddr returns a loopback address whose port was free a moment ago, for a process to bind
// (freeport says why not port 0).
func freeAddr(tb testing.TB) string { return freeport.Addr(tb) }

// Conn is a client connection to the process's gRPC address; it reconnects by itself after a
// restart.
func (p *Process) Conn() *grpc.ClientConn { return p.conn }

// start runs the process (not waiting for it to serve).
func (p *Process) start() error {
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(f, "==== harness: %s starting at %s\n", p.Name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = f, f
	setProcAttr(cmd)
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	exited := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.exited, p.state = cmd, exited, nil
	p.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		_ = f.Close()
		p.mu.Lock()
		p.state = cmd.ProcessState
		p.mu.Unlock()
		close(exited)
	}()
	return nil
}

// Running reports whether the process runs now.
func (p *Process) Running() bool {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// WaitServing waits until the process reports SERVING on the readiness health service (its
// dependencies included), failing tb when it exits first or StartTimeout passes.
func (p *Process) WaitServing(tb testing.TB) {
	tb.Helper()
	if err := p.waitServing(); err != nil {
		tb.Fatalf("harness: %v\n%s", err, p.LogTail(30))
	}
}

func (p *Process) waitServing() error {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	health := grpc_health_v1.NewHealthClient(p.conn)
	var last string
	err := poll(StartTimeout, func() (bool, error) {
		select {
		case <-exited:
			return false, fmt.Errorf("%s exited before serving (%s)", p.Name, p.exitState(0))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := health.Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: grpcserver.ReadinessService})
		last = fmt.Sprintf("%v %v", r.GetStatus(), err)
		return err == nil && r.GetStatus() == grpc_health_v1.HealthCheckResponse_SERVING, nil
	})
	if errors.Is(err, errTimeout) {
		return fmt.Errorf("%s not SERVING within %s (last answer: %s)", p.Name, StartTimeout, last)
	}
	return err
}

// Kill ends the process with SIGKILL, as a crash or an OOM kill would, and returns once it is
// gone. It does nothing when the process is not running.
func (p *Process) Kill() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Term sends SIGTERM, as Kubernetes does at a rollout or scale-down, and waits up to wait for the
// process to exit; a process still running then is killed (Exit.TimedOut). It returns how the
// process ended and how long that took after the signal.
func (p *Process) Term(wait time.Duration) Exit {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return Exit{Code: -1, Signal: "never started"}
	}
	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-exited:
		return p.exitState(time.Since(start))
	case <-timer.C:
		took := time.Since(start)
		p.Kill()
		e := p.exitState(took)
		e.TimedOut = true
		return e
	}
}

func (p *Process) exitState(took time.Duration) Exit {
	p.mu.Lock()
	st := p.state
	p.mu.Unlock()
	e := Exit{Code: -1, Took: took}
	if st == nil {
		return e
	}
	e.Code = st.ExitCode()
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		e.Signal = ws.Signal().String()
	}
	return e
}

// Restart kills the process if it runs, starts it again on the same ports and waits until it
// serves.
func (p *Process) Restart(tb testing.TB) {
	tb.Helper()
	p.Kill()
	if err := p.start(); err != nil {
		tb.Fatalf("harness: %v", err)
	}
	p.WaitServing(tb)
}

// Log returns everything the process wrote so far, across restarts.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// LogTail returns the last n lines of the log, headed by the process's name and log path, for
// failure messages.
func (p *Process) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(p.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- %s (%s), last %d lines:\n%s", p.Name, p.LogPath, len(lines), strings.Join(lines, "\n"))
}
