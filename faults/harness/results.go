package harness

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// TableEnv names an environment variable holding a file path: Main writes the results table
// there as Markdown at the end of the run (docs/reliability.md quotes it).
const TableEnv = "POSTAMT_FAULTS_TABLE"

// Result is one scenario's row of the results table: what was held and injected, what became of
// the mail, and how long the suite took to be at rest again. Check fills it in; the verdict is
// the test's at its end.
type Result struct {
	// Scenario is the test's name.
	Scenario string
	// Load and Fault describe the scenario (Describe).
	Load, Fault string
	// Accepted is the number of emails whose submit was answered OK; Refused the submits a Load
	// saw refused.
	Accepted, Refused int
	// Delivered counts the emails that reached a relay at least once.
	Delivered int
	// Duplicated counts the copies at the relays beyond each email's first; Ambiguous those of
	// them that an UNKNOWN attempt accounts for (the RFC 1047 window, or a takeover): the others
	// are uncounted duplicates, which Check fails.
	Duplicated, Ambiguous int
	// Lost counts accepted emails to be SENT that never reached a relay.
	Lost int
	// Failed counts the emails that ended FAILED (those the scenario expects, a relay's 550).
	Failed int
	// Recovered is the time from the fault's end (RecoverFrom; else Check's start) until the
	// suite had settled; negative when it did not within the bound.
	Recovered time.Duration
	// Tally is the ledger against the relays, for a scenario's own assertions.
	Tally Tally
	// Problems are the invariants Check found broken.
	Problems []string

	checked bool   // Check ran to its end
	verdict string // set at the test's end
}

// String is the row in one line, for the test log.
func (r *Result) String() string {
	return fmt.Sprintf("%s: accepted %d (refused %d), delivered %d, duplicated %d (ambiguous %d), lost %d, failed %d, recovered in %s; %d problems",
		r.Scenario, r.Accepted, r.Refused, r.Delivered, r.Duplicated, r.Ambiguous, r.Lost, r.Failed, recovered(r.Recovered), len(r.Problems))
}

func recovered(d time.Duration) string {
	if d < 0 {
		return "—"
	}
	return d.Round(100 * time.Millisecond).String()
}

// results collects every scenario's row of this test binary's run. It is the harness's one
// package-level variable, kept on purpose: the table spans every test of the binary, and the
// only thing go test shares between them and TestMain (Main, which prints it) is the package.
// Tests only append under its lock; nothing reads it before Main.
var results struct {
	mu   sync.Mutex
	rows []*Result
}

// describe starts the suite's row of the results table, named after tb, and sets its verdict
// when tb ends. The row is reported once the scenario has described itself (Describe) or run
// Check.
func (s *Suite) describe(tb testing.TB) {
	r := &Result{Scenario: tb.Name(), Recovered: -1}
	s.mu.Lock()
	s.run = r
	s.mu.Unlock()
	results.mu.Lock()
	results.rows = append(results.rows, r)
	results.mu.Unlock()
	tb.Cleanup(func() {
		results.mu.Lock()
		defer results.mu.Unlock()
		switch {
		case tb.Skipped():
			r.verdict = "skipped"
		case tb.Failed() && !r.checked:
			r.verdict = "FAIL (before Check)"
		case tb.Failed():
			r.verdict = "FAIL"
		case !r.checked:
			r.verdict = "no Check"
		default:
			r.verdict = "pass"
		}
	})
}

// row is the suite's row of the results table.
func (s *Suite) row() *Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.run
}

// Describe says, for the results table, what load the scenario holds and what fault it injects.
func (s *Suite) Describe(load, fault string) {
	r := s.row()
	results.mu.Lock()
	defer results.mu.Unlock()
	r.Load, r.Fault = load, fault
}

// RecoverFrom sets the moment the scenario's time to recover is measured from: when the fault
// ended (a process restarted, NATS reachable again) or, for a fault that lasts (a relay that
// refuses), when the mail was submitted. Unset, it is Check's start.
func (s *Suite) RecoverFrom(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.healed = t
}

// writeTable writes the rows as a Markdown table (into a Builder, whose writes cannot fail).
func writeTable(w *strings.Builder, rows []*Result) {
	w.WriteString("| Scenario | Load held | Fault | Accepted | Delivered | Duplicated (ambiguous) | Lost | Failed as expected | Time to recover | Verdict |\n")
	w.WriteString("|---|---|---|--:|--:|--:|--:|--:|--:|---|\n")
	cell := func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ") }
	for _, r := range rows {
		accepted := fmt.Sprint(r.Accepted)
		if r.Refused > 0 {
			accepted += fmt.Sprintf(" (%d refused)", r.Refused)
		}
		if !r.checked {
			w.WriteString(fmt.Sprintf("| %s | %s | %s | — | — | — | — | — | — | %s |\n", cell(r.Scenario), cell(r.Load), cell(r.Fault), r.verdict))
			continue
		}
		w.WriteString(fmt.Sprintf("| %s | %s | %s | %s | %d | %d (%d) | %d | %d | %s | %s |\n",
			cell(r.Scenario), cell(r.Load), cell(r.Fault), accepted, r.Delivered, r.Duplicated, r.Ambiguous, r.Lost, r.Failed, recovered(r.Recovered), r.verdict))
	}
}

// report prints the results table of the run to stdout and, when $POSTAMT_FAULTS_TABLE names a
// file, writes it there as Markdown, headed by when and where it ran.
func report() error {
	results.mu.Lock()
	var rows []*Result
	for _, r := range results.rows {
		// A suite that neither described itself nor ran Check is no fault scenario (a benchmark's,
		// say): it has no row.
		if r.checked || r.Load != "" || r.Fault != "" {
			rows = append(rows, r)
		}
	}
	results.mu.Unlock()
	if len(rows) == 0 {
		return nil
	}
	var b strings.Builder
	writeTable(&b, rows)
	fmt.Printf("\nfault suite results:\n%s\n", b.String())
	path := os.Getenv(TableEnv)
	if path == "" {
		return nil
	}
	head := fmt.Sprintf("Run of %s on %s/%s, %d CPUs, %s, commit %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), commit())
	return os.WriteFile(path, []byte(head+b.String()), 0o644)
}

// commit names the repository's HEAD (with "+changes" when the tree differs), "unknown" outside a
// checkout.
func commit() string {
	root, err := repoRoot()
	if err != nil {
		return "unknown"
	}
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += "+changes"
	}
	return c
}
