// Package faults_test holds the fault suite (issues 12, 16 and 17): the outbox and the services
// around it run as real processes (harness), are killed, stopped and cut off from Redis, NATS and
// their relays as production will be, and each test asserts an invariant of dispatch by counting
// copies per Message-ID at the relay against the ledger's records and attempt histories, never a
// duration. Every test ends with the harness's Check, which asserts the invariants every fault
// must keep (nothing lost, no uncounted duplicate, ledger, events and projections in agreement,
// goroutines back to idle, nothing secret in the logs) and records the test's row of the results
// table (docs/reliability.md). Each test is bounded: a wait that runs out fails the test with the
// figures it saw.
//
// Run: cd faults && go test -race -count=1 ./...   (POSTAMT_BIN=path tests a prebuilt binary;
// POSTAMT_FAULTS_TABLE=path writes the results table there)
package faults_test

import (
	"fmt"
	"math"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

const (
	tenant = "kanzlei"
	// backlogAhead schedules a test's mail a moment after its submission starts, so the
	// dispatchers find it due as one backlog rather than trickling in.
	backlogAhead = 2 * time.Second
)

var (
	sent     = outboxv1.EmailStatus_EMAIL_STATUS_SENT
	sending  = outboxv1.EmailStatus_EMAIL_STATUS_SENDING
	disabled = outboxv1.EmailStatus_EMAIL_STATUS_CONNECTOR_DISABLED
)

// finish ends a scenario whose mail is all to be SENT: the harness's Check (which waits for the
// suite to settle, stops the dispatchers, closes the relays and asserts the invariants of every
// fault: every email SENT and at a relay, every duplicate counted as an UNKNOWN attempt, nothing
// foreign, ledger, events and projections in agreement, goroutines back, clean logs). It returns
// the tally of the ledger against the relays for the test's own assertions.
func finish(t *testing.T, s *harness.Suite, mail []harness.Submitted) harness.Tally {
	t.Helper()
	return s.Check(t, mail, harness.Expect{}).Tally
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
			s.Describe(fmt.Sprintf("backlog of %d, 2 dispatchers, pool %d", tc.n, tc.pool), fmt.Sprintf("relay answers %s late (%s)", tc.delay, tc.name))
			relay := s.NewRelay(t)
			relay.Proxy.SetDelay(tc.delay)
			s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: tc.pool})
			s.RecoverFrom(time.Now().Add(backlogAhead))
			mail := s.Submit(t, harness.Batch{Tenant: tenant, N: tc.n, SendAt: time.Now().Add(backlogAhead)})

			counts, settled := s.WaitSettled(tc.n, tc.within)
			t.Logf("after waiting up to %s: %s; %d messages at the relay", tc.within, counts, len(relay.Arrivals()))
			tally := finish(t, s, mail)
			if !settled {
				t.Errorf("not every email settled within %s: %s", tc.within, counts)
			}
			if len(tally.NotOnce) > 0 {
				t.Errorf("%d emails did not reach the relay exactly once (copies per email %v), e.g. %s",
					len(tally.NotOnce), tally.CopiesHist, harness.Some(tally.NotOnce, 5))
			}
			if len(tally.AttemptsNot1) > 0 {
				t.Errorf("%d emails took other than 1 attempt, e.g. %s", len(tally.AttemptsNot1), harness.Some(tally.AttemptsNot1, 5))
			}
		})
	}
}

// TestRedisKilledDuringDelivery (issue 12, "A Redis outage duplicates what was sent during it"):
// Redis is SIGKILLed for 5 s while two replicas deliver a backlog and users go on with a mixed
// load (mixedLoad), then restarted on its append-only file. Every email is eventually SENT (the
// load's cancelled mail CANCELLED and never at the relay, its refused mail FAILED unless it was
// retried), nothing is left SENDING, scheduled mail is not sent early, and a Message-ID the
// relay got twice is counted (an UNKNOWN attempt per extra copy): a send whose result could not
// be recorded is recorded later, not sent again unannounced. The lease is 30 s, so that mail
// whose result was lost comes due again (and would be sent again) within the test's wait; each
// replica's share takes about 10 s to send, well within it.
func TestRedisKilledDuringDelivery(t *testing.T) {
	const (
		n      = 800
		outage = 5 * time.Second
		within = 60 * time.Second
	)
	s := harness.Start(t, harness.Options{Dispatchers: 2, OutboxEnv: map[string]string{"OUTBOX_LEASE": "30s", "OUTBOX_SMTP_SUBMIT_TIMEOUT": "20s"}})
	backlog := fmt.Sprintf("backlog of %d, 2 dispatchers, relay 100 ms", n)
	fault := fmt.Sprintf("Redis SIGKILLed for %s mid-delivery, restarted on its AOF", outage)
	s.Describe(backlog, fault)
	relay := s.NewRelay(t)
	relay.Proxy.SetDelay(100 * time.Millisecond)
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 8})
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: n, SendAt: time.Now().Add(backlogAhead)})
	load := mixedLoad(t, s, relay)

	harness.Must(t, "a quarter of the mail at the relay", 40*time.Second, func() bool { return relay.Distinct() >= n/4 })
	s.Redis.Kill()
	atKill := relay.Distinct()
	// The outage's length is the fault's parameter, not a wait for something to happen.
	<-time.After(outage)
	s.Redis.Restart(t)
	s.RecoverFrom(time.Now())
	t.Logf("Redis down for %s with %d of %d emails at the relay; %d arrived during the outage", outage, atKill, n, relay.Distinct()-atKill)
	all := endMixedLoad(t, s, load, mail, backlog, fault)

	counts, settled := s.WaitSettled(len(all), within)
	t.Logf("%s after Redis came back: %s", within, counts)
	s.Check(t, all, harness.Expect{Load: load})
	if !settled {
		t.Errorf("not settled within %s of Redis's restart: %s (SENDING %d)", within, counts, counts[sending])
	}
}

// TestReplicaKilledMidDelivery (issue 12, "Back within seconds", P9; issue 16, "N outbox
// replicas share the partitions"): one of three replicas is SIGKILLed while it delivers a
// backlog through a slow relay and users go on with a mixed load (mixedLoad). The two survivors
// take its partitions and its mail and deliver everything (the load's mail as it is to end:
// cancelled, FAILED unless retried, scheduled not early), and every duplicate the crash caused
// is counted. How long after the kill the mail held at the kill
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
	backlog, fault := fmt.Sprintf("backlog of %d, 3 dispatchers, relay 300 ms", n), "a dispatcher SIGKILLed mid-delivery, not restarted"
	s.Describe(backlog, fault)
	relay := s.NewRelay(t)
	relay.Proxy.SetDelay(300 * time.Millisecond)
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 8})
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: n, SendAt: time.Now().Add(backlogAhead)})
	load := mixedLoad(t, s, relay)

	harness.Must(t, "a quarter of the mail at the relay", 40*time.Second, func() bool { return relay.Distinct() >= n/4 })
	victim := s.Dispatchers[0]
	victim.Kill()
	killedAt := time.Now()
	s.RecoverFrom(killedAt)
	// The mail claimed when the replica died: the victim's, and whatever the survivor held.
	held := map[string]bool{}
	for _, id := range s.IDs(t, tenant, sending) {
		held[id] = true
	}
	atKill := relay.Distinct()
	all := endMixedLoad(t, s, load, mail, backlog, fault)

	counts, settled := s.WaitSettled(len(all), within)
	logRecovery(t, mail, held, relay.Arrivals(), killedAt, time.Now(), atKill)
	s.Check(t, all, harness.Expect{Load: load})
	if !settled {
		t.Errorf("the survivors did not deliver everything within %s of the kill: %s", within, counts)
	}
}

// mixedLoad starts the mixed load of the scenarios that hold one beside a backlog: two users
// each submitting five HIGH emails a second (so they pass the NORMAL backlog, as a person's mail
// passes a bulk mailing), every third scheduled 3 s ahead, every fourth scheduled and cancelled
// right away, every fifth to a recipient the relay refuses with 550 until the load retries it
// from FAILED; submits are retried with their idempotency key while the outbox is unavailable.
func mixedLoad(t *testing.T, s *harness.Suite, relay *harness.Relay) *harness.Load {
	t.Helper()
	load := s.StartLoad(harness.LoadSpec{
		Tenant: tenant, Clients: 2, Interval: 200 * time.Millisecond, Subject: "Mixed",
		Priority: outboxv1.Priority_PRIORITY_HIGH, RetryFor: 60 * time.Second,
		ScheduleEvery: 3, CancelEvery: 4, RetryEvery: 5, Relay: relay,
	})
	t.Cleanup(func() { load.Stop() })
	return load
}

// endMixedLoad lets the mixed load run on after the fault until it has cancelled and retried a
// few emails since (bounded; the waits are for the load to have met every kind of mail, not a
// timing), stops it, describes the row with it, and returns the backlog and the load's mail
// together.
func endMixedLoad(t *testing.T, s *harness.Suite, load *harness.Load, backlog []harness.Submitted, backlogDesc, fault string) []harness.Submitted {
	t.Helper()
	_, cancelled0, _, retried0 := load.Mixed()
	if !harness.Eventually(60*time.Second, func() bool {
		_, cancelled, _, retried := load.Mixed()
		return cancelled >= cancelled0+2 && retried >= retried0+2
	}) {
		scheduled, cancelled, refused, retried := load.Mixed()
		t.Errorf("the mixed load did not cancel and retry two more emails within 60s of the fault: %d scheduled, %d cancelled, %d refused, %d retried", scheduled, cancelled, refused, retried)
	}
	mail := load.Stop()
	s.Describe(backlogDesc+"; "+load.Describe(), fault)
	t.Logf("the mixed load: %s; %d submits refused", load.Describe(), load.Refusals())
	return append(append([]harness.Submitted(nil), backlog...), mail...)
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
	s.Describe(fmt.Sprintf("backlog of %d, 2 dispatchers, pool 4, relay 300 ms", n), "a dispatcher SIGTERMed with sends in flight")
	relay := s.NewRelay(t)
	relay.Proxy.SetDelay(300 * time.Millisecond)
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 4})
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: n, SendAt: time.Now().Add(backlogAhead)})

	// Deliveries under way and more claimed than the pools hold: a backlog in both replicas.
	harness.Must(t, "20 emails at the relay", 40*time.Second, func() bool { return relay.Distinct() >= 20 })
	victim := s.Dispatchers[0]
	exit := victim.Term(exitBound)
	s.RecoverFrom(time.Now())
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
	finish(t, s, mail)
	if !settled {
		t.Errorf("the remaining replica did not deliver the rest within %s: %s", within, counts)
	}
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
	s.Describe(fmt.Sprintf("%d emails to relay A, %d to relay B from 2 tenants, 1 dispatcher", nA, 2*nB), "relay A hangs (no reply at all), then answers again")
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
	// A's relay answers again: its mail is delivered too (its conversations go on, or time out
	// and are retried).
	relayA.Proxy.Hang(false)
	s.RecoverFrom(time.Now())
	finish(t, s, append(mailA, mailB...))
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
			s.Describe(fmt.Sprintf("%d emails of each priority, pool 1, dispatchers: %d", perPriority, replicas), "connector disabled, then re-enabled while the relay is held")
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
			s.RecoverFrom(time.Now())
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
			finish(t, s, mail)
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

// TestDispatcherKilledInData (issue 17): the relay takes each email's body and then never answers
// the final dot, so the dispatcher's conversations all wait in DATA; the dispatcher is SIGKILLed
// there and started again, and the relay answers from then on. The mail the dead dispatcher held
// comes due again when its lease runs out, is recorded with an UNKNOWN attempt (the dead worker
// may have delivered it) and sent again: every email is SENT and at the relay exactly once (the
// relay kept none of the hung messages), nothing is lost.
func TestDispatcherKilledInData(t *testing.T) {
	const n = 24
	s := harness.Start(t, harness.Options{})
	s.Describe(fmt.Sprintf("%d emails, 1 dispatcher, pool 4", n), "relay hangs after the final dot; the dispatcher SIGKILLed in DATA, then restarted")
	relay := s.NewRelay(t)
	var hanging atomic.Bool
	hanging.Store(true)
	seen := relay.Script(smtptest.StageData, func(string, int) smtptest.Behavior {
		if hanging.Load() {
			return smtptest.Hang
		}
		return smtptest.Accept
	})
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 4})
	mail := s.Submit(t, harness.Batch{Tenant: tenant, N: n})

	harness.Must(t, "four conversations waiting for the reply to DATA", 30*time.Second, func() bool { return seen.Total() >= 4 })
	held := s.IDs(t, tenant, sending)
	inData := seen.Total()
	victim := s.Dispatchers[0]
	victim.Kill()
	hanging.Store(false)
	victim.Restart(t)
	s.RecoverFrom(time.Now())
	t.Logf("killed %s with %d conversations in DATA and %d emails SENDING; restarted it", victim.Name, inData, len(held))

	res := finish(t, s, mail)
	if len(res.NotOnce) > 0 {
		t.Errorf("%d emails did not reach the relay exactly once, e.g. %s", len(res.NotOnce), harness.Some(res.NotOnce, 5))
	}
	if res.Unknown < 4 {
		t.Errorf("%d UNKNOWN attempts, want one at least for each of the 4 conversations the kill cut in DATA", res.Unknown)
	}
}

// TestIdempotencyKeyAcrossAPIRestart (issue 17): clients submit with idempotency keys, retrying
// each submit with its key while the outbox answers UNAVAILABLE, as the API asks; the API replica
// is SIGKILLed in the middle and started again, so some submits die with it (stored or not) and
// are retried against the new process. Then every key is submitted once more, as a client that
// lost its answers would. Each key names one email: the second round returns the first round's
// ids, and the relay receives exactly one message per key and none that no answer named.
func TestIdempotencyKeyAcrossAPIRestart(t *testing.T) {
	const n = 200
	s := harness.Start(t, harness.Options{})
	s.Describe(fmt.Sprintf("%d keyed submits from 8 clients, retried while UNAVAILABLE; then all again", n), "the API replica SIGKILLed mid-submission, restarted")
	relay := s.NewRelay(t)
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 8})
	var retried atomic.Int64
	batch := harness.Batch{Tenant: tenant, N: n, Clients: 8, Subject: "Keyed", RetryFor: 30 * time.Second, Retried: &retried}

	type submitted struct {
		mail []harness.Submitted
		err  error
	}
	got := make(chan submitted, 1)
	go func() {
		mail, err := s.TrySubmit(batch)
		got <- submitted{mail, err}
	}()
	harness.Must(t, "some of the keyed emails stored", 30*time.Second, func() bool {
		c, err := s.StatusCounts(tenant)
		return err == nil && c.Total()+relay.Distinct() >= n/4
	})
	s.API.Kill()
	s.API.Restart(t)
	s.RecoverFrom(time.Now())
	var first []harness.Submitted
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("a keyed submit was refused for good across the restart: %v", r.err)
		}
		first = r.mail
	case <-time.After(60 * time.Second):
		t.Fatal("the keyed submits did not all complete within 60s of the restart")
	}
	again := s.Submit(t, batch)
	t.Logf("%d submits retried after UNAVAILABLE", retried.Load())
	var differ []string
	for i := range first {
		if first[i].ID != again[i].ID {
			differ = append(differ, fmt.Sprintf("key %d: %s, then %s", i, first[i].ID, again[i].ID))
		}
	}
	if len(differ) > 0 {
		t.Errorf("%d keys named another email the second time, e.g. %s", len(differ), harness.Some(differ, 5))
	}
	if ids := distinctIDs(first); ids != n {
		t.Errorf("%d keys answered with %d distinct emails", n, ids)
	}
	res := finish(t, s, first)
	if len(res.NotOnce) > 0 || res.Foreign > 0 {
		t.Errorf("%d emails not at the relay exactly once, %d messages no answer named (an email created twice for one key)", len(res.NotOnce), res.Foreign)
	}
}

func distinctIDs(mail []harness.Submitted) int {
	ids := map[string]bool{}
	for _, m := range mail {
		ids[m.ID] = true
	}
	return len(ids)
}
