package app_test

import (
	"slices"
	"testing"

	"github.com/postamt/postamt/internal/testkit/poll"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
)

// TestSyncLogTellsTheWholeStory (issue 15): without anyone turning it on, a user's sync log
// has a line for each step of a delivery — QUEUED, DELIVERED when the agent is handed the entry,
// ACKNOWLEDGED with the remote id and version the agent reported, nothing left blank.
func TestSyncLogTellsTheWholeStory(t *testing.T) {
	e := startEnv(t, envOptions{})
	if _, err := e.calendar.CreateEntry(e.as("maier"), &calendarv1.CreateEntryRequest{Entry: deadline("frist-1", "huber", "Frist", 31)}); err != nil {
		t.Fatal(err)
	}
	a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc"})
	if err != nil {
		t.Fatal(err)
	}
	d := a.next()
	a.ack(d, calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_APPLIED, "outlook-1") // remote version v1
	var lines []*calendarv1.SyncLogEntry
	poll.Eventually(t, "the acknowledgement in the sync log", func() bool {
		r, err := e.calendar.ListSyncLog(e.as("huber"), &calendarv1.ListSyncLogRequest{PageSize: 50})
		if err != nil {
			return false
		}
		lines = r.GetEntries()
		return len(lines) > 0 && lines[0].GetAction() == "ACKNOWLEDGED"
	})
	var story []string
	for i := len(lines) - 1; i >= 0; i-- {
		if l := lines[i]; l.GetEntryId() == "frist-1" {
			story = append(story, l.GetAction())
		}
	}
	if want := []string{"QUEUED", "DELIVERED", "ACKNOWLEDGED"}; !slices.Equal(story, want) {
		t.Errorf("frist-1's log lines = %v, want %v", story, want)
	}
	for _, l := range lines {
		switch l.GetAction() {
		case "DELIVERED":
			if l.GetPosition() != d.GetPosition() || l.GetTarget() != "agent" || l.GetRevision() != 1 {
				t.Errorf("DELIVERED line = %v", l)
			}
		case "ACKNOWLEDGED":
			if got, want := l.GetDetail(), "remote id outlook-1, version v1"; got != want {
				t.Errorf("ACKNOWLEDGED detail = %q, want %q", got, want)
			}
		}
	}
}
