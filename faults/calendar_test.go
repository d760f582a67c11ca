package faults_test

import (
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
)

// The calendar's scenarios (issue 17): a secretary (the seeded user) books appointments and
// deadlines for a lawyer, changes every third and cancels every seventh, while the lawyer's
// agent drops mid-delivery or the CalDAV server the lawyer's entries are pushed into crashes.
// Each ends with CheckCalendar: every entry at its target exactly once at its latest revision,
// a redelivery only where a dropped connection accounts for it, the queues empty, nothing dead,
// and the suite's Check.

// TestCalendarAgentDropsMidDelivery: the lawyer's agent connects to a backlog, takes a batch
// of deliveries, writes them into its calendar and dies before acknowledging them (its TCP
// connection closed, as for a killed process) — three times, the second time after
// acknowledging half of the batch — while the secretary goes on booking. The next connection
// gets again what was not acknowledged; in the end the agent's calendar holds every entry at
// its latest revision, and every revision it received twice was first received on a connection
// that died.
func TestCalendarAgentDropsMidDelivery(t *testing.T) {
	s := harness.Start(t, harness.Options{Calendar: true})
	s.Describe("calendar entries, not emails: 40 booked for a lawyer before the agent connects, 80 more at 10/s while it drops (every 3rd changed, every 7th cancelled)",
		"the lawyer's agent takes 10 deliveries and dies before acknowledging (TCP closed), 3 times, once after acknowledging 5")
	c := s.CalendarOf(t, tenant)
	c.AddLawyer(t, "huber")

	backlog := c.StartLoad([]string{"huber"}, "vor", 40, 10*time.Millisecond)
	if !backlog.Wait(2 * time.Minute) {
		t.Fatalf("the backlog was not booked within 2m (%d of 40)", backlog.Booked())
	}
	if errs := backlog.Stop(); len(errs) > 0 {
		t.Fatalf("booking the backlog: %v", errs)
	}

	a := c.NewAgent("huber")
	live := c.StartLoad([]string{"huber"}, "live", 80, 100*time.Millisecond)
	for round := range 3 {
		conn := a.Connect(t)
		ds, err := conn.Take(10, 30*time.Second)
		if err != nil {
			t.Fatalf("round %d: %v", round+1, err)
		}
		if round == 1 {
			if err := conn.Ack(ds[:5]...); err != nil {
				t.Fatalf("round %d: ack: %v", round+1, err)
			}
		}
		conn.Die()
	}
	conn := a.Connect(t)
	s.RecoverFrom(time.Now())
	conn.Serve()
	if !live.Wait(2 * time.Minute) {
		t.Errorf("the load did not book its entries within 2m (%d of 80)", live.Booked())
	}
	s.RecoverFrom(time.Now()) // the load outlasts the fault: recovery counts from its last booking
	if errs := live.Stop(); len(errs) > 0 {
		t.Errorf("booking under the fault: %d calls failed, e.g. %v", len(errs), errs[0])
	}
	c.CheckCalendar(t, harness.CalendarExpect{Open: []*harness.AgentConn{conn}})
	if a.Received() == 0 {
		t.Error("the agent received nothing")
	}
}

// TestCalendarAgentReplacedWhileHung: the agent's connection hangs mid-delivery — it took 10
// deliveries and acknowledged 3, then nothing the calendar sends arrives any more, while the
// calendar still sees the stream alive (the agent's heartbeats and acks get through) — and the
// agent connects anew past it, twice, while the secretary books. The new stream replaces the
// hung one (which the calendar ends with ABORTED, unheard), its acks are fenced off, and the
// new stream delivers again what was not acknowledged. In the end the agent's calendar holds
// every entry at its latest revision.
func TestCalendarAgentReplacedWhileHung(t *testing.T) {
	s := harness.Start(t, harness.Options{Calendar: true})
	s.Describe("calendar entries, not emails: 40 booked for a lawyer before the agent connects, 80 more at 10/s meanwhile (every 3rd changed, every 7th cancelled)",
		"the agent's connection hangs after it took 10 deliveries and acknowledged 3; the agent connects anew past it (the old stream replaced), twice")
	c := s.CalendarOf(t, tenant)
	c.AddLawyer(t, "huber")
	backlog := c.StartLoad([]string{"huber"}, "vor", 40, 10*time.Millisecond)
	if !backlog.Wait(2 * time.Minute) {
		t.Fatalf("the backlog was not booked within 2m (%d of 40)", backlog.Booked())
	}
	if errs := backlog.Stop(); len(errs) > 0 {
		t.Fatalf("booking the backlog: %v", errs)
	}

	a := c.NewAgent("huber")
	live := c.StartLoad([]string{"huber"}, "live", 80, 100*time.Millisecond)
	old := a.ConnectProxied(t)
	for round := range 2 {
		ds, err := old.Take(10, 30*time.Second)
		if err != nil {
			t.Fatalf("round %d: %v", round+1, err)
		}
		if err := old.Ack(ds[:3]...); err != nil {
			t.Fatalf("round %d: ack: %v", round+1, err)
		}
		old.Proxy().Hang(true)
		next := a.ConnectProxied(t) // replaces the hung stream, which the agent then gives up
		old.Die()
		old = next
	}
	s.RecoverFrom(time.Now())
	old.Serve()
	if !live.Wait(2 * time.Minute) {
		t.Errorf("the load did not book its entries within 2m (%d of 80)", live.Booked())
	}
	s.RecoverFrom(time.Now()) // the load outlasts the fault: recovery counts from its last booking
	if errs := live.Stop(); len(errs) > 0 {
		t.Errorf("booking under the fault: %d calls failed, e.g. %v", len(errs), errs[0])
	}
	c.CheckCalendar(t, harness.CalendarExpect{Open: []*harness.AgentConn{old}})
}

// TestCalendarCalDAVServerKilled: the lawyer's entries are pushed into Radicale (server-side
// push) while the secretary books; Radicale is SIGKILLed in the middle of it, stays away for
// 10 s while booking goes on, and is restarted on the same port and storage. Every entry ends
// in the CalDAV calendar exactly once with its latest revision (cancelled appointments gone,
// cancelled deadlines kept as cancelled), the pending queue drains to zero and nothing is dead.
// The push retries are shortened (500ms, 1s, 2s, 2s, ... up to 40 attempts) so the scenario
// does not wait out production's backoff.
func TestCalendarCalDAVServerKilled(t *testing.T) {
	const down = 10 * time.Second
	dav := harness.StartCalDAV(t, "anwalt")
	env := dav.Env(tenant)
	env["CALENDAR_PUSH_RETRY"] = "500ms,1s,2s"
	env["CALENDAR_PUSH_MAX_ATTEMPTS"] = "40"
	env["CALENDAR_SYNC_LOG_MAX_LINES"] = "100000" // every line kept, to show the retries
	s := harness.Start(t, harness.Options{Calendar: true, CalendarEnv: env})
	s.Describe("calendar entries, not emails: 200 booked for a lawyer in SERVER_PUSH mode at ~13/s (every 3rd changed, every 7th cancelled), pushed to Radicale",
		"the CalDAV server (Radicale) SIGKILLed mid-push, restarted on its storage after 10s")
	c := s.CalendarOf(t, tenant)
	c.AddLawyer(t, "anwalt")
	c.UsePush(t, "anwalt", dav)

	load := c.StartLoad([]string{"anwalt"}, "frist", 200, 75*time.Millisecond)
	harness.Must(t, "20 entries pushed before the kill", time.Minute, func() bool {
		objs, err := dav.Objects("anwalt")
		return err == nil && len(objs) >= 20
	})
	dav.Kill()
	<-time.After(down) // the outage: the load goes on meanwhile
	dav.Restart(t)
	s.RecoverFrom(time.Now())
	if !load.Wait(2 * time.Minute) {
		t.Errorf("the load did not book its entries within 2m (%d of 200)", load.Booked())
	}
	s.RecoverFrom(time.Now()) // the load outlasts the fault: recovery counts from its last booking
	if errs := load.Stop(); len(errs) > 0 {
		t.Errorf("booking under the fault: %d calls failed, e.g. %v", len(errs), errs[0])
	}
	c.CheckCalendar(t, harness.CalendarExpect{Within: 90 * time.Second})
	if log := c.SyncLogActions(t, "anwalt"); log["RETRY"] == 0 {
		t.Errorf("no push was retried (sync log %v): the fault was not felt", log)
	} else {
		t.Logf("sync log of anwalt: %v", log)
	}
}

// TestCalendarKilledMidPush: the calendar process itself is SIGKILLed while it pushes a
// lawyer's entries into Radicale and while the secretary books (her calls are repeated while
// the calendar is away; a create is idempotent by entry id), and restarted. The deliveries it
// had claimed come due again when their lease (5 s here) runs out; every entry ends in the
// CalDAV calendar exactly once at its latest revision, nothing pending, nothing dead.
func TestCalendarKilledMidPush(t *testing.T) {
	dav := harness.StartCalDAV(t, "anwalt")
	env := dav.Env(tenant)
	env["CALENDAR_PUSH_RETRY"] = "500ms,1s,2s"
	env["CALENDAR_PUSH_MAX_ATTEMPTS"] = "40"
	env["CALENDAR_PUSH_TIMEOUT"] = "2s"
	env["CALENDAR_PUSH_LEASE"] = "5s"
	s := harness.Start(t, harness.Options{Calendar: true, CalendarEnv: env})
	s.Describe("calendar entries, not emails: 150 booked for a lawyer in SERVER_PUSH mode at ~13/s (every 3rd changed, every 7th cancelled), pushed to Radicale; push lease 5s",
		"the calendar process SIGKILLed mid-push, restarted at once")
	c := s.CalendarOf(t, tenant)
	c.AddLawyer(t, "anwalt")
	c.UsePush(t, "anwalt", dav)

	load := c.StartLoad([]string{"anwalt"}, "termin", 150, 75*time.Millisecond)
	harness.Must(t, "20 entries pushed before the kill", time.Minute, func() bool {
		objs, err := dav.Objects("anwalt")
		return err == nil && len(objs) >= 20
	})
	s.Calendar.Kill()
	s.Calendar.Restart(t)
	s.RecoverFrom(time.Now())
	if !load.Wait(3 * time.Minute) {
		t.Errorf("the load did not book its entries within 3m (%d of 150)", load.Booked())
	}
	s.RecoverFrom(time.Now()) // the load outlasts the fault: recovery counts from its last booking
	if errs := load.Stop(); len(errs) > 0 {
		t.Errorf("booking under the fault: %d calls failed, e.g. %v", len(errs), errs[0])
	}
	c.CheckCalendar(t, harness.CalendarExpect{Within: 90 * time.Second})
}

// TestCalendarCalDAVAnswersLost: the CalDAV server's answers are lost for 10 s (a proxy holds
// everything it sends; it acts on every request, the calendar never hears back and times out),
// while the secretary books, then (half-way, her booking paused) changes every entry booked so
// far, then books 50 more. So entries
// whose write the server stored without the calendar knowing get a newer revision before the
// retry: its push meets a 412 over our own earlier revision, which must be overwritten, not
// merged as a change made in the calendar (for an appointment that let our older text win and
// undid the newer change; fixed in services/calendar/internal/push, see
// TestCalDAVLostAnswerThenNewRevision). Then the held connections are cut and answers flow again.
func TestCalendarCalDAVAnswersLost(t *testing.T) {
	const lost = 10 * time.Second
	dav := harness.StartCalDAV(t, "anwalt")
	env := dav.Env(tenant)
	env["CALENDAR_PUSH_RETRY"] = "500ms,1s,2s"
	env["CALENDAR_PUSH_MAX_ATTEMPTS"] = "40"
	env["CALENDAR_PUSH_TIMEOUT"] = "1s"
	env["CALENDAR_PUSH_LEASE"] = "5s"
	env["CALENDAR_SYNC_LOG_MAX_LINES"] = "100000" // every line kept, to show the retries
	s := harness.Start(t, harness.Options{Calendar: true, CalendarEnv: env})
	s.Describe("calendar entries, not emails: booked for a lawyer in SERVER_PUSH mode at ~13/s (every 3rd changed, every 7th cancelled) until mid-fault, then every one changed once more, then 50 more; push timeout 1s",
		"the CalDAV server's answers lost for 10s (requests reach it, answers held by a proxy), then the connections cut")
	proxy := dav.Proxy(t)
	c := s.CalendarOf(t, tenant)
	c.AddLawyer(t, "anwalt")
	c.UsePush(t, "anwalt", dav)

	load := c.StartLoad([]string{"anwalt"}, "termin", 500, 75*time.Millisecond)
	harness.Must(t, "20 entries pushed before the fault", time.Minute, func() bool {
		objs, err := dav.Objects("anwalt")
		return err == nil && len(objs) >= 20
	})
	proxy.Hang(true)
	<-time.After(lost / 2) // pushes meanwhile are stored and their answers lost
	if errs := load.Stop(); len(errs) > 0 {
		t.Errorf("booking under the fault: %d calls failed, e.g. %v", len(errs), errs[0])
	}
	// The secretary changes every entry so far (one caller at a time, so the ledger knows which
	// change came last).
	for _, b := range c.Booked() {
		if err := c.Change(b.ID); err != nil {
			t.Errorf("change %s: %v", b.ID, err)
		}
	}
	more := c.StartLoad([]string{"anwalt"}, "nach", 50, 75*time.Millisecond)
	<-time.After(lost / 2)
	proxy.CutAll() // the held answers are dropped, never delivered
	proxy.Hang(false)
	if !more.Wait(2 * time.Minute) {
		t.Errorf("the load did not book its entries within 2m (%d of 50)", more.Booked())
	}
	s.RecoverFrom(time.Now()) // the load outlasts the fault: recovery counts from its last booking
	if errs := more.Stop(); len(errs) > 0 {
		t.Errorf("booking after the fault: %d calls failed, e.g. %v", len(errs), errs[0])
	}
	c.CheckCalendar(t, harness.CalendarExpect{Within: 90 * time.Second})
	if log := c.SyncLogActions(t, "anwalt"); log["RETRY"] == 0 {
		t.Errorf("no push was retried (sync log %v): the fault was not felt", log)
	} else {
		t.Logf("sync log of anwalt: %v", log)
	}
}

// TestCalendarKilledWithAgentConnected: the calendar process is SIGKILLed while the lawyer's
// agent applies and acknowledges a stream of deliveries and the secretary books, and restarted.
// The agent's stream breaks; it connects again (Hello with its last acknowledged position) and
// gets what the dead process had not recorded as acknowledged. In the end its calendar holds
// every entry at its latest revision, every repeated delivery first came on the broken stream.
func TestCalendarKilledWithAgentConnected(t *testing.T) {
	s := harness.Start(t, harness.Options{Calendar: true})
	s.Describe("calendar entries, not emails: 120 booked for a lawyer at 10/s (every 3rd changed, every 7th cancelled), the agent connected and acknowledging",
		"the calendar process SIGKILLed with the agent's stream open, restarted at once")
	c := s.CalendarOf(t, tenant)
	c.AddLawyer(t, "huber")
	a := c.NewAgent("huber")
	conn := a.Connect(t)
	conn.Serve()
	load := c.StartLoad([]string{"huber"}, "termin", 120, 100*time.Millisecond)
	harness.Must(t, "30 deliveries before the kill", time.Minute, func() bool { return a.Received() >= 30 })
	s.Calendar.Kill()
	s.Calendar.Restart(t)
	select {
	case <-conn.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the agent's stream did not end within 30s of the calendar's death")
	}
	conn.Die() // what is left of the broken connection
	conn = a.Connect(t)
	conn.Serve()
	s.RecoverFrom(time.Now())
	if !load.Wait(3 * time.Minute) {
		t.Errorf("the load did not book its entries within 3m (%d of 120)", load.Booked())
	}
	s.RecoverFrom(time.Now()) // the load outlasts the fault: recovery counts from its last booking
	if errs := load.Stop(); len(errs) > 0 {
		t.Errorf("booking under the fault: %d calls failed, e.g. %v", len(errs), errs[0])
	}
	c.CheckCalendar(t, harness.CalendarExpect{Open: []*harness.AgentConn{conn}})
}
