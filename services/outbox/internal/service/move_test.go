package service

import (
	"errors"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// TestMoveChange: what a move does to each status, and what it refuses, without Redis.
func TestMoveChange(t *testing.T) {
	now := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	due, listed := now.Add(time.Hour), now.Add(-time.Hour)
	for _, tc := range []struct {
		name    string
		status  outbox.Status
		due     time.Time
		enabled bool
		want    redisstore.Change
		reason  string // a refusal's reason
	}{
		{"scheduled keeps its due time", outbox.StatusScheduled, due, true, redisstore.Change{Status: outbox.StatusScheduled, Due: due, At: due, Connector: "neu"}, ""},
		{"pending retry keeps its due time", outbox.StatusPendingRetry, due, true, redisstore.Change{Status: outbox.StatusPendingRetry, Due: due, At: due, Connector: "neu"}, ""},
		{"failed keeps its place in the list", outbox.StatusFailed, time.Time{}, true, redisstore.Change{Status: outbox.StatusFailed, At: listed, Connector: "neu"}, ""},
		{"held mail is queued on an enabled connector", outbox.StatusConnectorDisabled, time.Time{}, true, redisstore.Change{Status: outbox.StatusQueued, Due: now, At: now, Connector: "neu"}, ""},
		{"held mail stays held on a disabled connector", outbox.StatusConnectorDisabled, time.Time{}, false, redisstore.Change{Status: outbox.StatusConnectorDisabled, At: listed, Connector: "neu"}, ""},
		{"mail being sent is refused", outbox.StatusSending, due, true, redisstore.Change{}, "BEING_SENT"},
		{"sent mail is refused", outbox.StatusSent, time.Time{}, true, redisstore.Change{}, "WRONG_STATUS"},
		{"cancelled mail is refused", outbox.StatusCancelled, time.Time{}, true, redisstore.Change{}, "WRONG_STATUS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			score := tc.due
			if score.IsZero() {
				score = listed
			}
			e := &redisstore.Email{ID: "e1", Status: tc.status, Due: tc.due, Score: score, Connector: "alt"}
			got, err := moveChange(e, moveTarget{id: "neu", enabled: tc.enabled}, now)
			if tc.reason != "" {
				var de *errs.Error
				if !errors.As(err, &de) || de.Kind != errs.KindFailedPrecondition || de.Reason != tc.reason {
					t.Fatalf("err = %v, want FailedPrecondition %s", err, tc.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != tc.want.Status || !got.Due.Equal(tc.want.Due) || !got.At.Equal(tc.want.At) || got.Connector != tc.want.Connector || got.CountAttempt || got.ResetAttempts {
				t.Errorf("change %+v, want %+v", got, tc.want)
			}
		})
	}
}
