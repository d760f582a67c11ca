// Package outbox holds the rules of the outbox: statuses, attempt outcomes and what follows each
// (DESIGN.md §1.2). The engine's store applies the decisions atomically; the decisions are made
// here, in plain Go, so every rule is tested without Redis.
package outbox

import (
	"fmt"
	"time"
)

// Status is where an email stands; the values match postamt.outbox.v1.EmailStatus.
type Status uint8

// The statuses. SENT and CANCELLED are terminal.
const (
	StatusScheduled Status = iota + 1
	StatusQueued
	StatusSending
	StatusPendingRetry
	StatusConnectorDisabled
	StatusFailed
	StatusSent
	StatusCancelled
)

// Final reports whether no further transition happens without a person (SENT, CANCELLED).
func (s Status) Final() bool { return s == StatusSent || s == StatusCancelled }

// String names the status for logs and errors.
func (s Status) String() string {
	names := [...]string{"", "SCHEDULED", "QUEUED", "SENDING", "PENDING_RETRY", "CONNECTOR_DISABLED", "FAILED", "SENT", "CANCELLED"}
	if int(s) < len(names) && s > 0 {
		return names[s]
	}
	return fmt.Sprintf("Status(%d)", s)
}

// Outcome is how one delivery attempt ended.
type Outcome uint8

// The outcomes.
const (
	// OutcomeSent is a 2xx after DATA.
	OutcomeSent Outcome = iota + 1
	// OutcomeTemporary is a 4xx, a network error or a timeout before the final ".".
	OutcomeTemporary
	// OutcomePermanent is a 5xx.
	OutcomePermanent
	// OutcomeUnknown is a connection lost between the final "." and the reply (RFC 1047).
	OutcomeUnknown
	// OutcomeConnectorDisabled means the connector was disabled when the mail came due.
	OutcomeConnectorDisabled
	// OutcomeNotSent means the worker stopped the conversation before the message could have
	// reached the relay, because it could no longer vouch for its claim (lease about to run out,
	// Redis unreachable, shutting down): no attempt was made, and the claim is handed back.
	OutcomeNotSent
	// OutcomeThrottled is a refusal for the pace of sending (smtp.ClassifyThrottle): the
	// connector backs off and the email waits without using an attempt.
	OutcomeThrottled
	// OutcomeQuotaExhausted is a refusal because a daily quota is used up, 5xx included: the
	// email waits for the reset without using an attempt.
	OutcomeQuotaExhausted
)

// RetryPolicy is a connector's automatic retry pattern.
type RetryPolicy struct {
	// Pattern is the delay before attempt 2, 3, ...; the last delay repeats while attempts remain.
	Pattern []time.Duration
	// MaxAttempts counts every attempt, the first included.
	MaxAttempts int
	// ResendUnknown resends mail caught in the RFC 1047 window instead of holding it as FAILED.
	ResendUnknown bool
}

// Decision is what follows an attempt.
type Decision struct {
	Status Status
	// ConsumesAttempt is false for a disabled connector and a throttling refusal: the mail did
	// not leave, and the relay's pace is not the email's fault.
	ConsumesAttempt bool
	// Delay is the wait before the next attempt, for PENDING_RETRY; for a throttling refusal
	// the dispatcher sets it from the connector's back-off instead.
	Delay time.Duration
	// MayHaveBeenSent marks a FAILED decision taken in the RFC 1047 window.
	MayHaveBeenSent bool
}

// Decide returns what follows an attempt that ended with outcome, given the attempts made so far
// including this one. Imported mail is never retried automatically.
func (p RetryPolicy) Decide(outcome Outcome, attempts int, imported bool) Decision {
	switch outcome {
	case OutcomeSent:
		return Decision{Status: StatusSent, ConsumesAttempt: true}
	case OutcomeConnectorDisabled:
		return Decision{Status: StatusConnectorDisabled}
	case OutcomeThrottled, OutcomeQuotaExhausted:
		// The relay's pace, not the email: it waits, and the dispatcher sets when.
		return Decision{Status: StatusPendingRetry}
	case OutcomePermanent:
		return Decision{Status: StatusFailed, ConsumesAttempt: true}
	case OutcomeUnknown:
		if !p.ResendUnknown {
			return Decision{Status: StatusFailed, ConsumesAttempt: true, MayHaveBeenSent: true}
		}
	}
	// Temporary, or unknown with the resend policy.
	if imported || attempts >= p.MaxAttempts || len(p.Pattern) == 0 {
		return Decision{Status: StatusFailed, ConsumesAttempt: true, MayHaveBeenSent: outcome == OutcomeUnknown}
	}
	i := min(attempts-1, len(p.Pattern)-1)
	return Decision{Status: StatusPendingRetry, ConsumesAttempt: true, Delay: p.Pattern[max(i, 0)]}
}
