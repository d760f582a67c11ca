package faults_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

var queued = outboxv1.EmailStatus_EMAIL_STATUS_QUEUED

// TestDispatcherKilledBeforeClaim (issue 17, "an outbox process SIGKILLed: before it claims"):
// mail is due while the dispatchers are frozen (SIGSTOP, a stalled node), so none can claim it
// whatever the scheduler does: every email is QUEUED, none SENDING, nothing at the relay. Then a
// dispatcher is SIGKILLed in that state. With one dispatcher it is started again; with two the
// other is let go on. Either way the mail the dead one never claimed is sent by the restarted
// one or by the other, each email exactly once, in one attempt, with no UNKNOWN attempt (no
// claim was lost, so nothing is taken over).
func TestDispatcherKilledBeforeClaim(t *testing.T) {
	const n = 40
	for _, tc := range []struct {
		name        string
		dispatchers int
	}{{"restarted", 1}, {"other replica", 2}} {
		t.Run(tc.name, func(t *testing.T) {
			s := harness.Start(t, harness.Options{Dispatchers: tc.dispatchers})
			fault := "the dispatcher frozen (SIGSTOP) while the mail comes due, SIGKILLed before it claimed any, restarted"
			if tc.dispatchers > 1 {
				fault = "both dispatchers frozen (SIGSTOP) while the mail comes due; one SIGKILLed before it claimed any, the other let go on (SIGCONT)"
			}
			s.Describe(fmt.Sprintf("%d emails due at once, %d dispatcher(s), pool 8", n, tc.dispatchers), fault)
			relay := s.NewRelay(t)
			s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 8})
			for _, d := range s.Dispatchers {
				d.Freeze()
			}
			mail := s.Submit(t, harness.Batch{Tenant: tenant, N: n})
			c, err := s.Progress(n)
			if err != nil {
				t.Fatal(err)
			}
			if c[queued] != n || len(relay.Arrivals()) != 0 {
				t.Fatalf("with every dispatcher frozen: %s and %d messages at the relay; want all %d QUEUED, none claimed", c, len(relay.Arrivals()), n)
			}
			victim := s.Dispatchers[0]
			victim.Kill()
			if tc.dispatchers > 1 {
				s.Dispatchers[1].Thaw()
			} else {
				victim.Restart(t)
			}
			s.RecoverFrom(time.Now())
			t.Logf("killed %s with all %d emails due and unclaimed (%s)", victim.Name, n, c)

			var sentByOther float64
			if tc.dispatchers > 1 {
				// Before Check stops the dispatchers: the survivor's own count of what it sent.
				if c, ok := s.WaitSettled(n, 30*time.Second); !ok {
					t.Errorf("not settled within 30s of the kill: %s", c)
				}
				sentByOther = s.Dispatchers[1].Metrics(t).Sum("postamt_outbox_attempts_total", map[string]string{"outcome": "sent"})
			}
			res := finish(t, s, mail)
			if len(res.NotOnce) > 0 || len(res.AttemptsNot1) > 0 || res.Unknown > 0 {
				t.Errorf("%d emails not at the relay exactly once, %d not sent in one attempt, %d UNKNOWN attempts; want none (e.g. %s %s)",
					len(res.NotOnce), len(res.AttemptsNot1), res.Unknown, harness.Some(res.NotOnce, 3), harness.Some(res.AttemptsNot1, 3))
			}
			if tc.dispatchers > 1 && sentByOther != n {
				t.Errorf("the surviving dispatcher sent %v emails, want all %d", sentByOther, n)
			}
		})
	}
}
