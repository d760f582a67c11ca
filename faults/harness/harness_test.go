package harness_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// TestMain runs the harness's own tests; they are no fault scenarios, so their row does not
// overwrite the fault suite's table when both packages run with $POSTAMT_FAULTS_TABLE set.
func TestMain(m *testing.M) {
	_ = os.Unsetenv(harness.TableEnv)
	os.Exit(harness.Main(m))
}

// TestSuiteDeliversAndStops checks the harness itself on the happy path: the processes serve,
// mail submitted through the API replica reaches the relay once per Message-ID, the dispatcher's
// metrics count it, Check finds every invariant kept, and SIGTERM ends a process with status 0; a
// restarted process serves again.
func TestSuiteDeliversAndStops(t *testing.T) {
	s := harness.Start(t, harness.Options{})
	s.Describe("20 emails", "none")
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
	res := s.Check(t, sent, harness.Expect{})
	if res.Delivered != 20 || res.Duplicated != 0 || res.Lost != 0 || len(res.Tally.AttemptsNot1) != 0 {
		t.Errorf("%s; %s", res, res.Tally)
	}
	d.Restart(t)
	exits := s.StopDispatchers(30 * time.Second)
	if e := exits[d.Name]; e.TimedOut || e.Code != 0 {
		t.Errorf("SIGTERM: %s; want exit status 0", e)
	}
	if !strings.Contains(d.Log(), `"msg":"serving"`) {
		t.Errorf("the log of %s lacks the serving line:\n%s", d.Name, d.LogTail(10))
	}
}
