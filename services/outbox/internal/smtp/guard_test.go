package smtp_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/smtptest"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
)

// TestGuardStopsBeforeTheMessage: the worker's guard is asked before MAIL and again after the
// relay accepted DATA; a refusal at either point ends the conversation without the message, so
// the relay delivers nothing, and the outcome says nothing was sent (no attempt). The next send
// on the same sender works.
func TestGuardStopsBeforeTheMessage(t *testing.T) {
	refuse := errors.New("lease about to run out")
	for _, tc := range []struct {
		name     string
		refuseAt int // the guard call (1: before MAIL, 2: before the message) that refuses
	}{
		{"before MAIL", 1},
		{"after DATA was accepted", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink := smtptest.Start(t)
			s := sender(t, sink)
			calls := 0
			got := s.SendGuarded(context.Background(), "info@kanzlei.example", []string{"client@example.com"}, []byte(msg), func() error {
				calls++
				if calls == tc.refuseAt {
					return refuse
				}
				return nil
			})
			if got.Outcome != outbox.OutcomeNotSent || got.Started.IsZero() {
				t.Fatalf("outcome %+v, want NotSent with a start time", got)
			}
			if calls != tc.refuseAt {
				t.Errorf("guard asked %d times, want %d", calls, tc.refuseAt)
			}
			if n := len(sink.Messages()); n != 0 {
				t.Fatalf("the relay delivered %d messages", n)
			}
			if r := s.Send(context.Background(), "info@kanzlei.example", []string{"client@example.com"}, []byte(msg)); r.Outcome != outbox.OutcomeSent {
				t.Fatalf("next send = %+v", r)
			}
		})
	}
}

// TestCancelStopsAHungConversation: a conversation blocked on a relay that does not answer MAIL
// ends as soon as its context is cancelled, as not sent, instead of waiting for the command
// timeout.
func TestCancelStopsAHungConversation(t *testing.T) {
	sink := smtptest.Start(t)
	release := make(chan struct{})
	defer close(release)
	sink.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
		if len(env.To) == 0 {
			<-release // the relay hangs on MAIL
		}
		return smtptest.Accept
	})
	s := sender(t, sink)
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan outbox.Outcome, 1)
	go func() {
		got <- s.Send(ctx, "info@kanzlei.example", []string{"client@example.com"}, []byte(msg)).Outcome
	}()
	time.AfterFunc(100*time.Millisecond, cancel)
	if o := <-got; o != outbox.OutcomeNotSent {
		t.Fatalf("outcome %v, want NotSent (the command timeout, 2 s, would make it temporary)", o)
	}
	if n := len(sink.Messages()); n != 0 {
		t.Fatalf("the relay delivered %d messages", n)
	}
}
