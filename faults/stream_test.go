package faults_test

import (
	"context"
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
)

// TestJetStreamStreamDeleted (issue 17): the outbox's JetStream stream is deleted under load (an
// operator's mistake, or a stream lost with a NATS store). Events published before are gone from
// JetStream with their consumers' positions; the ledger still knows every email. The suite
// recovers by itself: the relay re-creates the stream, the outbox's Redriver finds it new and
// re-emits the event of every email's current state from the ledger, and Check finds every SENT
// email with exactly one EmailSent in the stream (the copies of events the new stream already
// has are dropped by their Nats-Msg-Id), in the sent view and in the tracker.
func TestJetStreamStreamDeleted(t *testing.T) {
	const after = 5 * time.Second
	s := harness.Start(t, harness.Options{Dispatchers: 2, Tracker: true})
	s.Describe("4 clients submitting 10/s each, regarding a record; 2 dispatchers, tracker", "the outbox's JetStream stream deleted under load")
	_, load := natsLoad(t, s)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.JetStream(t).DeleteStream(ctx, harness.OutboxStream); err != nil {
		t.Fatalf("delete %s: %v", harness.OutboxStream, err)
	}
	s.RecoverFrom(time.Now())
	<-time.After(after) // the load goes on this long after the deletion
	mail := load.Stop()
	// The recovery is the re-drive's doing, not a lucky timing: some outbox replica ran one.
	redrives := func() float64 {
		var n float64
		for _, p := range append([]*harness.Process{s.API}, s.Dispatchers...) {
			n += p.Metrics(t).Sum("postamt_eventbus_redrives_total", map[string]string{"stream": harness.OutboxStream})
		}
		return n
	}
	for deadline := time.Now().Add(time.Minute); redrives() < 1; {
		if time.Now().After(deadline) {
			t.Fatal("no outbox replica re-drove the re-created stream within a minute")
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.Check(t, mail, harness.Expect{Load: load})
}
