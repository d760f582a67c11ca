package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/smtptest"
)

// This file runs what a benchmark measures beside Postamt in processes of their own (DESIGN.md
// §5: CPU per unit counts the services and redis-server, not the SMTP sink's server side nor
// the load generator), and reads the CPU time of such a process.

// exitWithParent ends a benchmark's child process (exit 3) once its parent is gone, or (exit 4)
// after limit, so an aborted benchmark leaves no process behind.
func exitWithParent(limit time.Duration) {
	parent := os.Getppid()
	go func() {
		for range int(limit / time.Second) {
			time.Sleep(time.Second)
			if os.Getppid() != parent {
				os.Exit(3)
			}
		}
		os.Exit(4)
	}()
}

// sinkProcessEnv switches the bench test binary into an SMTP sink process (TestSinkProcess): its
// value is how many messages make one round; the process reports each round's last arrival.
const sinkProcessEnv = "POSTAMT_BENCH_SINK_PROCESS"

// sinkLine is one line a sink process writes to its standard output: first its address, then per
// round the messages received so far and the arrival time of the last of them.
type sinkLine struct {
	Addr  string `json:"addr,omitempty"`
	Count int    `json:"count,omitempty"`
	Last  int64  `json:"last,omitempty"` // Unix nanoseconds
}

// TestSinkProcess is not a test: it is the body of an SMTP sink process (the smtptest sink, as
// the in-process suites use it) that startSinkProcess runs, and is skipped otherwise. It ends
// when its standard input closes (the benchmark is done or gone).
func TestSinkProcess(t *testing.T) {
	every, _ := strconv.Atoi(os.Getenv(sinkProcessEnv))
	if every <= 0 {
		t.Skip("the body of a benchmark's sink process; runs only when " + sinkProcessEnv + " is set")
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	sink := smtptest.Start(t)
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(sinkLine{Addr: sink.Addr()}); err != nil {
		t.Fatal(err)
	}
	for round := 1; ; round++ {
		msgs := sink.WaitForMessages(t, round*every, 10*time.Minute)
		last := slices.MaxFunc(msgs, func(x, y smtptest.Message) int { return x.Received.Compare(y.Received) }).Received
		if err := enc.Encode(sinkLine{Count: len(msgs), Last: last.UnixNano()}); err != nil {
			t.Fatal(err)
		}
	}
}

// sinkProcess is a running sink process.
type sinkProcess struct {
	cmd  *exec.Cmd
	out  *bufio.Scanner
	addr string
}

// startSinkProcess runs an SMTP sink in a process of its own (this binary re-run, see
// TestSinkProcess) whose rounds are every messages, and stops it at b's cleanup.
func startSinkProcess(b *testing.B, every int) *sinkProcess {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSinkProcess$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), sinkProcessEnv+"="+strconv.Itoa(every))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	p := &sinkProcess{cmd: cmd, out: bufio.NewScanner(stdout)}
	l := p.next(b)
	if l.Addr == "" {
		b.Fatal("sink process: no address")
	}
	p.addr = l.Addr
	return p
}

func (p *sinkProcess) next(b *testing.B) sinkLine {
	b.Helper()
	if !p.out.Scan() {
		b.Fatalf("sink process ended: %v", p.out.Err())
	}
	var l sinkLine
	if err := json.Unmarshal(p.out.Bytes(), &l); err != nil {
		b.Fatalf("sink process wrote %q: %v", p.out.Text(), err)
	}
	return l
}

// waitRound blocks until the sink has received the next round of messages and returns the
// arrival time of the last one.
func (p *sinkProcess) waitRound(b *testing.B) time.Time {
	b.Helper()
	return time.Unix(0, p.next(b).Last)
}

// pid is the sink process's id, for procCPU.
func (p *sinkProcess) pid() int { return p.cmd.Process.Pid }

// startChild re-runs this test binary with env added (the variables that make TestMain run a
// load generator instead of tests), its stderr on ours, and returns it with a scanner of the
// JSON lines it writes on stdout.
func startChild(b *testing.B, env ...string) (*exec.Cmd, *bufio.Scanner) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	return cmd, bufio.NewScanner(out)
}

// procCPU is the CPU time (user + system) process pid has used so far, from /proc/pid/stat, in
// clock ticks of 10 ms (Linux's USER_HZ of 100).
func procCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	f := procStat(b, pid)
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, f)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// procStat is /proc/<pid>/stat's fields after the command name (which may hold spaces): [0] is
// the state (field 3), [9] majflt (12), [11] utime (14), [12] stime (15).
func procStat(b *testing.B, pid int) []string {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	return f
}
