package faults_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// These tests give the outbox a relay that answers badly at a given step of the conversation
// (issue 17, "The fault suite"): a scripted sink answers each email's attempts in turn, told
// apart by recipient (the harness sends every email to an address of its own), so each test
// knows exactly how often each email met the fault. Each runs one dispatcher and a connector
// that retries every second.

var (
	failed    = outboxv1.EmailStatus_EMAIL_STATUS_FAILED
	temporary = outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_TEMPORARY_FAILURE
	permanent = outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_PERMANENT_FAILURE
	unknown   = outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_UNKNOWN
	sentOK    = outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_SENT
)

// relayN is the number of emails each relay test sends, and relayPool the connector's pool.
const (
	relayN    = 30
	relayPool = 4
)

// outcomes lists the outcomes of an email's attempts in order, e.g. [UNKNOWN SENT].
func outcomes(e *outboxv1.Email) []outboxv1.AttemptOutcome {
	var out []outboxv1.AttemptOutcome
	for _, a := range e.GetAttempts() {
		out = append(out, a.GetOutcome())
	}
	return out
}

func outcomeString(os []outboxv1.AttemptOutcome) string {
	parts := make([]string, len(os))
	for i, o := range os {
		parts[i] = strings.TrimPrefix(o.String(), "ATTEMPT_OUTCOME_")
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// checkHistories asserts every email of mail whose recipient pick selects (nil: every one) has
// exactly the attempt outcomes want, in order.
func checkHistories(t *testing.T, s *harness.Suite, mail []harness.Submitted, pick func(rcpt string) bool, want ...outboxv1.AttemptOutcome) {
	t.Helper()
	var wrong []string
	for id, e := range s.Emails(t, mail) {
		if pick != nil && !pick(harness.Recipient(e)) {
			continue
		}
		if got := outcomes(e); outcomeString(got) != outcomeString(want) {
			wrong = append(wrong, fmt.Sprintf("%s %s", id, outcomeString(got)))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%d emails have attempts other than %s, e.g. %s", len(wrong), outcomeString(want), harness.Some(wrong, 5))
	}
}

// attemptMetric sums a dispatcher counter of attempts by outcome over every running dispatcher.
func attemptMetric(t *testing.T, s *harness.Suite, outcome string) float64 {
	t.Helper()
	var sum float64
	for _, d := range s.Dispatchers {
		if d.Running() {
			sum += d.Metrics(t).Sum("postamt_outbox_attempts_total", map[string]string{"outcome": outcome})
		}
	}
	return sum
}

// TestRelayTempFails451ThenAccepts: the relay answers 451 after the body three times for every
// email, then accepts it. Every email is SENT on its fourth attempt and reaches the relay once;
// its history shows three TEMPORARY_FAILURE attempts and the SENT one, and the dispatcher's
// metrics count them.
func TestRelayTempFails451ThenAccepts(t *testing.T) {
	const fails = 3
	s := harness.Start(t, harness.Options{})
	s.Describe(fmt.Sprintf("%d emails, 1 dispatcher, retry every 1 s", relayN), fmt.Sprintf("relay answers 451 after DATA %d times per email, then accepts", fails))
	relay := s.NewRelay(t)
	seen := relay.Script(smtptest.StageData, func(_ string, attempt int) smtptest.Behavior {
		if attempt <= fails {
			return smtptest.TempFailData
		}
		return smtptest.Accept
	})
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: relayPool})
	s.RecoverFrom(time.Now())
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: relayN})

	if c, ok := s.WaitSettled(relayN, 45*time.Second); !ok {
		t.Fatalf("not settled within 45s: %s", c)
	}
	if got, want := attemptMetric(t, s, "temporary"), float64(fails*relayN); got != want {
		t.Errorf("the dispatcher counted %v temporary attempts, want %v", got, want)
	}
	if got, want := attemptMetric(t, s, "sent"), float64(relayN); got != want {
		t.Errorf("the dispatcher counted %v sent attempts, want %v", got, want)
	}
	checkHistories(t, s, mail, nil, temporary, temporary, temporary, sentOK)
	res := s.Check(t, mail, harness.Expect{})
	if len(res.Tally.NotOnce) > 0 {
		t.Errorf("%d emails did not reach the relay exactly once, e.g. %s", len(res.Tally.NotOnce), harness.Some(res.Tally.NotOnce, 5))
	}
	if got, want := seen.Total(), (fails+1)*relayN; got != want {
		t.Errorf("the relay saw %d DATA commands, want %d", got, want)
	}
}

// TestRelayRejects550: the relay refuses every other recipient with 550 5.1.1 at RCPT TO. Those
// emails are FAILED after one attempt (PERMANENT_FAILURE) and never retried, though the connector
// retries temporary failures every second; the others are SENT once. Nothing is lost: every
// email is either at the relay or FAILED with the relay's answer on record, and only the SENT
// ones are in the sent view.
func TestRelayRejects550(t *testing.T) {
	s := harness.Start(t, harness.Options{})
	s.Describe(fmt.Sprintf("%d emails, 1 dispatcher, retry every 1 s", relayN), "relay answers 550 5.1.1 at RCPT TO for every other recipient")
	relay := s.NewRelay(t)
	rejected := func(rcpt string) bool {
		var i int
		_, _ = fmt.Sscanf(rcpt, "client-%d@", &i)
		return i%2 == 1
	}
	seen := relay.Script(smtptest.StageRcpt, func(rcpt string, _ int) smtptest.Behavior {
		if rejected(rcpt) {
			return smtptest.PermFailRcpt
		}
		return smtptest.Accept
	})
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: relayPool})
	s.RecoverFrom(time.Now())
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: relayN})
	expect := harness.Expect{Status: map[string]outboxv1.EmailStatus{}}
	for _, m := range mail {
		if rejected(m.To) {
			expect.Status[m.ID] = failed
		}
	}
	if len(expect.Status) != relayN/2 {
		t.Fatalf("%d of %d recipients are to be rejected, want half", len(expect.Status), relayN)
	}

	if c, ok := s.WaitSettled(relayN, 45*time.Second); !ok {
		t.Fatalf("not settled within 45s: %s", c)
	}
	// A retry would come a second after the 550: three seconds without one show there is none.
	// The wait is the check's parameter, not a guess at how long something takes.
	<-time.After(3 * time.Second)
	var retried []string
	for _, m := range mail {
		if n := seen.Of(m.To); rejected(m.To) && n != 1 {
			retried = append(retried, fmt.Sprintf("%s (%d RCPT TO)", m.To, n))
		}
	}
	if len(retried) > 0 {
		t.Errorf("%d rejected recipients were tried again after the 550, e.g. %s", len(retried), harness.Some(retried, 5))
	}
	checkHistories(t, s, mail, rejected, permanent)
	checkHistories(t, s, mail, func(rcpt string) bool { return !rejected(rcpt) }, sentOK)
	for id, e := range s.Emails(t, mail) {
		if rejected(harness.Recipient(e)) && !strings.Contains(e.GetLastError(), "550") {
			t.Errorf("%s is FAILED without the relay's 550 on record: last error %q", id, e.GetLastError())
			break
		}
	}
	res := s.Check(t, mail, expect)
	if res.Delivered != relayN/2 || res.Failed != relayN/2 {
		t.Errorf("%d delivered and %d FAILED, want %d each", res.Delivered, res.Failed, relayN/2)
	}
}

// TestRelayDropsAfterDot: the relay reads each email's body and drops the connection before it
// answers the final dot, without keeping the message (the RFC 1047 window, the message lost).
// The outbox records the attempt as UNKNOWN, sends the email again (the connector's policy is
// RESEND), and every email is SENT and at the relay exactly once.
func TestRelayDropsAfterDot(t *testing.T) {
	s := harness.Start(t, harness.Options{})
	s.Describe(fmt.Sprintf("%d emails, 1 dispatcher, unknown-outcome policy RESEND", relayN), "relay drops the connection after the final dot, message not kept, once per email")
	relay := s.NewRelay(t)
	relay.Script(smtptest.StageData, func(_ string, attempt int) smtptest.Behavior {
		if attempt == 1 {
			return smtptest.Drop
		}
		return smtptest.Accept
	})
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: relayPool})
	s.RecoverFrom(time.Now())
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: relayN})

	if c, ok := s.WaitSettled(relayN, 45*time.Second); !ok {
		t.Fatalf("not settled within 45s: %s", c)
	}
	if got := attemptMetric(t, s, "unknown"); got != relayN {
		t.Errorf("the dispatcher counted %v unknown attempts, want %d", got, relayN)
	}
	checkHistories(t, s, mail, nil, unknown, sentOK)
	res := s.Check(t, mail, harness.Expect{})
	if len(res.Tally.NotOnce) > 0 {
		t.Errorf("%d emails did not reach the relay exactly once, e.g. %s", len(res.Tally.NotOnce), harness.Some(res.Tally.NotOnce, 5))
	}
}

// TestRelayRFC1047Window: the relay keeps each email's message and then drops the connection
// before answering the final dot: delivered, but the outbox cannot know it (RFC 1047). With the
// policy RESEND the email is sent again and SENT, and the relay holds two copies, the second
// counted as ambiguous by the UNKNOWN attempt; with HOLD it is FAILED and marked "may have been
// sent", for a person to decide, with its one copy at the relay. Either way nothing is lost and no
// duplicate goes uncounted.
func TestRelayRFC1047Window(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy outboxv1.UnknownOutcomePolicy
	}{
		{"resend", outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_RESEND},
		{"hold", outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_HOLD},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := harness.Start(t, harness.Options{})
			s.Describe(fmt.Sprintf("%d emails, 1 dispatcher, unknown-outcome policy %s", relayN, strings.ToUpper(tc.name)),
				"relay keeps the message, then drops the connection before its reply, once per email")
			relay := s.NewRelay(t)
			relay.Script(smtptest.StageData, func(_ string, attempt int) smtptest.Behavior {
				if attempt == 1 {
					return smtptest.RecordThenDrop
				}
				return smtptest.Accept
			})
			s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: relayPool, Policy: tc.policy})
			s.RecoverFrom(time.Now())
			mail := s.Submit(t, harness.Batch{Tenant: tenant, N: relayN})

			if c, ok := s.WaitSettled(relayN, 45*time.Second); !ok {
				t.Fatalf("not settled within 45s: %s", c)
			}
			expect := harness.Expect{}
			wantCopies := 2
			if tc.policy == outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_HOLD {
				wantCopies = 1
				expect.Status = map[string]outboxv1.EmailStatus{}
				for _, m := range mail {
					expect.Status[m.ID] = failed
				}
				checkHistories(t, s, mail, nil, unknown)
				for id, e := range s.Emails(t, mail) {
					if !e.GetMayHaveBeenSent() {
						t.Errorf("%s is FAILED after an unknown outcome but not marked may_have_been_sent", id)
						break
					}
				}
			} else {
				checkHistories(t, s, mail, nil, unknown, sentOK)
			}
			res := s.Check(t, mail, expect)
			if got := res.Tally.CopiesHist[wantCopies]; got != relayN {
				t.Errorf("%d emails have %d copies at the relay, want all %d (copies per email %v)", got, wantCopies, relayN, res.Tally.CopiesHist)
			}
			if res.Duplicated != res.Ambiguous || res.Duplicated != (wantCopies-1)*relayN {
				t.Errorf("duplicated %d, ambiguous %d; want both %d", res.Duplicated, res.Ambiguous, (wantCopies-1)*relayN)
			}
		})
	}
}
