package harness_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

// TestSuiteDeliversAndStops checks the harness itself on the happy path: the processes serve,
// mail submitted through the API replica reaches the relay once per Message-ID, the dispatcher's
// metrics count it, and SIGTERM ends a process with status 0; a restarted process serves again.
func TestSuiteDeliversAndStops(t *testing.T) {
	s := harness.Start(t, harness.Options{})
	relay := s.NewRelay(t)
	s.CreateConnector(t, harness.Connector{Tenant: "kanzlei", ID: "default", Relay: relay})
	sent := s.Submit(t, harness.Batch{Tenant: "kanzlei", N: 20})
	if c, ok := s.WaitSettled(len(sent), 30*time.Second); !ok || c[outboxv1.EmailStatus_EMAIL_STATUS_SENT] != len(sent) {
		t.Fatalf("not all sent: %s", c)
	}
	d := s.Dispatchers[0]
	if got := d.Metrics(t).Sum("postamt_outbox_attempts_total", map[string]string{"outcome": "sent"}); got != 20 {
		t.Errorf("%s counted %v sent attempts, want 20", d.Name, got)
	}
	d.Restart(t)
	exits := s.StopDispatchers(30 * time.Second)
	if e := exits[d.Name]; e.TimedOut || e.Code != 0 {
		t.Errorf("SIGTERM: %s; want exit status 0", e)
	}
	relay.Close()
	tally := s.Tally(t, sent, relay)
	if len(tally.NotOnce) != 0 || len(tally.AttemptsNot1) != 0 || tally.Foreign != 0 {
		t.Errorf("%s", tally)
	}
	if !strings.Contains(d.Log(), `"msg":"serving"`) {
		t.Errorf("the log of %s lacks the serving line:\n%s", d.Name, d.LogTail(10))
	}
}
