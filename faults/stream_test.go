package faults_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
)

// TestJetStreamStreamDeleted (issue 17): the outbox's JetStream stream is deleted under load (an
// operator's mistake, or a stream lost with a NATS store). Events published before are gone from
// JetStream with their consumers' positions; the ledger still knows every email. The suite is to
// recover by itself: the stream comes back, the ledger re-drives the EmailSent events that are
// missing, and Check finds every SENT email with exactly one EmailSent in the stream and in the
// sent view and the tracker.
//
// It fails today, an open finding of issue 17 (docs/reliability.md, "What the scenarios
// found"): the relay re-creates the stream, but the EmailSent events it held are not re-driven.
// It runs with POSTAMT_FAULTS_OPEN_FINDINGS=1, so the proof is at hand for whoever builds the
// re-drive, and make test stays a record of what holds.
func TestJetStreamStreamDeleted(t *testing.T) {
	if os.Getenv("POSTAMT_FAULTS_OPEN_FINDINGS") == "" {
		t.Skip("open finding (docs/reliability.md): events a deleted stream held are not re-driven; POSTAMT_FAULTS_OPEN_FINDINGS=1 runs it")
	}
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
	s.Check(t, mail, harness.Expect{Load: load})
}
