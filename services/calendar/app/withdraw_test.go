package app_test

import (
	"slices"
	"testing"

	"github.com/postamt/postamt/internal/testkit/poll"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
)

// TestCancelledBeforeReceived (issue 15): an entry created and cancelled while the agent was
// offline is not delivered at all — no CANCEL of something the agent never received; the sync
// log says WITHDRAWN. An entry the agent was handed before is still cancelled on the agent.
func TestCancelledBeforeReceived(t *testing.T) {
	t.Run("never received", func(t *testing.T) {
		e := startEnv(t, envOptions{})
		sek := e.as("maier")
		if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: deadline("frist-x", "huber", "Irrtum", 20)}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.calendar.CancelEntry(sek, &calendarv1.CancelEntryRequest{EntryId: "frist-x"}); err != nil {
			t.Fatal(err)
		}
		if st := e.status("huber"); st.GetPendingCount() != 0 {
			t.Errorf("pending after create and cancel = %d, want 0", st.GetPendingCount())
		}
		if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: deadline("frist-y", "huber", "Frist", 21)}); err != nil {
			t.Fatal(err)
		}
		a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc"})
		if err != nil {
			t.Fatal(err)
		}
		if d := a.next(); d.GetEntry().GetEntryId() != "frist-y" || d.GetAction() != calendarv1.DeliveryAction_DELIVERY_ACTION_UPSERT {
			t.Errorf("first delivery = %s %v, want frist-y UPSERT (frist-x never reached the agent)", d.GetEntry().GetEntryId(), d.GetAction())
		}
		if got := e.logActions("huber"); !slices.Contains(got, "WITHDRAWN") {
			t.Errorf("sync log = %v, want a WITHDRAWN line", got)
		}
	})

	t.Run("received before", func(t *testing.T) {
		e := startEnv(t, envOptions{})
		sek := e.as("maier")
		if _, err := e.calendar.CreateEntry(sek, &calendarv1.CreateEntryRequest{Entry: deadline("frist-x", "huber", "Irrtum", 20)}); err != nil {
			t.Fatal(err)
		}
		a, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc"})
		if err != nil {
			t.Fatal(err)
		}
		a.next() // handed out; the agent goes away before acknowledging
		a.close()
		if _, err := e.calendar.CancelEntry(sek, &calendarv1.CancelEntryRequest{EntryId: "frist-x"}); err != nil {
			t.Fatal(err)
		}
		poll.Eventually(t, "the cancellation queued", func() bool { return e.status("huber").GetPendingCount() == 1 })
		b, _, err := e.connect("huber", &calendarv1.Hello{AgentId: "pc"})
		if err != nil {
			t.Fatal(err)
		}
		if d := b.next(); d.GetEntry().GetEntryId() != "frist-x" || d.GetAction() != calendarv1.DeliveryAction_DELIVERY_ACTION_CANCEL {
			t.Errorf("delivery = %s %v, want frist-x CANCEL", d.GetEntry().GetEntryId(), d.GetAction())
		}
	})
}
