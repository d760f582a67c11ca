package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

func viewEmail(id string, due time.Time, buckets ...string) *redisstore.Email {
	return &redisstore.Email{
		ID: id, Tenant: "kanzlei", Status: outbox.StatusQueued, Priority: 2, Due: due, Connector: "relay", Version: 1,
		Buckets: append([]string{redisstore.BucketAll}, buckets...), Meta: []byte("m"),
	}
}

func scanAll(t *testing.T, l *redisstore.Ledger, v redisstore.View, page int) []string {
	t.Helper()
	var out []string
	cur := redisstore.Cursor{}
	for i := 0; ; i++ {
		es, more, err := l.Scan(context.Background(), v, cur, page)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			out = append(out, e.ID)
		}
		if !more || len(es) == 0 {
			return out
		}
		cur = redisstore.Cursor{Score: es[len(es)-1].Score, ID: es[len(es)-1].ID}
		if i > 1000 {
			t.Fatal("scan does not end")
		}
	}
}

// TestViewIndexesFollowTransitions: an email is listed in each of its buckets under its current
// status only, leaves every index when final, and is counted once however many of a view's
// buckets hold it.
func TestViewIndexesFollowTransitions(t *testing.T) {
	l := redisstore.New(redistest.Start(t).Client(t), time.Hour, 0)
	ctx := context.Background()
	for i := range 40 {
		id := fmt.Sprintf("v-%02d", i)
		buckets := []string{redisstore.BucketUser("max")}
		if i%2 == 0 {
			buckets = append(buckets, redisstore.BucketMailbox("info"))
		}
		// Many share one millisecond: the order must still be total and stable across pages.
		if _, _, err := l.Submit(ctx, viewEmail(id, t0.Add(time.Duration(i/8)*time.Millisecond), buckets...), ev); err != nil {
			t.Fatal(err)
		}
	}
	maxAndInfo := redisstore.View{Tenant: "kanzlei", Buckets: []string{redisstore.BucketUser("max"), redisstore.BucketMailbox("info")}}
	var first []string
	for _, page := range []int{1, 3, 7, 50} {
		got := scanAll(t, l, maxAndInfo, page)
		if len(got) != 40 || len(slices.Compact(slices.Sorted(slices.Values(got)))) != 40 {
			t.Fatalf("page size %d: %d listed, duplicates or gaps: %v", page, len(got), got)
		}
		if first == nil {
			first = got
		} else if !slices.Equal(got, first) {
			t.Fatalf("page size %d lists in another order than page size 1:\n%v\n%v", page, got, first)
		}
	}
	counts, err := l.Count(ctx, maxAndInfo)
	if err != nil || counts[outbox.StatusQueued] != 40 {
		t.Fatalf("count = %v (%v), want 40 queued counted once", counts, err)
	}

	e, err := l.Get(ctx, "v-00")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Apply(ctx, e, redisstore.Change{Status: outbox.StatusCancelled, At: t0}, evf); err != nil {
		t.Fatal(err)
	}
	e2, _ := l.Get(ctx, "v-01")
	if err := l.Apply(ctx, e2, redisstore.Change{Status: outbox.StatusFailed, At: t0, Error: "550 no"}, evf); err != nil {
		t.Fatal(err)
	}
	counts, _ = l.Count(ctx, maxAndInfo)
	if counts[outbox.StatusQueued] != 38 || counts[outbox.StatusFailed] != 1 || counts[outbox.StatusCancelled] != 0 {
		t.Errorf("after cancel and fail: %v", counts)
	}
	failed := scanAll(t, l, redisstore.View{Tenant: "kanzlei", Buckets: []string{redisstore.BucketAll}, Statuses: []outbox.Status{outbox.StatusFailed}}, 10)
	if !slices.Equal(failed, []string{"v-01"}) {
		t.Errorf("failed view %v", failed)
	}
	if other, _ := l.Count(ctx, redisstore.View{Tenant: "andere", Buckets: []string{redisstore.BucketAll}}); other[outbox.StatusQueued] != 0 {
		t.Errorf("another tenant counts %v", other)
	}

	t.Run("a stale version changes nothing", func(t *testing.T) {
		stale := *e2
		stale.Version--
		err := l.Apply(ctx, &stale, redisstore.Change{Status: outbox.StatusQueued, Due: t0, At: t0}, evf)
		if !errors.Is(err, redisstore.ErrChanged) {
			t.Fatalf("err = %v, want ErrChanged", err)
		}
	})
}

// TestFinalMailExpiresAfterRetention: SENT and CANCELLED records get the retention as TTL;
// FAILED ones never expire.
func TestFinalMailExpiresAfterRetention(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	l := redisstore.New(rdb, time.Hour, 0)
	ctx := context.Background()
	for _, id := range []string{"r-1", "r-2"} {
		if _, _, err := l.Submit(ctx, viewEmail(id, t0), ev); err != nil {
			t.Fatal(err)
		}
	}
	e1, _ := l.Get(ctx, "r-1")
	if err := l.Apply(ctx, e1, redisstore.Change{Status: outbox.StatusCancelled, At: t0}, evf); err != nil {
		t.Fatal(err)
	}
	e2, _ := l.Get(ctx, "r-2")
	if err := l.Apply(ctx, e2, redisstore.Change{Status: outbox.StatusFailed, At: t0, Error: "554"}, evf); err != nil {
		t.Fatal(err)
	}
	keys, err := rdb.Keys(ctx, "pm:ob:*:[eb]:r-*").Result()
	if err != nil || len(keys) != 4 {
		t.Fatalf("keys %v (%v)", keys, err)
	}
	for _, k := range keys {
		ttl := rdb.PTTL(ctx, k).Val()
		cancelled := k[len(k)-3:] == "r-1"
		switch {
		case cancelled && (ttl <= 59*time.Minute || ttl > time.Hour):
			t.Errorf("%s: TTL %s, want the retention", k, ttl)
		case !cancelled && ttl != -1:
			t.Errorf("%s: TTL %s, failed mail must never expire", k, ttl)
		}
	}
}

// TestIdempotencyKey: a second submit with the key returns the first id and writes nothing.
func TestIdempotencyKey(t *testing.T) {
	l := redisstore.New(redistest.Start(t).Client(t), time.Hour, 0)
	ctx := context.Background()
	id := func(n int) string {
		for i := n; ; i++ {
			if c := fmt.Sprintf("k-%d", i); l.IDForKey(c, "kanzlei", "crm-1") {
				return c
			}
		}
	}
	first, second := id(0), ""
	for i := 1; second == "" || second == first; i++ {
		second = id(i * 1000)
	}
	e := viewEmail(first, t0)
	e.IdemKey = "crm-1"
	if got, created, err := l.Submit(ctx, e, ev); err != nil || !created || got != first {
		t.Fatalf("first submit = %s %v %v", got, created, err)
	}
	e2 := viewEmail(second, t0)
	e2.IdemKey = "crm-1"
	if got, created, err := l.Submit(ctx, e2, ev); err != nil || created || got != first {
		t.Fatalf("second submit = %s %v %v, want the first id", got, created, err)
	}
	if _, err := l.Get(ctx, second); err == nil {
		t.Error("the second email was written")
	}
	if got, ok, _ := l.ByIdempotencyKey(ctx, "kanzlei", "crm-1"); !ok || got != first {
		t.Errorf("lookup = %s %v", got, ok)
	}
	if _, ok, _ := l.ByIdempotencyKey(ctx, "andere", "crm-1"); ok {
		t.Error("the key is visible to another tenant")
	}
}
