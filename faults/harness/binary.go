package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// BinEnv names an environment variable holding a prebuilt postamt binary to run instead of
// building one: to test a binary built from another tree (say, the last commit while the working
// tree is mid-change: `git archive HEAD | tar -x -C /tmp/head && (cd /tmp/head && go build -o
// /tmp/postamt ./cmd/postamt)`), or to skip the build when running a single test again.
const BinEnv = "POSTAMT_BIN"

var build struct {
	once sync.Once
	dir  string // the temporary directory holding the built binary; removed by Main
	path string
	err  error
}

// Main runs a test binary's tests, prints the results table of the scenarios that ran (and
// writes it to $POSTAMT_FAULTS_TABLE), and removes the binary Binary built, so builds do not pile
// up in the temporary directory. Call it from TestMain: os.Exit(harness.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if err := report(); err != nil {
		fmt.Fprintf(os.Stderr, "harness: write the results table: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	return code
}

// Binary returns the path of a postamt binary: $POSTAMT_BIN when set, else one built once per
// test binary from the repository this module lies in (`go build ./cmd/postamt` at its root, so
// the workspace's current code is what runs). A failed build fails every test that asks.
func Binary(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv(BinEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			tb.Fatalf("harness: %s=%s: %v", BinEnv, p, err)
		}
		return p
	}
	build.once.Do(func() {
		root, err := repoRoot()
		if err != nil {
			build.err = err
			return
		}
		dir, err := os.MkdirTemp("", "postamt-faults-")
		if err != nil {
			build.err = err
			return
		}
		build.dir = dir
		out := filepath.Join(dir, "postamt")
		goTool, err := exec.LookPath("go")
		if err != nil {
			build.err = fmt.Errorf("the go command is needed to build postamt (or set %s): %w", BinEnv, err)
			return
		}
		cmd := exec.Command(goTool, "build", "-o", out, "./cmd/postamt")
		cmd.Dir = root
		// The workspace's code, also when the tests run with GOWORK=off (as tidy checks do).
		cmd.Env = append(os.Environ(), "GOWORK="+filepath.Join(root, "go.work"))
		start := time.Now()
		if msg, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/postamt in %s: %w\n%s(set %s to test a prebuilt binary)", root, err, msg, BinEnv)
			return
		}
		build.path = out
		fmt.Fprintf(os.Stderr, "harness: built %s in %s\n", out, time.Since(start).Round(time.Millisecond))
	})
	if build.err != nil {
		tb.Fatalf("harness: %v", build.err)
	}
	return build.path
}

// repoRoot walks up from the working directory (a test's package directory) to the directory
// that holds cmd/postamt and go.work: the repository's root, wherever this module is used from.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if isFile(filepath.Join(dir, "go.work")) && isFile(filepath.Join(dir, "cmd", "postamt", "main.go")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no directory above the working directory holds go.work and cmd/postamt: run from inside the repository or set " + BinEnv)
		}
		dir = parent
	}
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
