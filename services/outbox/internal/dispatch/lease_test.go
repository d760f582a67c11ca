package dispatch_test

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/mail"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/postamt/postamt/internal/testkit/logtest"
	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/dispatch"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// These tests hold the dispatcher to issue 12's invariants with real parts: a spawned
// redis-server, go-smtp relays, and several dispatchers on one Redis as replicas would run. The
// relays are slowed by their hooks (the reply to a step waits), never the test.

// rig is one Redis, a relay per connector, and any number of dispatcher replicas.
type rig struct {
	t      *testing.T
	redis  *redistest.Server
	ledger *redisstore.Ledger
	sinks  map[string]*smtptest.Sink // by connector id
	pool   map[string]int
	// stopTimeout is the replicas' StopTimeout; 0 means 3 s.
	stopTimeout time.Duration
}

func newRig(t *testing.T, opts ...redistest.Option) *rig {
	t.Helper()
	srv := redistest.Start(t, opts...)
	return &rig{t: t, redis: srv, ledger: redisstore.New(srv.Client(t), 0, 0), sinks: map[string]*smtptest.Sink{}, pool: map[string]int{}}
}

// connector adds a relay for connector id (tenant kanzlei) with pool connections per replica.
func (r *rig) connector(id string, pool int) *smtptest.Sink {
	s := smtptest.Start(r.t)
	r.sinks[id], r.pool[id] = s, pool
	return s
}

// replica is one running dispatcher.
type replica struct {
	d        *dispatch.Dispatcher
	log      *logtest.Buffer
	outcomes *dispatch.Metrics
	events   *prometheus.CounterVec
	cancel   context.CancelFunc
	done     chan struct{} // closed when Run has returned
}

// stop ends the replica's Run as SIGTERM would and waits for it.
func (p *replica) stop() {
	p.cancel()
	<-p.done
}

func (r *rig) replica(lease time.Duration, ahead float64) *replica {
	r.t.Helper()
	senders := map[string]*smtp.Sender{}
	for id, s := range r.sinks {
		host, port, _ := net.SplitHostPort(s.Addr())
		n, _ := strconv.Atoi(port)
		sender := smtp.New(smtp.Config{Host: host, Port: n, TLS: smtp.TLSNone, PoolSize: r.pool[id], CommandTimeout: 20 * time.Second, SubmitTimeout: 20 * time.Second})
		r.t.Cleanup(sender.Close)
		senders[id] = sender
	}
	policy := outbox.RetryPolicy{Pattern: []time.Duration{time.Minute}, MaxAttempts: 5}
	p := &replica{
		log:      &logtest.Buffer{},
		outcomes: dispatch.NewMetrics(0),
		events:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "events"}, []string{"event"}),
		done:     make(chan struct{}),
	}
	p.d = &dispatch.Dispatcher{
		Ledger: r.ledger,
		Connector: func(tenant, id string) (dispatch.Connector, bool) {
			s, ok := senders[id]
			return dispatch.Connector{Sender: s, Policy: policy, Enabled: true}, ok && tenant == "kanzlei"
		},
		Clock: realClock{}, Logger: slog.New(slog.NewJSONHandler(p.log, &slog.HandlerOptions{Level: slog.LevelDebug})), Metrics: p.outcomes, Events: p.events,
		Lease: lease, ClaimAhead: ahead, MaxIdle: time.Second, StopTimeout: cmp.Or(r.stopTimeout, 3*time.Second),
		Redis: r.redis.Client(r.t),
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() {
		defer close(p.done)
		if err := p.d.Run(ctx); err != nil {
			r.t.Errorf("dispatcher: %v", err)
		}
	}()
	r.t.Cleanup(p.stop)
	return p
}

// submit stores one email due at due for connector conn; its Message-ID is its id.
func (r *rig) submit(id, conn string, prio int, due time.Time) {
	r.t.Helper()
	body := fmt.Sprintf("From: info@kanzlei.example\r\nTo: client@example.com\r\nMessage-ID: <%s@kanzlei.example>\r\nSubject: %s\r\n\r\nHallo\r\n", id, id)
	_, _, err := r.ledger.Submit(context.Background(), &redisstore.Email{
		ID: id, Tenant: "kanzlei", Status: outbox.StatusQueued, Priority: prio, Due: due, Connector: conn, Version: 1,
		From: "info@kanzlei.example", Rcpts: []string{"client@example.com"}, Body: []byte(body),
		Buckets: []string{redisstore.BucketAll, redisstore.BucketUser("max")},
	}, redisstore.Event{Subject: "postamt.outbox.v1.EmailSubmitted", Msg: wrapperspb.String(id)})
	if err != nil {
		r.t.Fatal(err)
	}
}

// deadClaim claims email id at at for lease, as a worker that then dies without a word would,
// and returns the claimed email.
func (r *rig) deadClaim(id string, at time.Time, lease time.Duration) redisstore.Email {
	r.t.Helper()
	ctx := context.Background()
	ln := redisstore.Lane{Tenant: "kanzlei", Connector: "relay"}
	p := r.ledger.Partition(id)
	cands, err := r.ledger.Heads(ctx, ln, []int{p}, at, 1)
	if err != nil || len(cands) != 1 {
		r.t.Fatalf("heads: %v %v", cands, err)
	}
	got, err := r.ledger.ClaimLane(ctx, ln, []int{p}, cands, at, lease)
	if err != nil || len(got.Emails) != 1 {
		r.t.Fatalf("claim: %+v %v", got, err)
	}
	return got.Emails[0]
}

// submitN stores n emails of normal priority for connector relay, all due at due, with ids
// prefix-0, prefix-1, ...
func (r *rig) submitN(prefix string, n int, due time.Time) []string {
	r.t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		r.submit(ids[i], "relay", 2, due)
	}
	return ids
}

func (r *rig) email(id string) *redisstore.Email {
	r.t.Helper()
	e, err := r.ledger.Get(context.Background(), id)
	if err != nil {
		r.t.Fatal(err)
	}
	return e
}

// outcomes returns an email's attempt outcomes, oldest first.
func (r *rig) outcomes(id string) []outboxv1.AttemptOutcome {
	r.t.Helper()
	raw, err := r.ledger.Attempts(context.Background(), id)
	if err != nil {
		r.t.Fatal(err)
	}
	out := make([]outboxv1.AttemptOutcome, len(raw))
	for i, b := range raw {
		var a outboxv1.Attempt
		if err := proto.Unmarshal(b, &a); err != nil {
			r.t.Fatal(err)
		}
		out[i] = a.GetOutcome()
	}
	return out
}

// copies counts the messages a sink received per email id (from the Message-ID).
func copies(t *testing.T, msgs []smtptest.Message) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, m := range msgs {
		h, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		id := strings.TrimSuffix(strings.TrimPrefix(h.Header.Get("Message-Id"), "<"), "@kanzlei.example>")
		out[id]++
	}
	return out
}

// order lists the email ids in the order the sink received them.
func order(t *testing.T, msgs []smtptest.Message) []string {
	t.Helper()
	out := make([]string, len(msgs))
	for i, m := range msgs {
		h, err := mail.ReadMessage(bytes.NewReader(m.Data))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = h.Header.Get("Subject")
	}
	return out
}

// slowReplies makes the relay wait d before answering the end of each message.
func slowReplies(s *smtptest.Sink, d time.Duration) {
	s.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
		if len(env.To) > 0 && env.From != "" {
			time.Sleep(d) // the relay's own latency, not the test's synchronisation
		}
		return smtptest.Accept
	})
}

// TestLeaseOutlivesSlowConversations: every conversation takes longer than the lease and each
// replica claims more than it can start, yet with two replicas every email reaches the relay once
// and is SENT after one attempt: a held claim is renewed until its result is recorded.
func TestLeaseOutlivesSlowConversations(t *testing.T) {
	r := newRig(t)
	sink := r.connector("relay", 2)
	// Each conversation outlasts the lease by half; the lease still leaves a loaded machine two
	// seconds to renew it, so the test holds the mechanism to account, not the scheduler.
	slowReplies(sink, 4500*time.Millisecond)
	const n = 12
	ids := r.submitN("slow", n, time.Now())
	r.replica(3*time.Second, 1)
	r.replica(3*time.Second, 1)
	sink.WaitForMessages(t, n, 60*time.Second)
	poll.Eventually(t, "every email SENT", func() bool {
		for _, id := range ids {
			if r.email(id).Status != outbox.StatusSent {
				return false
			}
		}
		return true
	})
	msgs := sink.Messages()
	for id, c := range copies(t, msgs) {
		if c != 1 {
			t.Errorf("%s reached the relay %d times", id, c)
		}
	}
	for _, id := range ids {
		if e := r.email(id); e.Attempts != 1 {
			t.Errorf("%s: %d attempts, want 1 (history %v)", id, e.Attempts, r.outcomes(id))
		}
	}
}

// TestTakeOverIsCounted: a worker claims an email and dies without a word; once its lease has
// run out another replica takes the email over, records the dead worker's attempt as UNKNOWN
// (it may have delivered it) and sends it: the possible duplicate is on record and counted.
func TestTakeOverIsCounted(t *testing.T) {
	r := newRig(t)
	sink := r.connector("relay", 2)
	r.submit("lost", "relay", 2, time.Now())
	ctx := context.Background()
	dead := r.deadClaim("lost", time.Now().Add(time.Millisecond), time.Second)

	rep := r.replica(2*time.Second, 1)
	sink.WaitForMessages(t, 1, 30*time.Second)
	poll.Eventually(t, "the email SENT", func() bool { return r.email("lost").Status == outbox.StatusSent })
	got := r.outcomes("lost")
	want := []outboxv1.AttemptOutcome{outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_UNKNOWN, outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_SENT}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("attempts %v, want %v", got, want)
	}
	if e := r.email("lost"); e.Attempts != 2 || e.Fence != 2 {
		t.Errorf("record %+v, want 2 attempts under the second fence", e)
	}
	if c := testutil.ToFloat64(rep.outcomes.Attempts.WithLabelValues("kanzlei", "relay", "unknown")); c != 1 {
		t.Errorf("unknown attempts counted %v, want 1", c)
	}
	// The dead worker's result, had it come back, is refused.
	if err := r.ledger.Apply(ctx, &dead, redisstore.Change{Status: outbox.StatusSent, At: time.Now(), Fenced: true}, nil); err == nil {
		t.Error("the lapsed claim recorded a result")
	}
}

// TestRedisOutage: Redis is killed while conversations are in progress and restarted on its AOF
// seconds later, longer than the lease. No conversation starts while it is away, what finished
// is recorded when it is back, and every email reaches the relay exactly once: nothing that was
// sent is taken for lost.
func TestRedisOutage(t *testing.T) {
	r := newRig(t, redistest.WithAOF())
	sink := r.connector("relay", 2)
	slowReplies(sink, 400*time.Millisecond)
	const n = 12
	ids := r.submitN("outage", n, time.Now())
	rep := r.replica(time.Second, 1)
	sink.WaitForMessages(t, 2, 30*time.Second)
	r.redis.Kill()
	atKill := len(sink.Messages())
	// Conversations past DATA finish; none may start. Watch the relay for three leases: an
	// observation window, since what is checked is that nothing happens.
	<-time.After(3 * time.Second)
	// A replica notices the outage at its next Redis call; until then it may start conversations
	// on claims it holds (their leases are valid, and nobody can take them over meanwhile). It
	// claims nothing new, so at most what it held when Redis went away reaches the relay: its
	// lane of 2 connections and 2 claimed ahead.
	during := len(sink.Messages()) - atKill
	if during > 4 {
		t.Errorf("%d messages reached the relay while Redis was away; at most the 4 claims held may finish", during)
	}
	r.redis.Restart(t)
	sink.WaitForMessages(t, n, 60*time.Second)
	poll.Eventually(t, "every email SENT", func() bool {
		for _, id := range ids {
			if r.email(id).Status != outbox.StatusSent {
				return false
			}
		}
		return true
	})
	for id, c := range copies(t, sink.Messages()) {
		if c != 1 {
			t.Errorf("%s reached the relay %d times", id, c)
		}
	}
	if kept := testutil.ToFloat64(rep.events.WithLabelValues("record_retried")); during > 0 && kept == 0 {
		t.Errorf("%d conversations finished during the outage, but no result was kept for later", during)
	}
}

// TestHungRelayHoldsOnlyItsLane: a relay that never answers the end of a message holds its own
// connector's connections and nothing else; mail of another connector in the same partitions
// goes out while those conversations still hang.
func TestHungRelayHoldsOnlyItsLane(t *testing.T) {
	r := newRig(t)
	hung := r.connector("hung", 2)
	hung.SetBehavior(smtptest.Hang)
	healthy := r.connector("healthy", 4)
	now := time.Now()
	var stuck []string
	for i := range 6 {
		id := fmt.Sprintf("stuck-%d", i)
		stuck = append(stuck, id)
		r.submit(id, "hung", 1, now)
	}
	r.replica(2*time.Second, 1)
	sending := func() int {
		n := 0
		for _, id := range stuck {
			if r.email(id).Status == outbox.StatusSending {
				n++
			}
		}
		return n
	}
	// Its two connections hang, and two more emails wait behind them (the claim-ahead).
	poll.Eventually(t, "the hung relay's conversations to start", func() bool { return sending() == 4 })
	const n = 40
	for i := range n {
		r.submit(fmt.Sprintf("ok-%d", i), "healthy", 3, time.Now())
	}
	healthy.WaitForMessages(t, n, 30*time.Second)
	if got := len(hung.Messages()); got != 0 {
		t.Fatalf("the hung relay delivered %d", got)
	}
	if n := sending(); n != 4 {
		t.Errorf("%d of the hung relay's emails SENDING after the healthy mail went out, want still 4", n)
	}
}

// TestPriorityAcrossPartitions: with more due than one connection can send, high goes before
// normal before low for the connector as a whole, whichever partitions the mail is in and
// although the low mail is older.
func TestPriorityAcrossPartitions(t *testing.T) {
	r := newRig(t)
	sink := r.connector("relay", 1)
	now := time.Now()
	want := map[string]int{}
	for _, pr := range []struct {
		name string
		prio int
	}{{"low", 3}, {"normal", 2}, {"high", 1}} {
		for i := range 8 {
			id := fmt.Sprintf("%s-%d", pr.name, i)
			want[id] = pr.prio
			r.submit(id, "relay", pr.prio, now.Add(time.Duration(pr.prio)*-time.Millisecond))
		}
	}
	r.replica(2*time.Second, 1)
	msgs := sink.WaitForMessages(t, len(want), 30*time.Second)
	got := order(t, msgs)
	for i := 1; i < len(got); i++ {
		if want[got[i]] < want[got[i-1]] {
			t.Fatalf("order %v: %s (priority %d) after %s (priority %d)", got, got[i], want[got[i]], got[i-1], want[got[i-1]])
		}
	}
}

// TestAttemptStartsWithTheConversation: with one connection and a slow relay, the second email's
// attempt starts when its conversation does, after the first one's ended, not when it was
// claimed.
func TestAttemptStartsWithTheConversation(t *testing.T) {
	r := newRig(t)
	sink := r.connector("relay", 1)
	slowReplies(sink, 300*time.Millisecond)
	now := time.Now()
	r.submit("first", "relay", 1, now)
	r.submit("second", "relay", 2, now)
	r.replica(2*time.Second, 1)
	sink.WaitForMessages(t, 2, 30*time.Second)
	poll.Eventually(t, "both SENT", func() bool {
		return r.email("first").Status == outbox.StatusSent && r.email("second").Status == outbox.StatusSent
	})
	attempt := func(id string) *outboxv1.Attempt {
		raw, err := r.ledger.Attempts(context.Background(), id)
		if err != nil || len(raw) != 1 {
			t.Fatalf("%s attempts %d %v", id, len(raw), err)
		}
		var a outboxv1.Attempt
		if err := proto.Unmarshal(raw[0], &a); err != nil {
			t.Fatal(err)
		}
		return &a
	}
	first, second := attempt("first"), attempt("second")
	if second.GetStartTime().AsTime().Before(first.GetEndTime().AsTime().Add(-time.Millisecond)) {
		t.Errorf("second attempt started %v, before the first ended %v: it counts the wait for the connection", second.GetStartTime().AsTime(), first.GetEndTime().AsTime())
	}
	if d := second.GetEndTime().AsTime().Sub(second.GetStartTime().AsTime()); d > 2*time.Second {
		t.Errorf("second attempt lasted %v for a 300 ms relay", d)
	}
}

// TestStopHandsBackUnstarted: a replica told to stop hands back at once what it claimed but has
// not started, finishes the conversation in progress, and says so; another replica sends the
// rest, each email once.
func TestStopHandsBackUnstarted(t *testing.T) {
	r := newRig(t)
	sink := r.connector("relay", 1)
	gate := make(chan struct{})
	var once sync.Once
	var answering atomic.Bool
	sink.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
		if env.Stage == smtptest.StageData {
			answering.Store(true)
			<-gate // the first message is in; its answer waits until the replica is told to stop
		}
		return smtptest.Accept
	})
	const n = 6
	now := time.Now()
	var ids []string
	for i := range n {
		ids = append(ids, fmt.Sprintf("stop-%d", i))
		r.submit(ids[i], "relay", 2, now)
	}
	first := r.replica(5*time.Second, 4) // holds 1 in conversation + 4 ahead
	poll.Eventually(t, "claims held", func() bool {
		held := 0
		for _, id := range ids {
			if r.email(id).Status == outbox.StatusSending {
				held++
			}
		}
		return held == 5
	})
	poll.Eventually(t, "the first message at the relay, its answer pending", answering.Load)
	first.cancel()
	poll.Eventually(t, "the stop to be logged", func() bool { return strings.Contains(first.log.String(), `"msg":"dispatcher stopping"`) })
	once.Do(func() { close(gate) })
	<-first.done
	log := first.log.String()
	if !strings.Contains(log, `"in_progress":1`) || !strings.Contains(log, `"stopped_before_message":0`) || !strings.Contains(log, `"handed_back":4`) {
		t.Errorf("stop log does not say 1 in progress (past its message, so awaited) and 4 handed back:\n%s", log)
	}
	queued, sent := 0, 0
	for _, id := range ids {
		switch e := r.email(id); {
		case e.Status == outbox.StatusQueued && e.Attempts == 0:
			queued++
		case e.Status == outbox.StatusSent && e.Attempts == 1:
			sent++
		}
	}
	if queued != n-1 || sent != 1 {
		t.Errorf("after the stop %d emails QUEUED without an attempt and %d SENT, want %d and 1 (the awaited one)", queued, sent, n-1)
	}
	r.replica(5*time.Second, 1)
	msgs := sink.WaitForMessages(t, n, 30*time.Second)
	for id, c := range copies(t, msgs) {
		if c != 1 {
			t.Errorf("%s reached the relay %d times", id, c)
		}
	}
}

// TestStopCutsConversationsBeforeTheMessage: a stopping replica does not wait for a conversation
// that has not begun to write its message (here a relay that hangs after RCPT, and a stop
// timeout of ten minutes): it stops it at once and hands its email back without an attempt, and
// another replica sends it once.
func TestStopCutsConversationsBeforeTheMessage(t *testing.T) {
	r := newRig(t)
	r.stopTimeout = 10 * time.Minute
	sink := r.connector("relay", 1)
	gate := make(chan struct{})
	var hung atomic.Bool
	sink.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
		if env.Stage == smtptest.StageRcpt && hung.CompareAndSwap(false, true) {
			<-gate // the first conversation hangs in its RCPT until the test ends
		}
		return smtptest.Accept
	})
	t.Cleanup(func() { close(gate) })
	r.submit("cut", "relay", 2, time.Now())
	first := r.replica(5*time.Second, 0)
	poll.Eventually(t, "the conversation to hang", hung.Load)
	first.cancel()
	poll.Eventually(t, "the replica to stop while the relay still hangs", func() bool {
		select {
		case <-first.done:
			return true
		default:
			return false
		}
	})
	if log := first.log.String(); !strings.Contains(log, `"in_progress":1`) || !strings.Contains(log, `"stopped_before_message":1`) {
		t.Errorf("stop log does not say 1 in progress, stopped before its message:\n%s", log)
	}
	if e := r.email("cut"); e.Status != outbox.StatusQueued || e.Attempts != 0 {
		t.Fatalf("after the stop: %s with %d attempts, want QUEUED without an attempt", e.Status, e.Attempts)
	}
	r.replica(5*time.Second, 0)
	msgs := sink.WaitForMessages(t, 1, 30*time.Second)
	if c := copies(t, msgs)["cut"]; c != 1 {
		t.Errorf("the email reached the relay %d times", c)
	}
	poll.Eventually(t, "SENT after one attempt", func() bool {
		e := r.email("cut")
		return e.Status == outbox.StatusSent && e.Attempts == 1
	})
}

// TestDispatchOnRedisCluster: every script of the dispatch path (submit, claim, renew, record)
// keeps to one slot, so it runs on Redis Cluster: a Drain sends mail of every partition, and
// held leases renew.
func TestDispatchOnRedisCluster(t *testing.T) {
	rdb := redistest.Start(t, redistest.WithCluster()).ClusterClient(t)
	r := &rig{t: t, ledger: redisstore.New(rdb, 0, 0), sinks: map[string]*smtptest.Sink{}, pool: map[string]int{}}
	sink := r.connector("relay", 4)
	now := time.Now()
	var ids []string
	for i := range 40 {
		ids = append(ids, fmt.Sprintf("cluster-%d", i))
		r.submit(ids[i], "relay", 1+i%3, now)
	}
	ctx := context.Background()
	ln := redisstore.Lane{Tenant: "kanzlei", Connector: "relay"}
	parts := make([]int, r.ledger.Partitions())
	for p := range parts {
		parts[p] = p
	}
	at := now.Add(time.Millisecond) // due times are whole milliseconds, rounded up
	cands, err := r.ledger.Heads(ctx, ln, parts, at, 2)
	if err != nil || len(cands) < 2 {
		t.Fatalf("heads on the cluster: %v %v", cands, err)
	}
	held, err := r.ledger.ClaimLane(ctx, ln, parts, cands[:2], at, time.Minute)
	if err != nil || len(held.Emails) != 2 {
		t.Fatalf("claim on the cluster: %d emails, %v", len(held.Emails), err)
	}
	es := []*redisstore.Email{&held.Emails[0], &held.Emails[1]}
	if ok, err := r.ledger.Renew(ctx, es, now.Add(2*time.Minute)); err != nil || !ok[0] || !ok[1] {
		t.Fatalf("renew on the cluster: %v %v", ok, err)
	}
	sender := smtp.New(smtp.Config{Host: "127.0.0.1", Port: port(t, sink), TLS: smtp.TLSNone, PoolSize: 4, CommandTimeout: 5 * time.Second})
	t.Cleanup(sender.Close)
	d := &dispatch.Dispatcher{Ledger: r.ledger, Clock: realClock{}, ClaimAhead: 1,
		Connector: func(tenant, id string) (dispatch.Connector, bool) {
			return dispatch.Connector{Sender: sender, Policy: outbox.RetryPolicy{Pattern: []time.Duration{time.Minute}, MaxAttempts: 3}, Enabled: true}, true
		}}
	if _, err := d.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(sink.Messages()); got != len(ids)-2 {
		t.Errorf("sent %d on the cluster, want the %d not held", got, len(ids)-2)
	}
}

func port(t *testing.T, s *smtptest.Sink) int {
	t.Helper()
	_, p, err := net.SplitHostPort(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// TestTakeOverGoesFirst: mail whose holder's lease ran out is taken over before a backlog that
// was due before the lease ended, so a crashed replica's mail does not wait behind it.
func TestTakeOverGoesFirst(t *testing.T) {
	r := newRig(t)
	sink := r.connector("relay", 1)
	r.submit("lost", "relay", 3, time.Now())
	at, lease := time.Now().Add(time.Millisecond), 300*time.Millisecond
	r.deadClaim("lost", at, lease)
	for i := range 10 {
		r.submit(fmt.Sprintf("backlog-%d", i), "relay", 1, time.Now()) // high priority, due before the lease ends
	}
	<-time.After(time.Until(at.Add(lease + 10*time.Millisecond))) // the dead worker's lease runs out
	r.replica(2*time.Second, 1)
	msgs := sink.WaitForMessages(t, 11, 30*time.Second)
	if got := order(t, msgs); got[0] != "lost" {
		t.Errorf("order %v: the taken-over email waited behind the backlog", got)
	}
}
