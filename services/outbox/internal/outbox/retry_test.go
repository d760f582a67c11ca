package outbox

import (
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	p := RetryPolicy{Pattern: []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute}, MaxAttempts: 5}
	tests := []struct {
		name     string
		policy   RetryPolicy
		outcome  Outcome
		attempts int
		imported bool
		want     Decision
	}{
		{"sent", p, OutcomeSent, 1, false, Decision{Status: StatusSent, ConsumesAttempt: true}},
		{"first temporary failure waits the first delay", p, OutcomeTemporary, 1, false, Decision{Status: StatusPendingRetry, ConsumesAttempt: true, Delay: time.Minute}},
		{"second waits the second", p, OutcomeTemporary, 2, false, Decision{Status: StatusPendingRetry, ConsumesAttempt: true, Delay: 5 * time.Minute}},
		{"the last delay repeats", p, OutcomeTemporary, 4, false, Decision{Status: StatusPendingRetry, ConsumesAttempt: true, Delay: 15 * time.Minute}},
		{"the last attempt fails", p, OutcomeTemporary, 5, false, Decision{Status: StatusFailed, ConsumesAttempt: true}},
		{"permanent fails at once", p, OutcomePermanent, 1, false, Decision{Status: StatusFailed, ConsumesAttempt: true}},
		{"imported mail is never retried", p, OutcomeTemporary, 1, true, Decision{Status: StatusFailed, ConsumesAttempt: true}},
		{"disabled connector consumes nothing", p, OutcomeConnectorDisabled, 1, false, Decision{Status: StatusConnectorDisabled}},
		{"unknown outcome held by default", p, OutcomeUnknown, 1, false, Decision{Status: StatusFailed, ConsumesAttempt: true, MayHaveBeenSent: true}},
		{"unknown outcome resent by policy", RetryPolicy{Pattern: p.Pattern, MaxAttempts: 5, ResendUnknown: true}, OutcomeUnknown, 1, false, Decision{Status: StatusPendingRetry, ConsumesAttempt: true, Delay: time.Minute}},
		{"unknown on the last attempt fails, flagged", RetryPolicy{Pattern: p.Pattern, MaxAttempts: 1, ResendUnknown: true}, OutcomeUnknown, 1, false, Decision{Status: StatusFailed, ConsumesAttempt: true, MayHaveBeenSent: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.policy.Decide(tt.outcome, tt.attempts, tt.imported); got != tt.want {
				t.Errorf("Decide() = %+v, want %+v", got, tt.want)
			}
		})
	}
}
