package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/redisx"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// The outbox's JetStream stream and the subject of EmailSent, which the sent view and the
// tracker consume; Check counts EmailSent per email in it.
const (
	OutboxStream     = "POSTAMT_OUTBOX"
	SubjectEmailSent = "postamt.outbox.v1.EmailSent"
)

// DefaultSettle bounds Settle's wait when Expect names no bound: the ledger final, the events
// published and consumed, the projections in agreement and the goroutines back, after the fault
// healed.
const DefaultSettle = 60 * time.Second

// Goroutine tolerance: once settled, a process may run up to its idle level (measured before the
// load) plus max(GoroutineSlack, GoroutineSlackRatio × idle). Connections opened by the load
// (SMTP pools, gRPC streams) and the runtime's helpers account for a few; a leak per email or
// per retry is hundreds after any scenario.
const (
	GoroutineSlack      = 20
	GoroutineSlackRatio = 0.25
)

// settlePoll is the pause between two looks at the projections while settling: reading the sent
// view and the tracker costs a page of gRPC calls, too much to repeat every pollInterval.
const settlePoll = 250 * time.Millisecond

// stopWait bounds how long Check lets a dispatcher take to exit after SIGTERM before it is killed
// (what it sent is counted anyway).
const stopWait = 15 * time.Second

// Expect says how a scenario's mail is to end.
type Expect struct {
	// Status is the final status of each email that is not to end SENT, by email id (FAILED
	// after a relay's 550, say). Every other email is to end SENT.
	Status map[string]outboxv1.EmailStatus
	// Within bounds Settle; 0 means DefaultSettle.
	Within time.Duration
	// Load, when the mail came from one, has its refused submits counted in the row; a mixed
	// load's expectations (Load.Expect: CANCELLED, FAILED) apply to its emails that Status does
	// not name.
	Load *Load
}

// statuses merges what Status and the load expect.
func (e Expect) statuses() map[string]outboxv1.EmailStatus {
	out := map[string]outboxv1.EmailStatus{}
	if e.Load != nil {
		maps.Copy(out, e.Load.Expect())
	}
	maps.Copy(out, e.Status)
	return out
}

// expectSENT is the status of an email neither Status nor the load names.
const expectSENT = outboxv1.EmailStatus_EMAIL_STATUS_SENT

func wantStatus(expected map[string]outboxv1.EmailStatus, id string) outboxv1.EmailStatus {
	if st, ok := expected[id]; ok {
		return st
	}
	return expectSENT
}

// Settled is what Settle saw.
type Settled struct {
	// At is when every condition held; zero when one still did not at the bound.
	At time.Time
	// Emails are the records of the mail read once the ledger had settled, by id; nil when it
	// did not.
	Emails map[string]*outboxv1.Email
	// Pending says what did not hold at the bound, one entry per condition.
	Pending []string
}

// Settle waits, up to within, until the suite is at rest after a scenario's fault: every email of
// mail out of the dispatchers' hands (SENT, FAILED or CANCELLED), every service's Redis event
// streams empty (the relays published everything), every durable JetStream consumer with nothing
// pending, the sent view of each tenant holding exactly the Message-IDs of its SENT mail, the
// tracker tracking every SENT email that regards a record (when it runs), and every running
// process back to its idle number of goroutines. It fails nothing: Check states what did not
// hold.
func (s *Suite) Settle(tb testing.TB, mail []Submitted, within time.Duration) Settled {
	tb.Helper()
	begin := time.Now()
	deadline := begin.Add(within)
	var st Settled
	tenants := tenantsOf(mail)
	var ledger string
	settled := len(mail) == 0 || Eventually(within, func() bool {
		c, err := s.Progress(len(mail), tenants...)
		if err != nil {
			ledger = err.Error()
			return false
		}
		ledger = c.String()
		return c.Unsettled() == 0
	})
	if !settled {
		st.Pending = append(st.Pending, "the ledger: emails still on their way "+ledger)
		return st
	}
	ledgerAt := time.Now()
	st.Emails = s.Emails(tb, mail)
	conds := []struct {
		name string
		why  func() string // "" when the condition holds
	}{
		{"events", func() string { return s.unpublished(tb) }},
		{"consumers", func() string { return errString(s.ConsumersBehind(tb)) }},
		{"sent view", func() string { return s.viewDisagrees(mail, st.Emails, tenants) }},
		{"tracker", func() string { return s.trackerDisagrees(mail, st.Emails) }},
		{"goroutines", func() string { return s.goroutinesAbove(tb) }},
	}
	why := make([]string, len(conds))
	since := make([]time.Time, len(conds)) // when each condition last began to hold
	for {
		ok := true
		for i, c := range conds {
			// A condition that held is looked at again: a consumer that caught up may be behind
			// again after a later redelivery, and goroutines go up and down.
			why[i] = c.why()
			switch {
			case why[i] != "":
				since[i] = time.Time{}
			case since[i].IsZero():
				since[i] = time.Now()
			}
			ok = ok && why[i] == ""
		}
		if ok {
			st.At = time.Now()
			parts := []string{fmt.Sprintf("ledger %s", ledgerAt.Sub(begin).Round(10*time.Millisecond))}
			for i, c := range conds {
				parts = append(parts, fmt.Sprintf("%s %s", c.name, since[i].Sub(begin).Round(10*time.Millisecond)))
			}
			tb.Logf("settled %s after Settle began; each condition held from: %s", st.At.Sub(begin).Round(10*time.Millisecond), strings.Join(parts, ", "))
			return st
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(settlePoll) // polling other processes; there is no event to wait on
	}
	for i, c := range conds {
		if why[i] != "" {
			st.Pending = append(st.Pending, c.name+": "+why[i])
		}
	}
	return st
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func tenantsOf(mail []Submitted) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range mail {
		if !seen[m.Tenant] {
			seen[m.Tenant] = true
			out = append(out, m.Tenant)
		}
	}
	return out
}

// unpublished says which services' Redis event streams still hold entries, "" when none does.
func (s *Suite) unpublished(tb testing.TB) string {
	left, err := s.UnpublishedEvents(tb)
	if err != nil {
		return err.Error()
	}
	if len(left) == 0 {
		return ""
	}
	return fmt.Sprintf("entries left in the Redis event streams (a relay not publishing): %v", left)
}

// viewDisagrees compares each tenant's sent view with the SENT mail of that tenant.
func (s *Suite) viewDisagrees(mail []Submitted, emails map[string]*outboxv1.Email, tenants []string) string {
	var out []string
	for _, t := range tenants {
		view, err := s.SentView(t)
		if err != nil {
			return err.Error()
		}
		want := map[string]bool{}
		var missing []string
		for _, m := range mail {
			if m.Tenant != t || emails[m.ID].GetStatus() != outboxv1.EmailStatus_EMAIL_STATUS_SENT {
				continue
			}
			want[m.MessageID] = true
			if !view[m.MessageID] {
				missing = append(missing, m.MessageID)
			}
		}
		var extra []string
		for id := range view {
			if !want[id] {
				extra = append(extra, id)
			}
		}
		if len(missing)+len(extra) > 0 {
			out = append(out, fmt.Sprintf("%s: %d SENT emails missing from the sent view (e.g. %s), %d in it that are not SENT or not submitted (e.g. %s)",
				t, len(missing), Some(missing, 3), len(extra), Some(extra, 3)))
		}
	}
	return strings.Join(out, "; ")
}

// trackerDisagrees lists SENT emails regarding a record that the tracker has not tracked, when
// the tracker runs.
func (s *Suite) trackerDisagrees(mail []Submitted, emails map[string]*outboxv1.Email) string {
	if s.Tracker == nil {
		return ""
	}
	var regarding []Submitted
	for _, m := range mail {
		if m.Regarding != "" && emails[m.ID].GetStatus() == outboxv1.EmailStatus_EMAIL_STATUS_SENT {
			regarding = append(regarding, m)
		}
	}
	if len(regarding) == 0 {
		return ""
	}
	un, err := s.Untracked(regarding)
	if err != nil {
		return err.Error()
	}
	if len(un) == 0 {
		return ""
	}
	ids := make([]string, len(un))
	for i, m := range un {
		ids[i] = m.MessageID
	}
	return fmt.Sprintf("%d of %d SENT emails regarding a record not tracked (e.g. %s; the tracker: %s)", len(un), len(regarding), Some(ids, 3), s.Explain(un[0].Tenant, un[0].MessageID))
}

// MarkIdle measures every running process's number of goroutines as its idle level, which
// Settle waits to see again after the load. Start measures it once every process serves; call
// it again after a setup that starts long-lived work of its own.
func (s *Suite) MarkIdle(tb testing.TB) {
	tb.Helper()
	idle := map[string]float64{}
	for _, p := range s.processes() {
		if !p.Running() {
			continue
		}
		n, err := p.Goroutines()
		if err != nil {
			tb.Fatalf("harness: %s: %v", p.Name, err)
		}
		idle[p.Name] = n
	}
	s.mu.Lock()
	s.idle = idle
	s.mu.Unlock()
}

// Goroutines is the process's go_goroutines now.
func (p *Process) Goroutines() (float64, error) {
	m, err := p.scrape()
	if err != nil {
		return 0, fmt.Errorf("/metrics: %w", err)
	}
	return m.Sum("go_goroutines", nil), nil
}

// goroutineLimit is the most goroutines a process whose idle level is idle may run once settled.
func goroutineLimit(idle float64) float64 {
	return idle + max(GoroutineSlack, GoroutineSlackRatio*idle)
}

// goroutinesAbove lists the running processes above their goroutine limit, "" when none is.
func (s *Suite) goroutinesAbove(tb testing.TB) string {
	s.mu.Lock()
	idle := maps.Clone(s.idle)
	s.mu.Unlock()
	var out []string
	for _, p := range s.processes() {
		base, ok := idle[p.Name]
		if !ok || !p.Running() {
			continue
		}
		n, err := p.Goroutines()
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", p.Name, err))
			continue
		}
		if n > goroutineLimit(base) {
			out = append(out, fmt.Sprintf("%s runs %.0f goroutines, idle it ran %.0f (at most %.0f allowed)", p.Name, n, base, goroutineLimit(base)))
		}
	}
	return strings.Join(out, "; ")
}

// goroutineLevels lists each running process's idle and current number of goroutines.
func (s *Suite) goroutineLevels() string {
	s.mu.Lock()
	idle := maps.Clone(s.idle)
	s.mu.Unlock()
	var out []string
	for _, p := range s.processes() {
		if !p.Running() {
			continue
		}
		n, err := p.Goroutines()
		if err != nil {
			out = append(out, fmt.Sprintf("%s ?", p.Name))
			continue
		}
		out = append(out, fmt.Sprintf("%s %.0f → %.0f", p.Name, idle[p.Name], n))
	}
	return strings.Join(out, ", ")
}

// GoroutineDump returns the process's goroutines grouped by stack (/debug/pprof/goroutine?debug=1),
// its first lines, for a failure message that shows what did not end.
func (p *Process) GoroutineDump(lines int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.OpsAddr+"/debug/pprof/goroutine?debug=1", nil)
	if err != nil {
		return err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err.Error()
	}
	ls := strings.Split(string(b), "\n")
	return strings.Join(ls[:min(lines, len(ls))], "\n")
}

// JetStream is a JetStream client connected to the NATS server(s) directly, past any proxy, for
// a test that inspects or breaks the streams.
func (s *Suite) JetStream(tb testing.TB) jetstream.JetStream { return s.jetStream(tb) }

func (s *Suite) jetStream(tb testing.TB) jetstream.JetStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.js == nil {
		if s.NATSCluster != nil {
			s.js = s.NATSCluster.JetStream(tb)
		} else {
			s.js = s.NATS.JetStream(tb)
		}
	}
	return s.js
}

// ConsumersBehind returns nil when every durable consumer of every stream has nothing pending: no
// message undelivered and none delivered but unacknowledged.
func (s *Suite) ConsumersBehind(tb testing.TB) error {
	js := s.jetStream(tb)
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

// SentEvents counts the EmailSent events in the outbox's stream per email id.
func (s *Suite) SentEvents(tb testing.TB) (map[string]int, error) {
	js := s.jetStream(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, OutboxStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", OutboxStream, err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(SubjectEmailSent))
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", OutboxStream, err)
	}
	total := info.State.Subjects[SubjectEmailSent]
	out := map[string]int{}
	if total == 0 {
		return out, nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{SubjectEmailSent}})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", OutboxStream, err)
	}
	for n := uint64(0); n < total; {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", OutboxStream, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			var ev outboxv1.EmailSent
			if err := proto.Unmarshal(m.Data(), &ev); err != nil {
				return nil, fmt.Errorf("an EmailSent that does not decode: %w", err)
			}
			out[ev.GetEmailId()]++
		}
		n += uint64(got)
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("read %s: %w", OutboxStream, err)
		}
		if got == 0 && ctx.Err() != nil {
			return nil, fmt.Errorf("read %s: %d of %d EmailSent read: %w", OutboxStream, n, total, ctx.Err())
		}
	}
	return out, nil
}

// UnpublishedEvents counts the entries left in the services' Redis event streams (every key
// ending in :events): a relay deletes an entry once JetStream acknowledged it, so a count that
// stays above zero is a relay that stopped publishing. Every master is scanned on a Redis
// Cluster.
func (s *Suite) UnpublishedEvents(tb testing.TB) (map[string]int64, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb, err := s.redisClient(tb, ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			one := map[string]int64{}
			if err := scanEventStreams(ctx, c, one); err != nil {
				return err
			}
			mu.Lock()
			maps.Copy(out, one)
			mu.Unlock()
			return nil
		})
	} else {
		err = scanEventStreams(ctx, rdb, out)
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// scanEventStreams adds the length of every nonempty stream whose key ends in :events to into.
func scanEventStreams(ctx context.Context, c redis.Cmdable, into map[string]int64) error {
	iter := c.ScanType(ctx, 0, "*:events", 1000, "stream").Iterator()
	for iter.Next(ctx) {
		n, err := c.XLen(ctx, iter.Val()).Result()
		if err != nil {
			return fmt.Errorf("XLEN %s: %w", iter.Val(), err)
		}
		if n > 0 {
			into[iter.Val()] = n
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("scan event streams: %w", err)
	}
	return nil
}

// redisClient is a client of the suite's Redis, whichever kind the URL names, opened at the first
// call and closed at tb's cleanup; it reconnects by itself after a restart.
func (s *Suite) redisClient(tb testing.TB, ctx context.Context) (redis.UniversalClient, error) {
	s.mu.Lock()
	c := s.rdb
	s.mu.Unlock()
	if c != nil {
		return c, nil
	}
	c, err := redisx.Open(ctx, s.redisURL) // not under s.mu: it waits for Redis to answer
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rdb != nil { // opened meanwhile by another caller
		_ = c.Close()
		return s.rdb, nil
	}
	s.rdb = c
	tb.Cleanup(func() { _ = c.Close() })
	return c, nil
}

// Log patterns no process may write: a stack trace (a panic, or a goroutine dump), and anything
// that looks like a JWT (a bearer token, the harness's or a service's own).
var (
	stackRE = regexp.MustCompile(`goroutine \d+ \[|panic:`)
	jwtRE   = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}`)
)

// ScanLogs reads every process's log (across restarts) and lists what no log may hold: stack
// traces, bearer tokens (any JWT; those the harness minted are named so), the AUTH_HS256_SECRET
// value, and the marker every submitted body carries (a body logged). One entry per process and
// kind, with the count and the first line, the secret and tokens in it masked.
func (s *Suite) ScanLogs() []string {
	s.mu.Lock()
	minted := maps.Clone(s.tokens)
	s.mu.Unlock()
	var out []string
	for _, p := range s.processes() {
		type hit struct {
			n     int
			first string
		}
		hits := map[string]*hit{}
		note := func(kind, line string) {
			h := hits[kind]
			if h == nil {
				h = &hit{first: line}
				hits[kind] = h
			}
			h.n++
		}
		for line := range strings.Lines(p.Log()) {
			noteMalformedLine(line, note)
			if stackRE.MatchString(line) {
				note("a stack trace", line)
			}
			for _, tok := range jwtRE.FindAllString(line, -1) {
				if minted[tok] {
					note("a bearer token the harness sent", line)
				} else {
					note("a JWT", line)
				}
			}
			if strings.Contains(line, s.secret) {
				note("the AUTH_HS256_SECRET value", line)
			}
			if strings.Contains(line, s.marker) {
				note("a message body (the marker every body carries)", line)
			}
		}
		for _, kind := range slices.Sorted(maps.Keys(hits)) {
			h := hits[kind]
			out = append(out, fmt.Sprintf("%s logged %s %d times, first: %s", p.Name, kind, h.n, s.mask(h.first)))
		}
	}
	return out
}

// mask hides the secret and tokens in a log line quoted in a failure, and shortens it.
func (s *Suite) mask(line string) string {
	line = strings.ReplaceAll(strings.TrimSpace(line), s.secret, "<AUTH_HS256_SECRET>")
	line = jwtRE.ReplaceAllString(line, "<JWT>")
	if len(line) > 400 {
		line = line[:400] + "…"
	}
	return line
}

// newMarker returns the string the suite puts in every body it submits.
func newMarker() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return "body-marker-" + hex.EncodeToString(b)
}

// Check ends a scenario: it waits for the suite to settle (Settle, within exp.Within of the
// call), stops the dispatchers and closes the relays (their counts final), and asserts, failing
// tb for each that does not hold:
//
//   - nothing accepted is lost: every email of mail ends in the status exp names (SENT unless
//     exp.Status or a mixed exp.Load names another), and every one to be SENT reached a relay;
//   - cancelled mail never left: every email to end CANCELLED reached no relay; scheduled mail
//     was not sent early: no email reached a relay, nor had an attempt start, before its
//     send_at;
//   - no uncounted duplicate: an email reached the relays at most once plus once per UNKNOWN
//     attempt in its history (the RFC 1047 window, counted as ambiguous); one not SENT reached
//     them at most once per UNKNOWN attempt; nothing foreign arrived;
//   - the ledger, the events and the projections agree: exactly one EmailSent in JetStream per
//     SENT email and none for the others, the Redis event streams empty, every durable consumer
//     caught up, each tenant's sent view holding exactly its SENT mail, and every SENT email that
//     regards a record tracked (when the tracker runs);
//   - every running process back to its idle number of goroutines (within the slack);
//   - no log holds a stack trace, a bearer token, the AUTH_HS256_SECRET value or a body;
//   - the mailbox, the API replica, the tracker and the calendar still run.
//
// It records the scenario's row of the results table and returns it.
func (s *Suite) Check(tb testing.TB, mail []Submitted, exp Expect) *Result {
	tb.Helper()
	within := exp.Within
	if within == 0 {
		within = DefaultSettle
	}
	start := time.Now()
	st := s.Settle(tb, mail, within)
	res := s.row()
	s.mu.Lock()
	from := s.healed
	s.mu.Unlock()
	if from.IsZero() {
		from = start
	}
	res.Recovered = -1
	if !st.At.IsZero() {
		res.Recovered = st.At.Sub(from)
	}
	problem := func(format string, args ...any) {
		tb.Helper()
		msg := fmt.Sprintf(format, args...)
		res.Problems = append(res.Problems, msg)
		tb.Error(msg)
	}
	for _, p := range st.Pending {
		problem("not settled within %s: %s", within, p)
		if strings.HasPrefix(p, "goroutines") {
			for _, proc := range s.processes() {
				if proc.Running() {
					tb.Logf("goroutines of %s:\n%s", proc.Name, proc.GoroutineDump(60))
				}
			}
		}
	}
	for _, p := range []*Process{s.Mailbox, s.API, s.Tracker, s.Calendar} {
		if p != nil && !p.Running() {
			problem("%s is not running at the end:\n%s", p.Name, p.LogTail(20))
		}
	}

	tb.Logf("goroutines, idle → settled: %s", s.goroutineLevels())
	for name, e := range s.StopDispatchers(stopWait) {
		tb.Logf("%s stopped: %s", name, e)
	}
	s.mu.Lock()
	relays := slices.Clone(s.relays)
	s.mu.Unlock()
	copies := map[string]int{}
	for _, r := range relays {
		r.Close()
		for id, n := range r.Copies() {
			copies[id] += n
		}
	}
	emails := s.Emails(tb, mail)
	res.Tally = tally(mail, emails, copies)
	tb.Logf("tally: %s", res.Tally)
	events, evErr := s.SentEvents(tb)
	if evErr != nil {
		problem("the EmailSent events cannot be counted: %v", evErr)
	}

	expected := exp.statuses()
	var wrongStatus, lost, uncounted, eventsOff, cancelledOut []string
	res.Accepted = len(mail)
	if exp.Load != nil {
		res.Refused = exp.Load.Refusals()
	}
	for _, m := range mail {
		e := emails[m.ID]
		want, got := wantStatus(expected, m.ID), e.GetStatus()
		k := copies[m.MessageID]
		unknown := 0
		for _, a := range e.GetAttempts() {
			if a.GetOutcome() == outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_UNKNOWN {
				unknown++
			}
		}
		if got != want {
			wrongStatus = append(wrongStatus, fmt.Sprintf("%s %s, want %s (%d attempts, last error %q)", m.ID, trimStatus(got), trimStatus(want), e.GetAttemptCount(), e.GetLastError()))
		}
		if got == outboxv1.EmailStatus_EMAIL_STATUS_FAILED {
			res.Failed++
		}
		if k > 0 {
			res.Delivered++
		}
		if want == outboxv1.EmailStatus_EMAIL_STATUS_SENT && k == 0 {
			lost = append(lost, fmt.Sprintf("%s (%s after %d attempts)", m.ID, trimStatus(got), e.GetAttemptCount()))
		}
		if k > 1 {
			res.Duplicated += k - 1
			res.Ambiguous += min(k-1, unknown)
		}
		allowed := unknown
		if got == outboxv1.EmailStatus_EMAIL_STATUS_SENT {
			allowed++
		}
		if want == outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED && k > 0 {
			cancelledOut = append(cancelledOut, fmt.Sprintf("%s (%s, %d copies)", m.ID, trimStatus(got), k))
		}
		if k > allowed {
			uncounted = append(uncounted, fmt.Sprintf("%s (%s, %d copies, %d UNKNOWN of %d attempts)", m.ID, trimStatus(got), k, unknown, e.GetAttemptCount()))
		}
		if evErr == nil {
			wantEvents := 0
			if got == outboxv1.EmailStatus_EMAIL_STATUS_SENT {
				wantEvents = 1
			}
			if n := events[m.ID]; n != wantEvents {
				eventsOff = append(eventsOff, fmt.Sprintf("%s (%s, %d EmailSent)", m.ID, trimStatus(got), n))
			}
		}
	}
	res.Lost = len(lost)
	if len(wrongStatus) > 0 {
		problem("%d emails did not end in the status expected, e.g. %s", len(wrongStatus), Some(wrongStatus, 5))
	}
	if len(lost) > 0 {
		problem("%d accepted emails to be SENT never reached a relay (lost), e.g. %s", len(lost), Some(lost, 5))
	}
	if len(uncounted) > 0 {
		problem("%d emails reached the relays more often than their UNKNOWN attempts account for (uncounted duplicates), e.g. %s", len(uncounted), Some(uncounted, 5))
	}
	if len(cancelledOut) > 0 {
		problem("%d emails cancelled inside their schedule reached a relay, e.g. %s", len(cancelledOut), Some(cancelledOut, 5))
	}
	if early := sentEarly(mail, emails, firstArrivals(relays)); len(early) > 0 {
		problem("%d scheduled emails reached a relay or were attempted before their send_at, e.g. %s", len(early), Some(early, 5))
	}
	if res.Tally.Foreign > 0 {
		problem("%d messages at the relays belong to no accepted email", res.Tally.Foreign)
	}
	if len(eventsOff) > 0 {
		problem("%d emails without exactly one EmailSent in %s when SENT (none otherwise), e.g. %s", len(eventsOff), OutboxStream, Some(eventsOff, 5))
	}
	for _, l := range s.ScanLogs() {
		problem("log: %s", l)
	}
	res.checked = true
	tb.Logf("result: %s", res)
	return res
}

// firstArrivals is when each Message-ID first reached any of relays.
func firstArrivals(relays []*Relay) map[string]time.Time {
	first := map[string]time.Time{}
	for _, r := range relays {
		for _, a := range r.Arrivals() {
			if t, ok := first[a.MessageID]; !ok || a.At.Before(t) {
				first[a.MessageID] = a.At
			}
		}
	}
	return first
}

// sentEarly lists the scheduled emails of mail (Submitted.SendAt) that reached a relay (first,
// by Message-ID), or an attempt of which started, before their send_at: scheduled mail is never
// sent early. The outbox's due index counts whole milliseconds, so send_at is compared truncated
// to one.
func sentEarly(mail []Submitted, emails map[string]*outboxv1.Email, first map[string]time.Time) []string {
	var out []string
	for _, m := range mail {
		if m.SendAt.IsZero() {
			continue
		}
		due := m.SendAt.Truncate(time.Millisecond)
		if t, ok := first[m.MessageID]; ok && t.Before(due) {
			out = append(out, fmt.Sprintf("%s at the relay %s before its send_at", m.ID, due.Sub(t)))
			continue
		}
		for _, a := range emails[m.ID].GetAttempts() {
			if st := a.GetStartTime(); st != nil && st.AsTime().Before(due) {
				out = append(out, fmt.Sprintf("%s attempt %d started %s before its send_at", m.ID, a.GetNumber(), due.Sub(st.AsTime())))
				break
			}
		}
	}
	return out
}

func trimStatus(st outboxv1.EmailStatus) string {
	return strings.TrimPrefix(st.String(), "EMAIL_STATUS_")
}
