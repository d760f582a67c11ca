package faults_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postamt/postamt/faults/harness"
)

// outboxStream is the outbox's JetStream stream: EmailSent and every other outbox event, the
// busiest stream of the suite and the one the sent view and the tracker consume.
const outboxStream = "POSTAMT_OUTBOX"

// TestNATSServerLossUnderLoad (issue 16, "fail over a NATS server"): the suite runs on a 3-server
// NATS cluster with R3 streams, as the prod overlay does, while users keep submitting mail
// regarding a CRM record. The server leading the outbox's stream (made the JetStream meta leader
// too, when the leadership can be moved there) crashes mid-load: the servers are nats-server
// processes, and the kill is a SIGKILL, so no leadership is handed over and its store is not
// closed. The load goes on for a while, the server is restarted, and once everything settled:
//
//   - every accepted email was delivered exactly once (by Message-ID) and recorded SENT;
//   - submits were accepted while the server was down (the publishers kept going);
//   - no event was lost: every email is in the sender's sent view (mailbox's consumer of
//     EmailSent) and tracked by the tracker (its own consumer of EmailSent), every service's
//     relay published all its events (its Redis event streams are empty), and every durable
//     consumer has nothing left pending;
//   - every stream has its 3 replicas current again.
//
// The calendar runs beside them and must still be running at the end, but nothing is checked of
// its projections: it follows the mailbox's events with ordered consumers, and the load writes no
// mailbox events. Waits are bounded; nothing is timed.
func TestNATSServerLossUnderLoad(t *testing.T) {
	const (
		record = "a-1"
		// outage and after are the fault's parameters (how long the server stays down, how
		// long the load runs after its restart), not waits for something to happen.
		outage = 10 * time.Second
		after  = 3 * time.Second
		within = 120 * time.Second
	)
	s := harness.Start(t, harness.Options{Dispatchers: 2, NATSServers: 3, NATSProcesses: true, Tracker: true, Calendar: true})
	cluster := s.NATSCluster
	relay := s.NewRelay(t)
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 8})
	s.TrackRecord(t, tenant, record, "office@muster.example")

	load := s.StartLoad(harness.LoadSpec{Tenant: tenant, Clients: 4, Interval: 100 * time.Millisecond, RegardingRecordID: record})
	stopped := false
	defer func() {
		if !stopped {
			load.Stop()
		}
	}()
	harness.Must(t, "50 emails at the relay and in the sent view before the fault", 60*time.Second, func() bool {
		if relay.Distinct() < 50 {
			return false
		}
		v, err := s.SentView(tenant)
		return err == nil && len(v) >= 50
	})

	victim := cluster.StreamLeader(outboxStream)
	if victim < 0 {
		t.Fatalf("stream %s has no leader", outboxStream)
	}
	// The hardest loss is of the server leading both the stream and the meta group: two
	// elections at once, and no meta leader to answer stream info or create consumers until
	// the second. The stream's leadership is moved to the meta leader when it can be; when it
	// cannot within the bound (a stepdown refused while the peer catches up), the stream
	// leader alone is killed.
	if meta := cluster.MetaLeader(); meta >= 0 && meta != victim {
		var moveErr error
		if harness.Eventually(30*time.Second, func() bool {
			if cluster.StreamLeader(outboxStream) == meta {
				return true
			}
			moveErr = cluster.MoveStreamLeader(outboxStream, meta)
			return false
		}) {
			victim = meta
		} else {
			t.Logf("could not move the leadership of %s to the meta leader %s (%v); killing the stream leader only", outboxStream, cluster.Name(meta), moveErr)
			if victim = cluster.StreamLeader(outboxStream); victim < 0 {
				t.Fatalf("stream %s has no leader", outboxStream)
			}
		}
	}
	meta := cluster.MetaLeader()
	role := "the leader of " + outboxStream
	if meta == victim {
		role += " and the JetStream meta leader"
	}
	t.Logf("killing %s, %s, with %d emails accepted and %d at the relay", cluster.Name(victim), role, load.Accepted(), relay.Distinct())
	killedAt := time.Now()
	cluster.Kill(victim)
	var failover time.Duration
	if harness.Eventually(30*time.Second, func() bool { l := cluster.StreamLeader(outboxStream); return l >= 0 && l != victim }) {
		failover = time.Since(killedAt)
	} else {
		t.Errorf("no new leader of %s within 30s of the kill", outboxStream)
	}
	<-time.After(outage - time.Since(killedAt))
	restartAt := time.Now()
	acceptedDown := load.AcceptedBetween(killedAt, restartAt)
	cluster.Restart(t, victim) // waits until every stream's replicas are current
	replicasBack := time.Since(restartAt)
	<-time.After(after)
	mail := load.Stop()
	stopped = true
	stoppedAt := time.Now()
	refused := load.Refused()

	counts, settled := s.WaitSettled(len(mail), within)
	if !settled {
		t.Errorf("not every email settled within %s: %s", within, counts)
	}
	// The projections agree with the ledger: every email (all are to be SENT, checked below)
	// in the sent view and tracked. Polled: the consumers may still be catching up.
	var missingView, untracked []string
	var lastErr error
	agreed := harness.Eventually(within, func() bool {
		view, err := s.SentView(tenant)
		if err != nil {
			lastErr = err
			return false
		}
		missingView = missingView[:0]
		for _, m := range mail {
			if !view[m.MessageID] {
				missingView = append(missingView, m.MessageID)
			}
		}
		un, err := s.Untracked(mail)
		if err != nil {
			lastErr = err
			return false
		}
		untracked = untracked[:0]
		for _, m := range un {
			untracked = append(untracked, m.MessageID)
		}
		return len(missingView) == 0 && len(untracked) == 0
	})
	converged := time.Since(stoppedAt)
	if !agreed {
		t.Errorf("projections did not agree with the ledger within %s: %d of %d emails missing from the sent view (e.g. %s), %d not tracked (e.g. %s); last error: %v",
			within, len(missingView), len(mail), harness.Some(missingView, 5), len(untracked), harness.Some(untracked, 5), lastErr)
		if len(untracked) > 0 {
			t.Logf("the tracker on %s: %s", untracked[0], s.Explain(tenant, untracked[0]))
		}
	}
	var left map[string]int64
	if !harness.Eventually(within, func() bool {
		var err error
		left, err = s.UnpublishedEvents(t)
		return err == nil && len(left) == 0
	}) {
		t.Errorf("events left unpublished in Redis %s after the load stopped (a relay stopped?): %v", within, left)
	}
	js := cluster.JetStream(t)
	var behind error
	if !harness.Eventually(within, func() bool { behind = durablesCaughtUp(js); return behind == nil }) {
		t.Errorf("a durable consumer did not catch up within %s: %v", within, behind)
	}
	if err := cluster.StreamsCurrent(); err != nil {
		t.Errorf("after the restart: %v", err)
	}

	for _, p := range []*harness.Process{s.Mailbox, s.API, s.Tracker, s.Calendar} {
		if !p.Running() {
			t.Errorf("%s exited during the test:\n%s", p.Name, p.LogTail(20))
		}
	}
	tally := finish(t, s, mail, relay)
	checkAllSent(t, tally)
	if len(tally.NotOnce) > 0 {
		t.Errorf("%d emails did not reach the relay exactly once (copies per email %v), e.g. %s",
			len(tally.NotOnce), tally.CopiesHist, harness.Some(tally.NotOnce, 5))
	}
	if tally.Foreign > 0 {
		t.Errorf("%d messages at the relay belong to no submitted email", tally.Foreign)
	}
	if acceptedDown == 0 {
		t.Errorf("no submit was accepted while %s was down (%d refused in all, e.g. %v)", cluster.Name(victim), len(refused), someRefusals(refused, 3))
	}
	dups := 0
	for k, n := range tally.CopiesHist {
		if k > 1 {
			dups += (k - 1) * n
		}
	}
	t.Logf("summary: killed %s (%s); accepted %d (%d while it was down, %d refused), delivered %d, duplicates %d; new stream leader %s after the kill, replicas current %s after the restart, projections agreed %s after the load stopped",
		cluster.Name(victim), role, len(mail), acceptedDown, len(refused), relay.Distinct(), dups,
		failover.Round(time.Millisecond), replicasBack.Round(time.Millisecond), converged.Round(time.Millisecond))
}

// durablesCaughtUp returns nil when every durable consumer of every stream has nothing pending:
// no message undelivered and none delivered but unacknowledged.
func durablesCaughtUp(js jetstream.JetStream) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	streams := js.StreamNames(ctx)
	var names []string
	for n := range streams.Name() {
		names = append(names, n)
	}
	if err := streams.Err(); err != nil {
		return fmt.Errorf("list streams: %w", err)
	}
	var errs []error
	for _, name := range names {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		cl := st.ListConsumers(ctx)
		for ci := range cl.Info() {
			if ci.Config.Durable == "" {
				continue
			}
			if ci.NumPending > 0 || ci.NumAckPending > 0 {
				errs = append(errs, fmt.Errorf("%s/%s: %d pending, %d awaiting acknowledgement", name, ci.Name, ci.NumPending, ci.NumAckPending))
			}
		}
		if err := cl.Err(); err != nil {
			return fmt.Errorf("list consumers of %s: %w", name, err)
		}
	}
	return errors.Join(errs...)
}

func someRefusals(rs []harness.Refusal, n int) []string {
	var out []string
	for _, r := range rs[:min(n, len(rs))] {
		out = append(out, r.Err.Error())
	}
	return out
}
