package dispatch_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/connector"
	"github.com/postamt/postamt/services/outbox/internal/dispatch"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// fakeClock is set by the test; After fires at once, since tests drive Drain directly.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func (c *fakeClock) After(time.Duration) <-chan time.Time { return time.After(0) }

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

var t0 = time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)

type fixture struct {
	ledger  *redisstore.Ledger
	sink    *smtptest.Sink
	enabled bool
	limits  connector.Limits // the connector's sender limits
	d       *dispatch.Dispatcher
}

func newFixture(t *testing.T, clock dispatch.Clock) *fixture {
	t.Helper()
	f := &fixture{ledger: redisstore.New(redistest.Start(t).Client(t), 0, 0), sink: smtptest.Start(t), enabled: true}
	host, port, _ := net.SplitHostPort(f.sink.Addr())
	p, _ := strconv.Atoi(port)
	sender := smtp.New(smtp.Config{Host: host, Port: p, TLS: smtp.TLSNone, CommandTimeout: 2 * time.Second})
	t.Cleanup(sender.Close)
	policy := outbox.RetryPolicy{Pattern: []time.Duration{time.Minute, 5 * time.Minute}, MaxAttempts: 3}
	f.d = &dispatch.Dispatcher{
		Ledger: f.ledger,
		Connector: func(tenant, id string) (dispatch.Connector, bool) {
			return dispatch.Connector{Sender: sender, Policy: policy, Enabled: f.enabled, SenderLimits: f.limits}, tenant == "kanzlei" && id == "relay"
		},
		Clock: clock,
	}
	return f
}

func (f *fixture) submit(t *testing.T, id string, due time.Time) {
	t.Helper()
	body := fmt.Sprintf("From: info@kanzlei.example\r\nTo: client@example.com\r\nMessage-ID: <%s@kanzlei.example>\r\nSubject: %s\r\n\r\nHallo\r\n", id, id)
	_, _, err := f.ledger.Submit(context.Background(), &redisstore.Email{
		ID: id, Tenant: "kanzlei", Status: outbox.StatusQueued, Priority: 2, Due: due, Connector: "relay", Version: 1,
		From: "info@kanzlei.example", Rcpts: []string{"client@example.com"}, Body: []byte(body),
		Buckets: []string{redisstore.BucketAll, redisstore.BucketUser("max")},
	}, redisstore.Event{Subject: "postamt.outbox.v1.EmailSubmitted", Msg: wrapperspb.String(id)})
	if err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) status(t *testing.T, id string) outbox.Status {
	t.Helper()
	e, err := f.ledger.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return e.Status
}

func (f *fixture) step(t *testing.T) {
	t.Helper()
	if _, err := f.d.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestRetryPatternWithInjectedClock: a 451 makes the mail wait the pattern's first delay, not a
// millisecond less, then it is sent; the same Message-ID goes out.
func TestRetryPatternWithInjectedClock(t *testing.T) {
	clock := &fakeClock{now: t0}
	f := newFixture(t, clock)
	f.submit(t, "m1", t0)

	f.sink.SetBehavior(smtptest.TempFailData)
	f.step(t)
	if got := f.status(t, "m1"); got != outbox.StatusPendingRetry {
		t.Fatalf("after 451: %s", got)
	}
	f.sink.SetBehavior(smtptest.Accept)
	clock.set(t0.Add(time.Minute - time.Millisecond))
	f.step(t)
	if got := f.status(t, "m1"); got != outbox.StatusPendingRetry {
		t.Fatalf("retried early: %s", got)
	}
	clock.set(t0.Add(time.Minute))
	f.step(t)
	if got := f.status(t, "m1"); got != outbox.StatusSent {
		t.Fatalf("after the delay: %s", got)
	}
	// The email shows no last error once sent; the history keeps the 451 and the relay's answer.
	if e, _ := f.ledger.Get(context.Background(), "m1"); e.LastError != "" {
		t.Errorf("last error of a sent email: %q", e.LastError)
	}
	raw, _ := f.ledger.Attempts(context.Background(), "m1")
	if len(raw) != 2 {
		t.Fatalf("%d attempts", len(raw))
	}
	var first, last outboxv1.Attempt
	_ = proto.Unmarshal(raw[0], &first)
	_ = proto.Unmarshal(raw[1], &last)
	if first.GetSmtpCode() != 451 || last.GetSmtpCode() != 250 || last.GetMessage() == "" {
		t.Errorf("attempts: %d %q, then %d %q %q; want the 451, then the relay's 250 and its text", first.GetSmtpCode(), first.GetMessage(), last.GetSmtpCode(), last.GetEnhancedCode(), last.GetMessage())
	}
	msgs := f.sink.Messages()
	if len(msgs) != 1 {
		t.Fatalf("sink has %d messages", len(msgs))
	}
}

func TestPermanentFailureAndDisabledConnector(t *testing.T) {
	clock := &fakeClock{now: t0}
	f := newFixture(t, clock)
	f.submit(t, "m1", t0)
	f.sink.SetBehavior(smtptest.PermFailRcpt)
	f.step(t)
	if got := f.status(t, "m1"); got != outbox.StatusFailed {
		t.Fatalf("after 550: %s", got)
	}

	f.enabled = false
	id := ""
	for i := 0; id == "" || f.ledger.Partition(id) != f.ledger.Partition("m1"); i++ {
		id = fmt.Sprintf("m1-%d", i)
	}
	f.submit(t, id, t0)
	f.step(t)
	e, err := f.ledger.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if e.Status != outbox.StatusConnectorDisabled || e.Attempts != 0 {
		t.Errorf("disabled connector: %+v", e)
	}
}

// TestRunSleepsUntilDueAndWakes runs the real loop: mail due in the future is sent once due, and
// a wake-up makes newly submitted mail go out without waiting for the idle bound.
func TestRunSleepsUntilDueAndWakes(t *testing.T) {
	f := newFixture(t, realClock{})
	f.d.MaxIdle = time.Minute // a lost wake-up would make the test time out, not pass
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done }) //nolint:errcheck // waits for Run to return; its error on cancel is not what this test checks

	f.submit(t, "m1", time.Now().Add(100*time.Millisecond))
	f.d.Wake(f.ledger.Partition("m1"))
	poll.Eventually(t, "the scheduled mail to be sent", func() bool { return len(f.sink.Messages()) == 1 })
	// The relay's reply comes before the result is recorded.
	poll.Eventually(t, "the email to be SENT", func() bool { return f.status(t, "m1") == outbox.StatusSent })
}

// TestSenderLimitHoldsMailWithoutAttempts: a sender allowed 5 messages a minute gets 5 out, and
// the rest waits QUEUED without using an attempt until the window has room again, paced a
// twelfth of a minute apart; a second dispatcher on the same Redis draws from the same budget
// rather than a budget of its own. Time moves in steps of 13 s: no 60 s ever holds more than 5
// sends, and all 12 are out in the time the limit needs (two more windows after the first).
func TestSenderLimitHoldsMailWithoutAttempts(t *testing.T) {
	clock := &fakeClock{now: t0}
	f := newFixture(t, clock)
	f.limits = connector.Limits{MessagesPerMinute: 5}
	// A second replica: its own lanes and recorder, the same Redis and relay.
	other := &dispatch.Dispatcher{Ledger: f.ledger, Connector: f.d.Connector, Clock: clock}
	for i := range 12 {
		f.submit(t, fmt.Sprintf("m%02d", i), t0)
	}
	counts := func() (sent, queued int) {
		for i := range 12 {
			e, err := f.ledger.Get(context.Background(), fmt.Sprintf("m%02d", i))
			if err != nil {
				t.Fatal(err)
			}
			switch e.Status {
			case outbox.StatusSent:
				sent++
			case outbox.StatusQueued:
				queued++
				if e.Attempts != 0 {
					t.Errorf("%s waits with %d attempts used, want 0", e.ID, e.Attempts)
				}
			default:
				t.Errorf("%s is %s", e.ID, e.Status)
			}
		}
		return sent, queued
	}
	var at []time.Time // when each send was seen
	for step := 0; len(at) < 12; step++ {
		if step > 15 {
			t.Fatalf("%d of 12 sent after %d steps of 13 s, want all within 3 minutes", len(at), step)
		}
		f.step(t)
		if _, err := other.Drain(context.Background()); err != nil {
			t.Fatal(err)
		}
		sent, queued := counts()
		if sent+queued != 12 || len(f.sink.Messages()) != sent {
			t.Fatalf("at %v: %d sent, %d queued, %d at the relay", clock.Now().Sub(t0), sent, queued, len(f.sink.Messages()))
		}
		for len(at) < sent {
			at = append(at, clock.Now())
		}
		clock.set(clock.Now().Add(13 * time.Second))
	}
	for i := 5; i < len(at); i++ {
		if at[i].Sub(at[i-5]) < time.Minute {
			t.Errorf("sends %d and %d were %v apart: 6 in a minute", i-4, i+1, at[i].Sub(at[i-5]))
		}
	}
	if last := at[11].Sub(t0); last > 3*time.Minute {
		t.Errorf("the last send at %v, want within 3 minutes", last)
	}
}

// TestThrottlingRepliesWaitWithoutAttempts: "451 4.7.500 Server busy" and "550 5.4.5 Daily user
// sending quota exceeded" use none of the email's attempts and fail nothing: each is named in
// the attempt history, the email waits PENDING_RETRY for the connector's back-off (30 s, then
// twice as long in a row) or the quota's recheck (an hour), and is sent after it.
func TestThrottlingRepliesWaitWithoutAttempts(t *testing.T) {
	clock := &fakeClock{now: t0}
	f := newFixture(t, clock)
	ctx := context.Background()
	check := func(id string, wantDue time.Time, wantOutcome outboxv1.AttemptOutcome, entries int) {
		t.Helper()
		e, err := f.ledger.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if e.Status != outbox.StatusPendingRetry || e.Attempts != 0 || !e.Due.Equal(wantDue) {
			t.Fatalf("%s: %s with %d attempts due %v; want PENDING_RETRY, 0 attempts, due %v", id, e.Status, e.Attempts, e.Due, wantDue)
		}
		raw, err := f.ledger.Attempts(ctx, id)
		if err != nil || len(raw) != entries {
			t.Fatalf("%s: %d history entries (%v), want %d", id, len(raw), err, entries)
		}
		a := &outboxv1.Attempt{}
		if err := proto.Unmarshal(raw[len(raw)-1], a); err != nil || a.GetOutcome() != wantOutcome || a.GetNumber() != 1 {
			t.Fatalf("%s: last history entry %v, want %v numbered 1 (the attempt still to come)", id, a, wantOutcome)
		}
	}

	f.submit(t, "busy", t0)
	f.sink.SetBehavior(smtptest.ThrottleData)
	f.step(t)
	check("busy", t0.Add(30*time.Second), outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_THROTTLED, 1)
	clock.set(t0.Add(30 * time.Second))
	f.step(t) // a second refusal in a row: the back-off doubles
	check("busy", t0.Add(90*time.Second), outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_THROTTLED, 2)

	f.sink.SetBehavior(smtptest.Accept)
	clock.set(t0.Add(90 * time.Second))
	f.step(t)
	if e, _ := f.ledger.Get(ctx, "busy"); e.Status != outbox.StatusSent || e.Attempts != 1 {
		t.Fatalf("after the back-off: %s with %d attempts, want SENT with 1", e.Status, e.Attempts)
	}

	f.submit(t, "quota", clock.Now())
	f.sink.SetBehavior(smtptest.QuotaExceededData)
	f.step(t)
	check("quota", clock.Now().Add(time.Hour), outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_QUOTA_EXHAUSTED, 1)
	if n := len(f.sink.Messages()); n != 1 {
		t.Errorf("%d messages at the relay, want the one sent", n)
	}
}
