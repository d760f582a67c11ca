package redisstore_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// TestTakeKeepsEveryWindow: a stream of sends at random moments, each with a random number of
// recipients, is granted only as far as every window allows. Checked against the log of what
// was granted: no window position ever holds more than the limit, and a refused send gets a
// retry time at which it is granted.
func TestTakeKeepsEveryWindow(t *testing.T) {
	l := redisstore.New(redistest.Start(t).Client(t), time.Hour, 0)
	ctx := context.Background()
	budget := []redisstore.Budget{{Tenant: "kanzlei", Key: "c:exo", Windows: []redisstore.Window{
		{Length: time.Minute, Limit: 30},
		{Length: time.Second, Limit: 3},
		{Length: time.Hour, Limit: 400, Recipients: true},
	}}}
	type grant struct {
		at    time.Time
		rcpts int
	}
	var log []grant
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	end := now.Add(3 * time.Hour)
	refusals := 0
	for now.Before(end) {
		r := 1 + rng.IntN(8)
		got, refused, err := l.Take(ctx, budget, []int{r}, now)
		retry := refused.RetryAt
		if err != nil {
			t.Fatal(err)
		}
		if got == 1 {
			log = append(log, grant{now, r})
			now = now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
			continue
		}
		refusals++
		if !retry.After(now) {
			t.Fatalf("refused at %v with a retry time %v not after it", now, retry)
		}
		if again, _, err := l.Take(ctx, budget, []int{r}, retry.Add(-time.Millisecond)); err != nil || again != 0 {
			t.Fatalf("granted before the retry time %v (err %v)", retry, err)
		}
		if again, _, err := l.Take(ctx, budget, []int{r}, retry); err != nil || again != 1 {
			t.Fatalf("not granted at the retry time %v it was given (err %v)", retry, err)
		}
		log = append(log, grant{retry, r})
		now = retry.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
	}
	if refusals == 0 || len(log) < 200 {
		t.Fatalf("%d grants, %d refusals: the test did not reach the limits", len(log), refusals)
	}
	for _, w := range budget[0].Windows {
		for i, g := range log {
			n := 0
			for _, h := range log[i:] {
				if !h.at.Before(g.at.Add(w.Length)) {
					break
				}
				if w.Recipients {
					n += h.rcpts
				} else {
					n++
				}
			}
			if n > w.Limit {
				t.Fatalf("the window of %s from %v holds %d, over its limit of %d", w.Length, g.at, n, w.Limit)
			}
		}
	}
}

// TestTakeCalendarDay: a daily recipient quota counted by the calendar day in the budget's
// zone resets at local midnight; a send with more recipients than the quota can never go.
func TestTakeCalendarDay(t *testing.T) {
	l := redisstore.New(redistest.Start(t).Client(t), time.Hour, 0)
	ctx := context.Background()
	vienna, err := time.LoadLocation("Europe/Vienna")
	if err != nil {
		t.Fatal(err)
	}
	budget := []redisstore.Budget{{Tenant: "kanzlei", Key: "s:info@kanzlei.example", Windows: []redisstore.Window{
		{Day: true, Zone: vienna, Limit: 100, Recipients: true},
	}}}
	evening := time.Date(2026, 12, 7, 22, 30, 0, 0, vienna)
	got, refused, err := l.Take(ctx, budget, []int{60, 30, 20, 1}, evening)
	retry := refused.RetryAt
	if err != nil || got != 2 {
		t.Fatalf("Take = %d, %v; want the first two (90 recipients)", got, err)
	}
	if midnight := time.Date(2026, 12, 8, 0, 0, 0, 0, vienna); !retry.Equal(midnight) {
		t.Errorf("retry at %v, want local midnight %v", retry, midnight)
	}
	if got, _, err := l.Take(ctx, budget, []int{20}, retry); err != nil || got != 1 {
		t.Errorf("after midnight: %d, %v; want the send granted", got, err)
	}
	if _, _, err := l.Take(ctx, budget, []int{101}, retry); !errors.Is(err, redisstore.ErrNeverFits) {
		t.Errorf("a send of 101 recipients against 100 a day: %v, want ErrNeverFits", err)
	}
}

// TestTakeSharedByReplicas: two replicas (two clients) taking from one budget at once are
// granted exactly the limit between them, and the tighter of a connector's and a sender's
// budgets binds.
func TestTakeSharedByReplicas(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	now := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	budgets := []redisstore.Budget{
		{Tenant: "kanzlei", Key: "c:relay", Windows: []redisstore.Window{{Length: time.Minute, Limit: 1000}}},
		{Tenant: "kanzlei", Key: "s:info@kanzlei.example", Windows: []redisstore.Window{{Length: time.Minute, Limit: 30}}},
	}
	var mu sync.Mutex
	total := 0
	var wg sync.WaitGroup
	for range 2 {
		l := redisstore.New(srv.Client(t), time.Hour, 0)
		wg.Go(func() {
			for range 40 {
				got, _, err := l.Take(ctx, budgets, []int{1, 1}, now)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				total += got
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if total != 30 {
		t.Errorf("two replicas were granted %d sends in one minute, want the sender's 30", total)
	}
}

// TestTakeOnRedisCluster: a connector's and a sender's budgets are checked in one script on a
// Redis Cluster (their keys share the tenant's slot), and budgets of two tenants in one take are
// refused before Redis would answer CROSSSLOT.
func TestTakeOnRedisCluster(t *testing.T) {
	l := redisstore.New(redistest.StartCluster(t).Client(t), time.Hour, 0)
	ctx := context.Background()
	now := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	budgets := []redisstore.Budget{
		{Tenant: "kanzlei", Key: "c:relay", Windows: []redisstore.Window{{Length: time.Minute, Limit: 10}}},
		{Tenant: "kanzlei", Key: "s:info@kanzlei.example", Windows: []redisstore.Window{{Day: true, Limit: 4, Recipients: true}}},
	}
	got, refused, err := l.Take(ctx, budgets, []int{1, 2, 2}, now)
	if err != nil || got != 2 || refused.Budget != 1 {
		t.Fatalf("Take = %d, %+v, %v; want 2 (4 recipients a day), refused by the sender's budget (1)", got, refused, err)
	}
	other := []redisstore.Budget{budgets[0], {Tenant: "notariat", Key: "c:relay", Windows: []redisstore.Window{{Length: time.Minute, Limit: 10}}}}
	if _, _, err := l.Take(ctx, other, []int{1}, now); err == nil {
		t.Error("a take across two tenants' budgets was accepted")
	}
}

// TestHoldIsSeenByEveryReader: a connector's recorded wait is read by Held (GetConnector) and
// LaneStats (the held gauge) until it ends; a shorter wait recorded later does not cut it short.
func TestHoldIsSeenByEveryReader(t *testing.T) {
	l := redisstore.New(redistest.Start(t).Client(t), time.Hour, 0)
	ctx := context.Background()
	now := time.Now()
	lane := redisstore.Lane{Tenant: "kanzlei", Connector: "exo"}
	if err := l.Hold(ctx, lane.Tenant, lane.Connector, now.Add(time.Hour), "the relay's limits set on the connector"); err != nil {
		t.Fatal(err)
	}
	if err := l.Hold(ctx, lane.Tenant, lane.Connector, now.Add(time.Minute), "the relay asked to slow down"); err != nil {
		t.Fatal(err)
	}
	until, why, err := l.Held(ctx, lane.Tenant, lane.Connector, now)
	if err != nil || until.UnixMilli() != now.Add(time.Hour).UnixMilli() || why != "the relay's limits set on the connector" {
		t.Errorf("Held = %v, %q, %v; want the hour's wait and its reason", until, why, err)
	}
	stats, err := l.LaneStats(ctx, []redisstore.Lane{lane, {Tenant: "kanzlei", Connector: "other"}}, now)
	if err != nil || !stats[0].HeldUntil.Equal(until) || !stats[1].HeldUntil.IsZero() {
		t.Errorf("LaneStats = %+v, %v; want exo held until %v and the other not", stats, err, until)
	}
	if until, _, _ := l.Held(ctx, lane.Tenant, lane.Connector, now.Add(2*time.Hour)); !until.IsZero() {
		t.Errorf("a wait that ended is still shown: %v", until)
	}
}
