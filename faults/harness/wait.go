package harness

import (
	"errors"
	"testing"
	"time"
)

// pollInterval is the pause between two checks of a condition: short against the seconds a fault
// test waits, long enough that polling over gRPC does not load a 2-core machine.
const pollInterval = 25 * time.Millisecond

var errTimeout = errors.New("harness: timed out")

// poll checks cond until it reports true, returns an error, or timeout passes (errTimeout). It is
// how the harness waits for another process: never a sleep of a guessed length.
func poll(timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errTimeout
		}
		<-tick.C
	}
}

// Eventually checks cond until it holds and reports whether it did within timeout. Unlike
// internal/testkit/poll it takes the deadline as an argument, because fault tests wait for
// minutes-long deliveries as well as for moments, and it does not fail the test itself: the
// caller states what did not happen and with which figures.
func Eventually(timeout time.Duration, cond func() bool) bool {
	return poll(timeout, func() (bool, error) { return cond(), nil }) == nil
}

// Must fails tb with what when cond does not hold within timeout.
func Must(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	if !Eventually(timeout, cond) {
		tb.Fatalf("timed out after %s waiting for %s", timeout, what)
	}
}
