package harness

import (
	"bufio"
	"encoding/json"
	"strings"
	"syscall"
	"time"
)

// Freeze stops the process with SIGSTOP, as a stalled node, a long GC pause or a debugger would:
// it keeps its sockets, leases and claims but does nothing until Thaw (SIGCONT) or Kill (which
// ends a frozen process as any other). A test lands a fault in a window this way: a dispatcher
// frozen before mail is due cannot claim it, whatever the scheduler does. Check scrapes every
// running process, so thaw or kill a frozen one before it.
func (p *Process) Freeze() { p.signal(syscall.SIGSTOP) }

// Thaw lets a frozen process go on (SIGCONT).
func (p *Process) Thaw() { p.signal(syscall.SIGCONT) }

func (p *Process) signal(sig syscall.Signal) {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd != nil && p.Running() {
		_ = cmd.Process.Signal(sig)
	}
}

// RelayHolders tells which running process holds the event relay's lease of each Redis event
// stream whose key starts with prefix ("pm:ob:" for the outbox's partitions), by stream key.
// Every relay logs "relay: publishing streams" with the streams it took over, and the relays of
// one service share their consumer name (the host's), so the process logs, not Redis, tell the
// holders apart: the last taking over per stream wins. A stream whose last holder no longer runs
// is not listed.
func (s *Suite) RelayHolders(prefix string) map[string]*Process {
	type took struct {
		at time.Time
		p  *Process
	}
	last := map[string]took{}
	for _, p := range s.processes() {
		sc := bufio.NewScanner(strings.NewReader(p.Log()))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			if !strings.Contains(string(line), "relay: publishing streams") {
				continue
			}
			var rec struct {
				Time    time.Time `json:"time"`
				Msg     string    `json:"msg"`
				Streams []string  `json:"streams"`
			}
			if json.Unmarshal(line, &rec) != nil || rec.Msg != "relay: publishing streams" {
				continue
			}
			for _, stream := range rec.Streams {
				if !strings.HasPrefix(stream, prefix) {
					continue
				}
				if t, ok := last[stream]; !ok || rec.Time.After(t.at) {
					last[stream] = took{rec.Time, p}
				}
			}
		}
	}
	out := map[string]*Process{}
	for stream, t := range last {
		if t.p.Running() {
			out[stream] = t.p
		}
	}
	return out
}
