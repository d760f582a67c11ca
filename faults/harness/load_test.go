package harness

import (
	"maps"
	"testing"

	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// TestLoadExpectations: what a mixed load expects of each email once stopped. A cancel answered
// as applied means CANCELLED; one without a clear answer means what the ledger says (CANCELLED,
// or SENT when it did not take); refused mail not retried is FAILED, retried mail SENT, and a
// retry without a clear answer FAILED only while the ledger still says FAILED.
func TestLoadExpectations(t *testing.T) {
	const (
		cancelled = outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED
		failed    = outboxv1.EmailStatus_EMAIL_STATUS_FAILED
		scheduled = outboxv1.EmailStatus_EMAIL_STATUS_SCHEDULED
		pending   = outboxv1.EmailStatus_EMAIL_STATUS_PENDING_RETRY
	)
	kinds := map[string]mailKind{
		"now": kindNow, "scheduled": kindScheduled,
		"cancel-ok": kindCancel, "cancel-open-took": kindCancel, "cancel-open-not": kindCancel, "cancel-refused": kindCancel,
		"refused": kindRetry, "retried": kindRetry, "retry-open-took": kindRetry, "retry-open-not": kindRetry,
	}
	l := &Load{
		kind:      kinds,
		cancelled: map[string]bool{"cancel-ok": true},
		retried:   map[string]bool{"retried": true},
		retryOpen: map[string]bool{"retry-open-took": true, "retry-open-not": true},
	}
	for id := range kinds {
		l.accepted = append(l.accepted, Submitted{ID: id})
	}
	l.settleExpectations(map[string]outboxv1.EmailStatus{
		"cancel-open-took": cancelled, "cancel-open-not": scheduled,
		"retry-open-took": pending, "retry-open-not": failed,
	})
	want := map[string]outboxv1.EmailStatus{
		"cancel-ok": cancelled, "cancel-open-took": cancelled,
		"refused": failed, "retry-open-not": failed,
	}
	if got := l.final; !maps.Equal(got, want) {
		t.Errorf("expectations %v, want %v (every other email SENT)", got, want)
	}
}
