package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

var (
	t0     = time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)
	ev     = redisstore.Event{Subject: "postamt.outbox.v1.EmailStatusChanged", Msg: wrapperspb.String("x")}
	policy = outbox.RetryPolicy{Pattern: []time.Duration{time.Minute, 5 * time.Minute}, MaxAttempts: 3}
)

func evf(*redisstore.Email) redisstore.Event { return ev }

// result is the change a worker records for decision d at at.
func result(d outbox.Decision, at time.Time) redisstore.Change {
	c := redisstore.Change{Status: d.Status, At: at, Fenced: true, CountAttempt: d.ConsumesAttempt, Attempted: d.ConsumesAttempt, MaxAttempts: 3}
	if d.Status == outbox.StatusPendingRetry {
		c.Due = at.Add(d.Delay)
	}
	if d.Status != outbox.StatusSent {
		c.Error = "x"
	}
	return c
}

// samePartition returns n email ids that land in one partition, so claims see them together.
func samePartition(l *redisstore.Ledger, n int) (int, []string) {
	var ids []string
	p := l.Partition("e-0")
	for i := 0; len(ids) < n; i++ {
		if id := fmt.Sprintf("e-%d", i); l.Partition(id) == p {
			ids = append(ids, id)
		}
	}
	return p, ids
}

func submit(t *testing.T, l *redisstore.Ledger, id string, prio int, due time.Time) {
	t.Helper()
	e := &redisstore.Email{ID: id, Tenant: "kanzlei", Status: outbox.StatusQueued, Priority: prio, Due: due, Connector: "relay", Version: 1,
		Buckets: []string{redisstore.BucketAll, redisstore.BucketUser("max")}}
	if _, _, err := l.Submit(context.Background(), e, ev); err != nil {
		t.Fatal(err)
	}
}

var lane = redisstore.Lane{Tenant: "kanzlei", Connector: "relay"}

// claim claims up to batch emails of the test's lane in partition p as a dispatcher's lane does:
// the heads of its indexes, then the claim.
func claim(t *testing.T, l *redisstore.Ledger, p int, now time.Time, batch int) []redisstore.Email {
	t.Helper()
	ctx := context.Background()
	cands, err := l.Heads(ctx, lane, []int{p}, now, batch)
	if err != nil {
		t.Fatal(err)
	}
	got, err := l.ClaimLane(ctx, lane, []int{p}, cands[:min(len(cands), batch)], now, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return got.Emails
}

// dueAny reports whether partition p holds any mail of the test's lane in its due indexes.
func dueAny(t *testing.T, l *redisstore.Ledger, p int) bool {
	t.Helper()
	cands, err := l.Heads(context.Background(), lane, []int{p}, t0.Add(1000*time.Hour), 1)
	if err != nil {
		t.Fatal(err)
	}
	return len(cands) > 0
}

func ids(es []redisstore.Email) string {
	var out []string
	for _, e := range es {
		out = append(out, e.ID)
	}
	return fmt.Sprint(out)
}

func TestSubmitAndClaim(t *testing.T) {
	l := redisstore.New(redistest.Start(t).Client(t), time.Hour, 0)
	ctx := context.Background()
	p, id := samePartition(l, 4)
	submit(t, l, id[0], 2, t0)

	t.Run("a duplicate submit writes nothing", func(t *testing.T) {
		_, _, err := l.Submit(ctx, &redisstore.Email{ID: id[0], Tenant: "kanzlei", Status: outbox.StatusQueued, Due: t0.Add(time.Hour), Version: 1}, ev)
		if !errors.Is(err, errs.ErrAlreadyExists) {
			t.Fatalf("err = %v", err)
		}
		if due, next, ok, _ := l.Ready(ctx, p, t0.Add(-time.Millisecond), 10); len(due) != 0 || !ok || !next.Equal(t0) {
			t.Errorf("ready moved: due %v, next %v %v; want the lane ready at %v", due, next, ok, t0)
		}
	})
	t.Run("never early", func(t *testing.T) {
		if got := claim(t, l, p, t0.Add(-time.Millisecond), 10); len(got) != 0 {
			t.Errorf("claimed %s before its due time", ids(got))
		}
	})
	t.Run("due mail is leased with a fencing token", func(t *testing.T) {
		got := claim(t, l, p, t0, 10)
		if len(got) != 1 || got[0].Fence != 1 || got[0].Version != 2 || got[0].Status != outbox.StatusSending {
			t.Fatalf("claimed %+v", got)
		}
		if again := claim(t, l, p, t0.Add(time.Second), 10); len(again) != 0 {
			t.Errorf("claimed twice while leased: %s", ids(again))
		}
	})
	t.Run("priority first, then oldest", func(t *testing.T) {
		submit(t, l, id[1], 3, t0) // low, oldest
		submit(t, l, id[2], 1, t0.Add(2*time.Millisecond))
		submit(t, l, id[3], 1, t0.Add(time.Millisecond))
		now := t0.Add(time.Second)
		var order []string
		for range 3 {
			order = append(order, ids(claim(t, l, p, now, 1)))
		}
		want := fmt.Sprint([]string{fmt.Sprint([]string{id[3]}), fmt.Sprint([]string{id[2]}), fmt.Sprint([]string{id[1]})})
		if fmt.Sprint(order) != want {
			t.Errorf("claim order = %v, want %v", order, want)
		}
	})
}

func TestCompleteOutcomes(t *testing.T) {
	l := redisstore.New(redistest.Start(t).Client(t), time.Hour, 0)
	ctx := context.Background()
	p, id := samePartition(l, 3)
	for _, e := range id {
		submit(t, l, e, 2, t0)
	}
	claimed := claim(t, l, p, t0, 3)
	if len(claimed) != 3 {
		t.Fatalf("claimed %d", len(claimed))
	}
	byID := map[string]*redisstore.Email{}
	for i := range claimed {
		byID[claimed[i].ID] = &claimed[i]
	}
	complete := func(e *redisstore.Email, o outbox.Outcome, at time.Time) error {
		return l.Apply(ctx, e, result(policy.Decide(o, e.Attempts+1, e.Imported), at), evf)
	}

	t.Run("sent leaves the due index", func(t *testing.T) {
		if err := complete(byID[id[0]], outbox.OutcomeSent, t0); err != nil {
			t.Fatal(err)
		}
		got, _ := l.Get(ctx, id[0])
		if got.Status != outbox.StatusSent || got.Attempts != 1 || got.Version != 3 {
			t.Errorf("after sent: %+v", got)
		}
	})
	t.Run("a disabled connector consumes no attempt", func(t *testing.T) {
		if err := complete(byID[id[2]], outbox.OutcomeConnectorDisabled, t0); err != nil {
			t.Fatal(err)
		}
		got, _ := l.Get(ctx, id[2])
		if got.Status != outbox.StatusConnectorDisabled || got.Attempts != 0 {
			t.Errorf("after disabled: %+v", got)
		}
	})
	t.Run("a temporary failure comes due after the pattern's first delay", func(t *testing.T) {
		if err := complete(byID[id[1]], outbox.OutcomeTemporary, t0); err != nil {
			t.Fatal(err)
		}
		got, _ := l.Get(ctx, id[1])
		if got.Status != outbox.StatusPendingRetry || !got.Due.Equal(t0.Add(time.Minute)) {
			t.Errorf("after 451: %+v", got)
		}
		if early := claim(t, l, p, t0.Add(time.Minute-time.Millisecond), 10); len(early) != 0 {
			t.Errorf("retried early: %s", ids(early))
		}
		// Only the retry comes due: the sent mail and the disabled connector's mail are not claimed.
		if again := claim(t, l, p, t0.Add(time.Minute), 10); ids(again) != fmt.Sprint([]string{id[1]}) || again[0].Fence != 2 {
			t.Errorf("retry claim = %+v", again)
		}
	})
}

// TestLostLeaseCannotRecord: a worker stalls past its lease; the mail comes due again by itself,
// another worker claims it with a newer fencing token, and the stale worker's result is refused.
func TestLostLeaseCannotRecord(t *testing.T) {
	l := redisstore.New(redistest.Start(t).Client(t), time.Hour, 0)
	ctx := context.Background()
	p, id := samePartition(l, 1)
	submit(t, l, id[0], 2, t0)
	slow := claim(t, l, p, t0, 1)[0]
	fast := claim(t, l, p, t0.Add(31*time.Second), 1)
	if len(fast) != 1 || fast[0].Fence != slow.Fence+1 {
		t.Fatalf("reclaim after the lease = %+v", fast)
	}
	sent := result(outbox.Decision{Status: outbox.StatusSent, ConsumesAttempt: true}, t0.Add(31*time.Second))
	if err := l.Apply(ctx, &slow, sent, evf); !errors.Is(err, redisstore.ErrFenced) {
		t.Fatalf("stale complete: err = %v, want ErrFenced", err)
	}
	if err := l.Apply(ctx, &fast[0], sent, evf); err != nil {
		t.Fatal(err)
	}
	got, _ := l.Get(ctx, id[0])
	if got.Status != outbox.StatusSent || got.Attempts != 1 {
		t.Errorf("final state %+v, want SENT after one recorded attempt", got)
	}
	if dueAny(t, l, p) {
		t.Error("sent mail is still in the due index")
	}
}

// TestClaimDropsOrphanedDueEntries: a due entry whose record is gone (a bug, or a hand-made
// deletion) is removed by the claim that finds it, so a lane does not read it forever.
func TestClaimDropsOrphanedDueEntries(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	l := redisstore.New(rdb, time.Hour, 0)
	p, id := samePartition(l, 2)
	submit(t, l, id[0], 2, t0)
	submit(t, l, id[1], 2, t0)
	keys, err := rdb.Keys(context.Background(), "*:e:"+id[0]).Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("record key of %s: %v %v", id[0], keys, err)
	}
	rdb.Del(context.Background(), keys[0])
	if got := claim(t, l, p, t0, 10); ids(got) != fmt.Sprint([]string{id[1]}) {
		t.Fatalf("claimed %s, want only %s", ids(got), id[1])
	}
	if again := claim(t, l, p, t0.Add(time.Second), 10); len(again) != 0 {
		t.Errorf("claimed %s", ids(again))
	}
	cands, err := l.Heads(context.Background(), lane, []int{p}, t0.Add(time.Second), 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cands {
		if c.ID == id[0] {
			t.Errorf("the orphaned entry of %s is still due", id[0])
		}
	}
}
