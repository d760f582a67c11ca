package faults_test

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
)

// These tests kill the outbox's event relay (issue 17, "a relay killed before and after the
// publish acknowledgement"): the outbox process that holds the relay leases of the streams
// carrying the EmailSent events is SIGKILLed in one window of the publish, landed from outside.
// A relay reads newer entries of a stream only once the ones it read are acknowledged, and after
// a quiet spell it reads only the streams Redis told it have news; a relay that has just taken
// streams over reads them all. So:
//
//   - every relay lease is moved to one dispatcher (the other outbox processes are stopped with
//     SIGTERM, which releases their leases, and started again as standbys);
//   - that dispatcher is frozen (SIGSTOP) while the other sends the mail, so the events wait in
//     Redis, unread;
//   - the proxy between the processes and NATS starts holding one direction;
//   - the frozen holder's leases run out and a standby takes every stream over: it reads all the
//     waiting events in one batch and publishes them into the held direction. The standby is
//     SIGKILLed in that window.
//
// The next holder (another standby, or the frozen dispatcher let go on) takes the streams over
// when the dead one's leases run out and publishes what is still in Redis. Check asserts exactly
// one EmailSent per SENT email in JetStream, and the sent view and the tracker whole. The lease
// (OUTBOX_RELAY_CLAIM_IDLE) is 20 s here: longer than the relay's publish timeout (10 s, as the
// relay asks), so the victim keeps its leases while its publish hangs, and than the mail takes
// to be sent while the holder is frozen.

// outboxEvents is the prefix of the outbox's partitions' Redis event streams, pm:ob:{obN}:events.
const outboxEvents = "pm:ob:"

// relayLease is the outbox's relay lease in these tests.
const relayLease = 20 * time.Second

// relaySetup starts a suite behind a NATS proxy with two dispatchers and the tracker, a relay
// and a tracked record, and moves every relay lease of the outbox's streams to the first
// dispatcher, which it returns.
func relaySetup(t *testing.T, load, fault string) (*harness.Suite, *harness.Process) {
	t.Helper()
	s := harness.Start(t, harness.Options{Dispatchers: 2, Tracker: true, NATSProxy: true,
		OutboxEnv: map[string]string{"OUTBOX_RELAY_CLAIM_IDLE": relayLease.String()}})
	s.Describe(load, fault)
	relay := s.NewRelay(t)
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 8})
	s.TrackRecord(t, tenant, "a-1", "office@muster.example")

	holder := s.Dispatchers[0]
	others := []*harness.Process{s.API, s.Dispatchers[1]}
	var streams int
	harness.Must(t, "every outbox stream held by a relay", 30*time.Second, func() bool {
		streams = len(s.RelayHolders(outboxEvents))
		return streams > 0
	})
	var wg sync.WaitGroup
	for _, p := range others {
		wg.Go(func() {
			if e := p.Term(20 * time.Second); e.TimedOut {
				t.Errorf("%s did not stop after SIGTERM: %s", p.Name, e)
			}
		})
	}
	wg.Wait()
	harness.Must(t, fmt.Sprintf("%s holding all %d outbox streams", holder.Name, streams), 30*time.Second, func() bool {
		h := s.RelayHolders(outboxEvents)
		return len(h) == streams && heldOnlyBy(h, holder)
	})
	for _, p := range others {
		p.Restart(t)
	}
	s.MarkIdle(t)
	return s, holder
}

// heldOnlyBy reports whether p holds every stream of h.
func heldOnlyBy(h map[string]*harness.Process, p *harness.Process) bool {
	return !slices.ContainsFunc(slices.Collect(maps.Values(h)), func(q *harness.Process) bool { return q != p })
}

// takeOverHeld freezes holder, submits n emails regarding the tracked record, waits until the
// other dispatcher has sent them all while their events wait in Redis, calls hold (the proxy
// starts holding a direction), and waits until a standby has taken every stream over from the
// frozen holder. It returns the mail, the outbox events waiting in Redis and the new holders.
func takeOverHeld(t *testing.T, s *harness.Suite, holder *harness.Process, n int, hold func()) ([]harness.Submitted, int64, []*harness.Process) {
	t.Helper()
	streams := len(s.RelayHolders(outboxEvents))
	holder.Freeze()
	t.Cleanup(holder.Thaw)
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: n, RegardingRecordID: "a-1"})
	if c, ok := s.WaitSettled(n, 30*time.Second); !ok || c[sent] != n {
		t.Fatalf("the mail was not all SENT within 30s: %s", c)
	}
	var entries int64
	for _, v := range waitingEvents(t, s) {
		entries += v
	}
	if entries < int64(n) {
		t.Fatalf("%d outbox events wait in Redis, want at least the %d EmailSent", entries, n)
	}
	hold()
	if h := s.RelayHolders(outboxEvents); !heldOnlyBy(h, holder) {
		t.Fatalf("a standby took the relay leases over from the frozen %s before the proxy held (the mail took too long to send): %v", holder.Name, holderNames(h))
	}
	var takers []*harness.Process
	harness.Must(t, "a standby holding every outbox stream", relayLease+30*time.Second, func() bool {
		h := s.RelayHolders(outboxEvents)
		if len(h) < streams || slices.Contains(slices.Collect(maps.Values(h)), holder) {
			return false
		}
		takers = nil
		for _, p := range h {
			if !slices.Contains(takers, p) {
				takers = append(takers, p)
			}
		}
		return true
	})
	return mail, entries, takers
}

// killTakers SIGKILLs the standbys that took the streams over and lets the frozen holder go on.
// It returns their names.
func killTakers(takers []*harness.Process, frozen *harness.Process) []string {
	var names []string
	for _, p := range takers {
		p.Kill()
		names = append(names, p.Name)
	}
	frozen.Thaw()
	return names
}

// restartAPI starts the API replica again if it was killed (the harness submits and reads
// through it), once the proxy lets its connection to NATS through.
func restartAPI(t *testing.T, s *harness.Suite) {
	t.Helper()
	if !s.API.Running() {
		s.API.Restart(t)
	}
}

// waitingEvents returns the outbox's Redis event streams that hold entries, with their counts.
func waitingEvents(t *testing.T, s *harness.Suite) map[string]int64 {
	t.Helper()
	left, err := s.UnpublishedEvents(t)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for k, v := range left {
		if strings.HasPrefix(k, outboxEvents) {
			out[k] = v
		}
	}
	return out
}

func holderNames(h map[string]*harness.Process) map[string]string {
	out := map[string]string{}
	for k, p := range h {
		out[k] = p.Name
	}
	return out
}

// relayPublished sums postamt_relay_published_total of the outbox's running processes: every
// event they published and JetStream acknowledged, a duplicate it dropped included.
func relayPublished(t *testing.T, s *harness.Suite) float64 {
	t.Helper()
	var sum float64
	for _, p := range append([]*harness.Process{s.API}, s.Dispatchers...) {
		if p.Running() {
			sum += p.Metrics(t).Sum("postamt_relay_published_total", map[string]string{"service": "outbox"})
		}
	}
	return sum
}

// sentEventsOf counts the EmailSent events in JetStream for the emails of mail.
func sentEventsOf(t *testing.T, s *harness.Suite, mail []harness.Submitted) int {
	t.Helper()
	events, err := s.SentEvents(t)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range mail {
		n += events[m.ID]
	}
	return n
}

// TestEventRelayKilledAfterPublish: the proxy holds everything NATS sends to the processes, so
// the relay's publishes reach JetStream (the test reads them there, directly) but their
// acknowledgements do not reach the relay, which therefore keeps the entries in Redis. The
// holder is SIGKILLed in that window and the proxy lets go. The next holder publishes the
// entries again, and JetStream drops them as duplicates of their Nats-Msg-Id: still one
// EmailSent per SENT email.
func TestEventRelayKilledAfterPublish(t *testing.T) {
	const n = 40
	s, frozen := relaySetup(t, fmt.Sprintf("%d emails regarding a record, 2 dispatchers, tracker", n),
		"NATS's answers held: the EmailSent published, not acknowledged; the relay lease's holder SIGKILLed in that window, another takes over")
	t.Cleanup(func() { s.NATSProxy.Hang(false) })
	mail, entries, takers := takeOverHeld(t, s, frozen, n, func() { s.NATSProxy.Hang(true) })
	harness.Must(t, "every EmailSent in JetStream, published without an acknowledgement back", 30*time.Second, func() bool {
		return sentEventsOf(t, s, mail) >= n
	})
	var left int64
	for _, v := range waitingEvents(t, s) {
		left += v
	}
	if left != entries {
		t.Fatalf("%d of the %d outbox events left Redis while the acknowledgements were held; want none", entries-left, entries)
	}
	victims := killTakers(takers, frozen)
	s.NATSProxy.Hang(false)
	restartAPI(t, s)
	s.RecoverFrom(time.Now())
	before := relayPublished(t, s)
	t.Logf("killed %v holding %d outbox events in Redis whose EmailSent JetStream already had", victims, entries)

	harness.Must(t, "the outbox's Redis event streams empty", relayLease+30*time.Second, func() bool { return len(waitingEvents(t, s)) == 0 })
	republished := relayPublished(t, s) - before
	s.Check(t, mail, harness.Expect{Within: 90 * time.Second})
	if republished < float64(entries) {
		t.Errorf("the outbox processes left published %v events after the kill, want at least the %d entries left in Redis (the next holder republishes them)", republished, entries)
	}
	t.Logf("republished %v events after the kill", republished)
}

// TestEventRelayKilledBeforePublish: the proxy holds everything the processes send to NATS, so
// the relay's publishes of the EmailSent events are in flight (the test sees them in the proxy)
// and JetStream has none of them. The holder is SIGKILLed in that window: its bytes are lost with
// its connection and never reach JetStream. The proxy lets go, and the next holder publishes the
// entries still in Redis: one EmailSent per SENT email.
func TestEventRelayKilledBeforePublish(t *testing.T) {
	const n = 40
	s, frozen := relaySetup(t, fmt.Sprintf("%d emails regarding a record, 2 dispatchers, tracker", n),
		"the processes' bytes to NATS held: the EmailSent publishes in flight; the relay lease's holder SIGKILLed in that window, its publishes lost; another takes over")
	t.Cleanup(func() { s.NATSProxy.HoldRequests(false) })
	mail, entries, takers := takeOverHeld(t, s, frozen, n, func() { s.NATSProxy.HoldRequests(true) })
	heldSent := func() int {
		k := 0
		for _, b := range s.NATSProxy.HeldRequests() {
			k += bytes.Count(b, []byte(harness.SubjectEmailSent))
		}
		return k
	}
	harness.Must(t, "every EmailSent publish in flight, held in the proxy", 30*time.Second, func() bool { return heldSent() >= n })
	if got := sentEventsOf(t, s, mail); got != 0 {
		t.Fatalf("%d EmailSent reached JetStream while the publishes were held; want none", got)
	}
	victims := killTakers(takers, frozen)
	// The dead relay's connection closes, and its held publishes go with it.
	harness.Must(t, "the killed relay's publishes gone from the proxy", 10*time.Second, func() bool { return heldSent() == 0 })
	s.NATSProxy.HoldRequests(false)
	restartAPI(t, s)
	s.RecoverFrom(time.Now())
	if got := sentEventsOf(t, s, mail); got != 0 {
		t.Fatalf("%d EmailSent reached JetStream from the killed relay; want none", got)
	}
	t.Logf("killed %v with %d EmailSent publishes in flight and %d outbox events in Redis", victims, n, entries)
	s.Check(t, mail, harness.Expect{Within: 90 * time.Second})
}
