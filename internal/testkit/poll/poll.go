// Package poll waits in tests for a condition that another goroutine or process makes true,
// checking often and failing after a deadline, instead of sleeping for a guessed time.
package poll

import (
	"testing"
	"time"
)

// Timeout is how long Eventually waits: long enough for a loaded CI machine, short enough that a
// hung test fails on its own.
const Timeout = 20 * time.Second

// interval is the pause between checks.
const interval = 5 * time.Millisecond

// Eventually checks cond until it holds, failing tb with what after Timeout.
func Eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", Timeout, what)
		}
		time.Sleep(interval)
	}
}
