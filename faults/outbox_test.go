// Package faults_test holds the outbox's fault tests (issue 12): the outbox runs as real
// processes (harness), is killed, stopped and cut off from Redis and its relay as production
// will be, and each test asserts an invariant of dispatch by counting copies per Message-ID at
// the relay against the ledger's records and attempt histories, never a duration. Each test is
// bounded: a wait that runs out fails the test with the figures it saw.
//
// Run: cd faults && go test -race -count=1 ./...   (POSTAMT_BIN=path tests a prebuilt binary)
package faults_test

import (
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

const (
	tenant = "kanzlei"
	// stopWait bounds how long a dispatcher may take to exit after SIGTERM when a test stops them
	// all before counting; one still running then is killed (what it sent is counted anyway).
	stopWait = 15 * time.Second
	// backlogAhead schedules a test's mail a moment after its submission starts, so the
	// dispatchers find it due as one backlog rather than trickling in.
	backlogAhead = 2 * time.Second
)

var (
	sent     = outboxv1.EmailStatus_EMAIL_STATUS_SENT
	sending  = outboxv1.EmailStatus_EMAIL_STATUS_SENDING
	disabled = outboxv1.EmailStatus_EMAIL_STATUS_CONNECTOR_DISABLED
)

// finish stops every dispatcher (so nothing is being sent any more), closes the relays (so their
// counts are final) and tallies the ledger against them.
func finish(t *testing.T, s *harness.Suite, mail []harness.Submitted, relays ...*harness.Relay) harness.Tally {
	t.Helper()
	for name, e := range s.StopDispatchers(stopWait) {
		t.Logf("%s stopped: %s", name, e)
	}
	for _, r := range relays {
		r.Close()
	}
	tally := s.Tally(t, mail, relays...)
	t.Logf("tally: %s", tally)
	return tally
}

// checkNoUncountedDuplicates is the invariant of every crash case: a Message-ID the relay
// received k > 1 times has at least k-1 attempts of outcome UNKNOWN in its history (the RFC 1047
// window, counted), every email reached the relay, and nothing foreign did.
func checkNoUncountedDuplicates(t *testing.T, tally harness.Tally) {
	t.Helper()
	if len(tally.Uncounted) > 0 {
		t.Errorf("%d emails were delivered more often than their UNKNOWN attempts account for (uncounted duplicates), e.g. %s",
			len(tally.Uncounted), harness.Some(tally.Uncounted, 5))
	}
	if n := tally.CopiesHist[0]; n > 0 {
		t.Errorf("%d emails never reached the relay", n)
	}
	if tally.Foreign > 0 {
		t.Errorf("%d messages at the relay belong to no submitted email", tally.Foreign)
	}
}

// checkAllSent asserts every email's record says SENT.
func checkAllSent(t *testing.T, tally harness.Tally) {
	t.Helper()
	if got := tally.ByStatus[sent]; got != tally.Emails {
		t.Errorf("%d of %d emails SENT; by status %s", got, tally.Emails, tally.ByStatus)
	}
}

// TestSlowRelay (issue 12, "Sends outlive their lease"): two replicas share a backlog for a relay
// that answers every command late. Each email reaches the relay exactly once and is recorded
// SENT after one attempt, whatever the lease: a send never starts without a valid lease and a
// lease never lapses while its send runs. The short leases make claims outlive them unless the
// dispatcher renews or claims only what it can send within one.
func TestSlowRelay(t *testing.T) {
	cases := []struct {
		name  string
		env   map[string]string
		delay time.Duration
		pool  int32
		n     int
		// within bounds the wait for every email to be SENT: about twice what two replicas
		// need at pool/(2 round trips × delay) emails per second each.
		within time.Duration
	}{
		// Claims fit in the lease: the baseline.
		{name: "default lease", delay: 600 * time.Millisecond, pool: 8, n: 300, within: 50 * time.Second},
		// The livelock: each replica's share takes longer to send than the lease.
		{name: "lease 20s relay 100ms", env: map[string]string{"OUTBOX_LEASE": "20s", "OUTBOX_SMTP_SUBMIT_TIMEOUT": "15s"},
			delay: 100 * time.Millisecond, pool: 4, n: 1200, within: 60 * time.Second},
		// A lease far shorter than a share's sending time: every claim outlives it unless
		// renewed or sized to it.
		{name: "lease 3s", env: map[string]string{"OUTBOX_LEASE": "3s", "OUTBOX_SMTP_SUBMIT_TIMEOUT": "2s", "OUTBOX_SMTP_COMMAND_TIMEOUT": "2s"},
			delay: 600 * time.Millisecond, pool: 8, n: 300, within: 50 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := harness.Start(t, harness.Options{Dispatchers: 2, OutboxEnv: tc.env})
			relay := s.NewRelay(t)
			relay.Proxy.SetDelay(tc.delay)
			s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: tc.pool})
			mail := s.Submit(t, harness.Batch{Tenant: tenant, N: tc.n, SendAt: time.Now().Add(backlogAhead)})

			counts, settled := s.WaitSettled(tc.n, tc.within)
			t.Logf("after waiting up to %s: %s; %d messages at the relay", tc.within, counts, len(relay.Arrivals()))
			tally := finish(t, s, mail, relay)
			if !settled {
				t.Errorf("not every email settled within %s: %s", tc.within, counts)
			}
			checkAllSent(t, tally)
			if len(tally.NotOnce) > 0 {
				t.Errorf("%d emails did not reach the relay exactly once (copies per email %v), e.g. %s",
					len(tally.NotOnce), tally.CopiesHist, harness.Some(tally.NotOnce, 5))
			}
			if len(tally.AttemptsNot1) > 0 {
				t.Errorf("%d emails took other than 1 attempt, e.g. %s", len(tally.AttemptsNot1), harness.Some(tally.AttemptsNot1, 5))
			}
			if tally.Foreign > 0 {
				t.Errorf("%d messages at the relay belong to no submitted email", tally.Foreign)
			}
		})
	}
}

// TestRedisKilledDuringDelivery (issue 12, "A Redis outage duplicates what was sent during it"):
// Redis is SIGKILLed for 5 s while two replicas deliver, then restarted on its append-only file.
// Every email is eventually SENT, nothing is left SENDING, and a Message-ID the relay got twice
// is counted (an UNKNOWN attempt per extra copy): a send whose result could not be recorded is
// recorded later, not sent again unannounced. The lease is 30 s, so that mail whose result was
// lost comes due again (and would be sent again) within the test's wait; each replica's share
// takes about 10 s to send, well within it.
func TestRedisKilledDuringDelivery(t *testing.T) {
	const (
		n      = 800
		outage = 5 * time.Second
		within = 60 * time.Second
	)
	s := harness.Start(t, harness.Options{Dispatchers: 2, OutboxEnv: map[string]string{"OUTBOX_LEASE": "30s", "OUTBOX_SMTP_SUBMIT_TIMEOUT": "20s"}})
	relay := s.NewRelay(t)
	relay.Proxy.SetDelay(100 * time.Millisecond)
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 8})
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: n, SendAt: time.Now().Add(backlogAhead)})

	harness.Must(t, "a quarter of the mail at the relay", 40*time.Second, func() bool { return relay.Distinct() >= n/4 })
	s.Redis.Kill()
	atKill := relay.Distinct()
	// The outage's length is the fault's parameter, not a wait for something to happen.
	<-time.After(outage)
	s.Redis.Restart(t)
	t.Logf("Redis down for %s with %d of %d emails at the relay; %d arrived during the outage", outage, atKill, n, relay.Distinct()-atKill)

	counts, settled := s.WaitSettled(n, within)
	t.Logf("%s after Redis came back: %s", within, counts)
	tally := finish(t, s, mail, relay)
	if !settled {
		t.Errorf("not settled within %s of Redis's restart: %s (SENDING %d)", within, counts, counts[sending])
	}
	checkAllSent(t, tally)
	checkNoUncountedDuplicates(t, tally)
}

// TestReplicaKilledMidDelivery (issue 12, "Back within seconds", P9; issue 16, "N outbox
// replicas share the partitions"): one of three replicas is SIGKILLed while it delivers through a
// slow relay. The two survivors take its partitions and its mail and deliver everything, and
// every duplicate the crash caused is counted. How long after the kill the mail held at the kill
// arrived, and the longest the relay then waited, are logged for the record (P9's bar is 10 s;
// the benchmark measures it, this test only bounds its wait).
func TestReplicaKilledMidDelivery(t *testing.T) {
	const (
		n = 300
		// within bounds the wait after the kill: P9's bar (10 s) plus the ~17 s the survivor
		// needs for the rest alone, with room for a loaded machine (the default lease is 8 s).
		within = 50 * time.Second
	)
	s := harness.Start(t, harness.Options{Dispatchers: 3})
	relay := s.NewRelay(t)
	relay.Proxy.SetDelay(300 * time.Millisecond)
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 8})
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: n, SendAt: time.Now().Add(backlogAhead)})

	harness.Must(t, "a quarter of the mail at the relay", 40*time.Second, func() bool { return relay.Distinct() >= n/4 })
	victim := s.Dispatchers[0]
	victim.Kill()
	killedAt := time.Now()
	// The mail claimed when the replica died: the victim's, and whatever the survivor held.
	held := map[string]bool{}
	for _, id := range s.IDs(t, tenant, sending) {
		held[id] = true
	}
	atKill := relay.Distinct()

	counts, settled := s.WaitSettled(n, within)
	logRecovery(t, mail, held, relay.Arrivals(), killedAt, time.Now(), atKill)
	tally := finish(t, s, mail, relay)
	if !settled {
		t.Errorf("the survivors did not deliver everything within %s of the kill: %s", within, counts)
	}
	checkAllSent(t, tally)
	checkNoUncountedDuplicates(t, tally)
}

// logRecovery logs when the mail held at the kill arrived, and the longest the relay waited
// between the kill and the end of the wait while mail was still to come (P9's figure; not
// asserted).
func logRecovery(t *testing.T, mail []harness.Submitted, held map[string]bool, arrivals []harness.Arrival, killedAt, end time.Time, atKill int) {
	t.Helper()
	heldMsg := map[string]bool{}
	for _, m := range mail {
		if held[m.ID] {
			heldMsg[m.MessageID] = true
		}
	}
	arrived := map[string]bool{}
	var lastHeld time.Time
	prev, maxGap := killedAt, time.Duration(0)
	for _, a := range arrivals {
		arrived[a.MessageID] = true
		if a.At.Before(killedAt) {
			continue
		}
		maxGap = max(maxGap, a.At.Sub(prev))
		prev = a.At
		if heldMsg[a.MessageID] {
			lastHeld = a.At
		}
	}
	missing := 0
	for id := range heldMsg {
		if !arrived[id] {
			missing++
		}
	}
	if len(arrived) < len(mail) {
		maxGap = max(maxGap, end.Sub(prev)) // the relay is still waiting
	}
	last := "none arrived"
	if !lastHeld.IsZero() {
		last = fmt.Sprintf("the last arrived %s after the kill", lastHeld.Sub(killedAt).Round(time.Millisecond))
	}
	t.Logf("killed with %d of %d emails at the relay and %d held (SENDING, either replica's): %s, %d had not arrived %s after the kill; the longest the relay waited after the kill while mail was due: %s",
		atKill, len(mail), len(held), last, missing, end.Sub(killedAt).Round(time.Millisecond), maxGap.Round(time.Millisecond))
}

// TestReplicaTerminatedWithBacklog (issue 12, "SIGTERM"): a replica gets SIGTERM while sends are
// in flight and it holds a claimed backlog. It exits within a generous bound with status 0, logs
// how many sends were still in progress and what it handed back, and the other replica delivers
// the rest without uncounted duplicates.
func TestReplicaTerminatedWithBacklog(t *testing.T) {
	const (
		n         = 200
		exitBound = 45 * time.Second // DRAIN_TIMEOUT (30s) plus slack; the relay answers in 300 ms
		within    = 60 * time.Second
	)
	s := harness.Start(t, harness.Options{Dispatchers: 2})
	relay := s.NewRelay(t)
	relay.Proxy.SetDelay(300 * time.Millisecond)
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 4})
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: n, SendAt: time.Now().Add(backlogAhead)})

	// Deliveries under way and more claimed than the pools hold: a backlog in both replicas.
	harness.Must(t, "20 emails at the relay", 40*time.Second, func() bool { return relay.Distinct() >= 20 })
	victim := s.Dispatchers[0]
	exit := victim.Term(exitBound)
	t.Logf("%s after SIGTERM: %s", victim.Name, exit)
	if exit.TimedOut || exit.Code != 0 {
		t.Errorf("%s after SIGTERM: %s; want exit status 0 within %s", victim.Name, exit, exitBound)
	}
	if line := logLine(victim.Log(), "handed_back"); line == "" {
		t.Errorf("%s's log has no line saying how many sends were in progress and how much was handed back (handed_back)", victim.Name)
	} else {
		t.Logf("%s logged: %s", victim.Name, line)
		if !strings.Contains(line, "in_progress") {
			t.Errorf("the stop line names no in_progress count: %s", line)
		}
	}

	counts, settled := s.WaitSettled(n, within)
	tally := finish(t, s, mail, relay)
	if !settled {
		t.Errorf("the remaining replica did not deliver the rest within %s: %s", within, counts)
	}
	checkAllSent(t, tally)
	checkNoUncountedDuplicates(t, tally)
}

// logLine returns the last line of log containing substr.
func logLine(log, substr string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], substr) {
			return lines[i]
		}
	}
	return ""
}

// TestHungRelayHoldsOnlyItsConnector (issue 12, "Never stuck behind someone else", P10): connector
// A's relay hangs with a few emails on it; then mail of two tenants through healthy connector B
// (its own relay) is all delivered while A's conversations still hang: A has nothing delivered
// and its mail is still SENDING when B's last email arrives. One dispatcher, so nothing but its
// own scheduling decides.
func TestHungRelayHoldsOnlyItsConnector(t *testing.T) {
	const (
		nA     = 3
		nB     = 24 // per tenant
		within = 60 * time.Second
	)
	tenants := []string{"kanzlei", "praxis"}
	s := harness.Start(t, harness.Options{Dispatchers: 1, Tenants: tenants})
	relayA, relayB := s.NewRelay(t), s.NewRelay(t)
	relayA.Proxy.Hang(true)
	t.Cleanup(func() { relayA.Proxy.Hang(false) })
	s.CreateConnector(t, harness.Connector{Tenant: "kanzlei", ID: "a", Relay: relayA, PoolSize: 2})
	for _, tn := range tenants {
		s.CreateConnector(t, harness.Connector{Tenant: tn, ID: "b", Relay: relayB})
	}

	mailA := s.Submit(t, harness.Batch{Tenant: "kanzlei", Connector: "a", N: nA, Subject: "to the hung relay"})
	aHangs := func() (bool, harness.Counts) {
		c := harness.Counts{}
		for _, m := range mailA {
			c[s.Email(t, m).GetStatus()]++
		}
		return c[sending] == nA && len(relayA.Arrivals()) == 0, c
	}
	harness.Must(t, "A's mail SENDING with a conversation open to the hung relay", 20*time.Second, func() bool {
		ok, _ := aHangs()
		return ok && relayA.Proxy.Conns() > 0
	})

	var mailB []harness.Submitted
	for _, tn := range tenants {
		mailB = append(mailB, s.Submit(t, harness.Batch{Tenant: tn, Connector: "b", N: nB, Subject: "to the healthy relay"})...)
	}
	// Wait until B is through or A's conversations have ended (timed out), whichever is first.
	harness.Eventually(within, func() bool {
		if relayB.Distinct() >= len(mailB) {
			return true
		}
		ok, _ := aHangs()
		return !ok
	})
	gotB := relayB.Distinct()
	stillHanging, countsA := aHangs()
	t.Logf("B: %d of %d delivered; A: %s, %d delivered, %d connections open", gotB, len(mailB), countsA, len(relayA.Arrivals()), relayA.Proxy.Conns())
	switch {
	case gotB >= len(mailB) && stillHanging:
		// B was through while A's conversations hung: the invariant holds.
	case gotB >= len(mailB):
		t.Errorf("B's %d emails were all delivered only after A's conversations had ended (A's mail now %s): the hung relay held healthy mail back", len(mailB), countsA)
	case !stillHanging:
		t.Errorf("A's conversations ended (A's mail now %s) with only %d of B's %d emails delivered: the hung relay held healthy mail back", countsA, gotB, len(mailB))
	default:
		t.Errorf("only %d of B's %d emails arrived within %s while A's relay hung (A's mail %s)", gotB, len(mailB), within, countsA)
	}
}

// TestPriorityAcrossTheConnector (issue 12, "Priority holds for the connector as a whole"): a
// disabled connector with pool 1 collects 20 LOW, 20 NORMAL and 20 HIGH emails (submitted in that
// order, so submission order is the reverse of priority); the relay is held while the connector
// is enabled and all 60 are queued again, then let go. With one replica every HIGH arrives before
// every NORMAL and every NORMAL before every LOW; with two, HIGH's mean position comes before
// NORMAL's before LOW's and every HIGH before every LOW.
func TestPriorityAcrossTheConnector(t *testing.T) {
	const perPriority = 20
	for _, tc := range []struct {
		name     string
		replicas int
	}{{"one replica", 1}, {"two replicas", 2}} {
		replicas := tc.replicas
		t.Run(tc.name, func(t *testing.T) {
			s := harness.Start(t, harness.Options{Dispatchers: replicas})
			relay := s.NewRelay(t)
			s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 1, Disabled: true})
			var mail []harness.Submitted
			for _, p := range []outboxv1.Priority{outboxv1.Priority_PRIORITY_LOW, outboxv1.Priority_PRIORITY_NORMAL, outboxv1.Priority_PRIORITY_HIGH} {
				mail = append(mail, s.Submit(t, harness.Batch{Tenant: tenant, N: perPriority, Priority: p, Clients: 1, Subject: p.String()})...)
			}
			harness.Must(t, "all 60 emails CONNECTOR_DISABLED", 20*time.Second, func() bool {
				c, err := s.Progress(len(mail))
				return err == nil && c[disabled] == len(mail)
			})

			relay.Proxy.Hang(true)
			requeued := s.SetConnectorEnabled(t, tenant, "default", true)
			t.Logf("requeued by the enable calls, one per replica: %v", requeued)
			harness.Must(t, "no email left CONNECTOR_DISABLED", 10*time.Second, func() bool {
				c, err := s.Progress(len(mail))
				return err == nil && c[disabled] == 0
			})
			relay.Proxy.Hang(false)
			harness.Must(t, "all 60 at the relay", 30*time.Second, func() bool { return relay.Distinct() >= len(mail) })

			prio := map[string]outboxv1.Priority{}
			for _, m := range mail {
				prio[m.MessageID] = m.Priority
			}
			var order []outboxv1.Priority
			seen := map[string]bool{}
			for _, a := range relay.Arrivals() {
				if !seen[a.MessageID] {
					seen[a.MessageID] = true
					order = append(order, prio[a.MessageID])
				}
			}
			t.Logf("order at the relay: %s", priorityString(order))
			checkPriorityOrder(t, order, replicas == 1)
		})
	}
}

// checkPriorityOrder asserts on the arrival order: every HIGH before every LOW, the mean
// positions in priority order, and with strict every HIGH before every NORMAL and every NORMAL
// before every LOW.
func checkPriorityOrder(t *testing.T, order []outboxv1.Priority, strict bool) {
	t.Helper()
	first, last := map[outboxv1.Priority]int{}, map[outboxv1.Priority]int{}
	sum, n := map[outboxv1.Priority]float64{}, map[outboxv1.Priority]float64{}
	for i, p := range order {
		if _, ok := first[p]; !ok {
			first[p] = i
		}
		last[p] = i
		sum[p] += float64(i)
		n[p]++
	}
	high, normal, low := outboxv1.Priority_PRIORITY_HIGH, outboxv1.Priority_PRIORITY_NORMAL, outboxv1.Priority_PRIORITY_LOW
	mean := func(p outboxv1.Priority) float64 {
		if n[p] == 0 {
			return math.NaN()
		}
		return sum[p] / n[p]
	}
	t.Logf("mean positions: HIGH %.1f, NORMAL %.1f, LOW %.1f", mean(high), mean(normal), mean(low))
	if !(mean(high) < mean(normal) && mean(normal) < mean(low)) {
		t.Errorf("mean positions HIGH %.1f, NORMAL %.1f, LOW %.1f; want HIGH < NORMAL < LOW", mean(high), mean(normal), mean(low))
	}
	before := func(a, b outboxv1.Priority) {
		if n[a] > 0 && n[b] > 0 && last[a] > first[b] {
			t.Errorf("a %s email arrived at position %d, after a %s one at %d; want every %s before every %s",
				a, last[a], b, first[b], a, b)
		}
	}
	before(high, low)
	if strict {
		before(high, normal)
		before(normal, low)
	}
}

func priorityString(order []outboxv1.Priority) string {
	var b strings.Builder
	for _, p := range order {
		b.WriteByte("?HNL"[min(int(p), 3)])
	}
	return b.String()
}
