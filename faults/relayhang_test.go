package faults_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
	"github.com/postamt/postamt/internal/testkit/smtptest"
)

// TestRelayHangsInData (issue 17, "the SMTP relay: ... a hang in DATA"): the relay reads each
// email's body and then never answers the final dot, once per email, without keeping the
// message. TestHungRelayHoldsOnlyItsConnector hangs a whole connection from its greeting, and
// TestDispatcherKilledInData ends the hang with a kill; here the outbox ends it itself: the
// reply's deadline (OUTBOX_SMTP_SUBMIT_TIMEOUT, 2 s here, within the 8 s lease) runs out, the
// attempt is recorded UNKNOWN (the relay may have kept the message: RFC 1047), the connector's
// policy RESEND sends the email again, and it is SENT and at the relay exactly once.
func TestRelayHangsInData(t *testing.T) {
	const submitTimeout = 2 * time.Second
	s := harness.Start(t, harness.Options{OutboxEnv: map[string]string{"OUTBOX_SMTP_SUBMIT_TIMEOUT": submitTimeout.String()}})
	s.Describe(fmt.Sprintf("%d emails, 1 dispatcher, unknown-outcome policy RESEND, reply deadline %s", relayN, submitTimeout),
		"relay never answers the final dot (hangs in DATA), message not kept, once per email")
	relay := s.NewRelay(t)
	seen := relay.Script(smtptest.StageData, func(_ string, attempt int) smtptest.Behavior {
		if attempt == 1 {
			return smtptest.Hang
		}
		return smtptest.Accept
	})
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: relayPool})
	s.RecoverFrom(time.Now())
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: relayN})

	if c, ok := s.WaitSettled(relayN, 60*time.Second); !ok {
		t.Fatalf("not settled within 60s: %s", c)
	}
	if got := attemptMetric(t, s, "unknown"); got != relayN {
		t.Errorf("the dispatcher counted %v unknown attempts, want %d", got, relayN)
	}
	checkHistories(t, s, mail, nil, unknown, sentOK)
	res := s.Check(t, mail, harness.Expect{})
	if len(res.Tally.NotOnce) > 0 {
		t.Errorf("%d emails did not reach the relay exactly once, e.g. %s", len(res.Tally.NotOnce), harness.Some(res.Tally.NotOnce, 5))
	}
	if got, want := seen.Total(), 2*relayN; got != want {
		t.Errorf("the relay saw %d DATA commands, want %d (one hung and one accepted per email)", got, want)
	}
}
