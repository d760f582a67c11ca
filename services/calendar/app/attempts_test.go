package app_test

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/testkit/poll"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
)

// sendAck answers a delivery with an outcome and a message.
func (a *agent) sendAck(d *calendarv1.Delivery, outcome calendarv1.DeliveryOutcome) {
	a.t.Helper()
	if err := a.stream.Send(&calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Ack{Ack: &calendarv1.Ack{
		Position: d.GetPosition(), Outcome: outcome, Message: "Outlook is busy",
	}}}); err != nil {
		a.t.Fatal(err)
	}
}

// TestAgentAttemptLimits (issue 15): CALENDAR_AGENT_MAX_ATTEMPTS (3 in tests) counts ERROR
// answers, not hand-outs an agent never answered; those have their own bound,
// CALENDAR_AGENT_MAX_UNANSWERED (3 in tests), after which the delivery is dead instead of being
// handed out again.
func TestAgentAttemptLimits(t *testing.T) {
	t.Run("dropped streams are not ERROR answers", func(t *testing.T) {
		e := startEnv(t, envOptions{})
		if _, err := e.calendar.CreateEntry(e.as("maier"), &calendarv1.CreateEntryRequest{Entry: deadline("frist-1", "huber", "Frist", 31)}); err != nil {
			t.Fatal(err)
		}
		for range 2 { // the agent receives the deadline and goes away without answering
			a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc"})
			if err != nil {
				t.Fatal(err)
			}
			a.next()
			a.close()
		}
		a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc"})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			d := a.next()
			if d.GetEntry().GetEntryId() != "frist-1" {
				t.Fatalf("delivery %d = %v", i, d)
			}
			if st := e.status("huber"); st.GetDeadCount() != 0 {
				t.Fatalf("dead after %d ERROR answers and 2 dropped streams: %v", i, st)
			}
			a.sendAck(d, calendarv1.DeliveryOutcome_DELIVERY_OUTCOME_ERROR)
		}
		poll.Eventually(t, "dead after the third ERROR", func() bool { return e.status("huber").GetDeadCount() == 1 })
	})

	t.Run("an agent that never answers", func(t *testing.T) {
		e := startEnv(t, envOptions{})
		if _, err := e.calendar.CreateEntry(e.as("maier"), &calendarv1.CreateEntryRequest{Entry: deadline("frist-1", "huber", "Frist", 31)}); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc"})
			if err != nil {
				t.Fatal(err)
			}
			if d := a.next(); d.GetEntry().GetEntryId() != "frist-1" {
				t.Fatalf("delivery = %v", d)
			}
			a.close()
		}
		a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc"})
		if err != nil {
			t.Fatal(err)
		}
		poll.Eventually(t, "dead instead of a fourth hand-out", func() bool {
			st := e.status("huber")
			return st.GetDeadCount() == 1 && st.GetPendingCount() == 0
		})
		if _, err := e.calendar.CreateEntry(e.as("maier"), &calendarv1.CreateEntryRequest{Entry: deadline("frist-2", "huber", "Frist", 30)}); err != nil {
			t.Fatal(err)
		}
		if d := a.next(); d.GetEntry().GetEntryId() != "frist-2" {
			t.Errorf("next delivery = %s, want frist-2 (frist-1 is dead)", d.GetEntry().GetEntryId())
		}
		poll.Eventually(t, "DeliveryFailed", func() bool {
			return len(e.events("postamt.calendar.v1.DeliveryFailed", func() proto.Message { return &calendarv1.DeliveryFailed{} })) == 1
		})
		// The log shows three hand-outs and the end, no fourth hand-out that never happened.
		r, err := e.calendar.ListSyncLog(e.admin(), &calendarv1.ListSyncLogRequest{UserId: "huber", PageSize: 100})
		if err != nil {
			t.Fatal(err)
		}
		var story []string
		for _, l := range slices.Backward(r.GetEntries()) {
			if l.GetEntryId() == "frist-1" && l.GetAction() != "QUEUED" {
				story = append(story, l.GetAction())
			}
		}
		if want := []string{"DELIVERED", "DELIVERED", "DELIVERED", "DEAD"}; !slices.Equal(story, want) {
			t.Errorf("frist-1's log = %v, want %v", story, want)
		}
	})
}
