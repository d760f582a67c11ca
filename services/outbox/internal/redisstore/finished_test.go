package redisstore_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

func scanFinished(t *testing.T, l *redisstore.Ledger, v redisstore.View, page int, now time.Time) []string {
	t.Helper()
	var out []string
	cur := redisstore.Cursor{}
	for i := 0; ; i++ {
		es, more, err := l.ScanFinished(context.Background(), v, cur, page, now)
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

// TestFinishedMailIsListed: an email that becomes SENT or CANCELLED enters a finished index per
// bucket, is listed newest final first across pages and buckets (once each), counted per final
// status, read only within the retention, and trimmed by later final changes — on a single
// server and on a Redis Cluster.
func TestFinishedMailIsListed(t *testing.T) {
	for _, tc := range []struct {
		name string
		rdb  func(t *testing.T) redis.UniversalClient
	}{
		{"single", func(t *testing.T) redis.UniversalClient { return redistest.Start(t).Client(t) }},
		{"cluster", func(t *testing.T) redis.UniversalClient {
			return redistest.Start(t, redistest.WithCluster()).ClusterClient(t)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { testFinishedMail(t, tc.rdb(t)) })
	}
}

func testFinishedMail(t *testing.T, rdb redis.UniversalClient) {
	ctx := context.Background()
	l := redisstore.New(rdb, time.Hour, 0)
	var sent, cancelled []string // newest final first
	for i := range 30 {
		id := fmt.Sprintf("f-%02d", i)
		buckets := []string{redisstore.BucketUser("max")}
		if i%2 == 0 {
			buckets = append(buckets, redisstore.BucketMailbox("info"))
		}
		if _, _, err := l.Submit(ctx, viewEmail(id, t0, buckets...), ev); err != nil {
			t.Fatal(err)
		}
		e, err := l.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		// Three share each millisecond: the order must still be total and stable across pages.
		c := redisstore.Change{Status: outbox.StatusSent, At: t0.Add(time.Duration(i/3) * time.Millisecond)}
		if i%5 == 4 {
			c.Status = outbox.StatusCancelled
			cancelled = append([]string{id}, cancelled...)
		} else {
			sent = append([]string{id}, sent...)
		}
		if err := l.Apply(ctx, e, c, evf); err != nil {
			t.Fatal(err)
		}
	}
	// One stays open: it is in no finished index.
	if _, _, err := l.Submit(ctx, viewEmail("f-open", t0, redisstore.BucketUser("max")), ev); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(time.Minute)
	maxAndInfo := redisstore.View{Tenant: "kanzlei", Buckets: []string{redisstore.BucketUser("max"), redisstore.BucketMailbox("info")}}

	t.Run("newest final first, every page size, each email once", func(t *testing.T) {
		for _, page := range []int{1, 4, 7, 100} {
			got := scanFinished(t, l, maxAndInfo, page, now)
			if len(got) != 30 || len(slices.Compact(slices.Sorted(slices.Values(got)))) != 30 {
				t.Fatalf("page size %d: %d listed, duplicates or gaps: %v", page, len(got), got)
			}
			// f-NN became final at millisecond NN/3.
			finalMS := func(id string) int { n, _ := strconv.Atoi(id[2:]); return n / 3 }
			if !slices.IsSortedFunc(got, func(a, b string) int { return finalMS(b) - finalMS(a) }) {
				t.Errorf("page size %d: order %v, want the newest final first", page, got)
			}
		}
	})
	t.Run("by final status", func(t *testing.T) {
		v := maxAndInfo
		v.Statuses = []outbox.Status{outbox.StatusCancelled}
		got := scanFinished(t, l, v, 2, now)
		if !slices.Equal(got, cancelled) {
			t.Errorf("cancelled %v, want %v", got, cancelled)
		}
		v.Statuses = []outbox.Status{outbox.StatusSent}
		if got := scanFinished(t, l, v, 5, now); len(got) != len(sent) {
			t.Errorf("sent %v, want %v", got, sent)
		}
	})
	t.Run("counted once per email", func(t *testing.T) {
		counts, err := l.CountFinished(ctx, maxAndInfo, now)
		if err != nil || counts[outbox.StatusSent] != int64(len(sent)) || counts[outbox.StatusCancelled] != int64(len(cancelled)) {
			t.Errorf("counts %v (%v), want %d sent and %d cancelled", counts, err, len(sent), len(cancelled))
		}
		info := redisstore.View{Tenant: "kanzlei", Buckets: []string{redisstore.BucketMailbox("info")}}
		if counts, _ := l.CountFinished(ctx, info, now); counts[outbox.StatusSent]+counts[outbox.StatusCancelled] != 15 {
			t.Errorf("info counts %v, want 15", counts)
		}
	})
	t.Run("other buckets and tenants see none", func(t *testing.T) {
		for _, v := range []redisstore.View{
			{Tenant: "kanzlei", Buckets: []string{redisstore.BucketUser("eva")}},
			{Tenant: "andere", Buckets: []string{redisstore.BucketAll, redisstore.BucketUser("max")}},
		} {
			if got := scanFinished(t, l, v, 10, now); len(got) != 0 {
				t.Errorf("%v lists %v", v, got)
			}
			if counts, _ := l.CountFinished(ctx, v, now); counts[outbox.StatusSent] != 0 {
				t.Errorf("%v counts %v", v, counts)
			}
		}
	})
	t.Run("only the retained window is read", func(t *testing.T) {
		// f-00..f-02 became final at t0; an hour and a millisecond later they are past it.
		later := t0.Add(time.Hour + time.Millisecond)
		got := scanFinished(t, l, maxAndInfo, 10, later)
		if len(got) != 27 || slices.Contains(got, "f-00") {
			t.Errorf("after the retention of the first three: %v", got)
		}
		counts, _ := l.CountFinished(ctx, maxAndInfo, later)
		if counts[outbox.StatusSent]+counts[outbox.StatusCancelled] != 27 {
			t.Errorf("after the retention of the first three: counts %v", counts)
		}
	})
	t.Run("a later final change trims what is past the retention, and the index expires", func(t *testing.T) {
		e, err := l.Get(ctx, "f-open")
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Apply(ctx, e, redisstore.Change{Status: outbox.StatusSent, At: t0.Add(time.Hour + 2*time.Millisecond)}, evf); err != nil {
			t.Fatal(err)
		}
		v := redisstore.View{Tenant: "kanzlei", Buckets: []string{redisstore.BucketUser("max")}, Statuses: []outbox.Status{outbox.StatusSent}}
		counts, _ := l.CountFinished(ctx, v, t0) // a window from an hour before t0: everything left
		// In f-open's partition, the index lost the sent mail final more than an hour before
		// f-open (f-00..f-05 but the cancelled f-04); other partitions keep theirs until a final
		// change of their own, and readers skip them by the window.
		wantGone := 0
		for _, id := range []string{"f-00", "f-01", "f-02", "f-03", "f-05"} {
			if l.Partition(id) == l.Partition("f-open") {
				wantGone++
			}
		}
		if wantGone == 0 {
			t.Fatal("no old sent mail shares f-open's partition: the test trims nothing")
		}
		if got := counts[outbox.StatusSent]; got != int64(len(sent)+1-wantGone) {
			t.Errorf("sent in max's indexes after the trim: %d, want %d", got, len(sent)+1-wantGone)
		}
		keys, err := keysMatching(ctx, rdb, "pm:ob:*:t:kanzlei:f:*")
		if err != nil || len(keys) == 0 {
			t.Fatalf("finished indexes %v (%v)", keys, err)
		}
		for _, k := range keys {
			if ttl := rdb.PTTL(ctx, k).Val(); ttl <= 59*time.Minute || ttl > time.Hour {
				t.Errorf("%s: TTL %s, want the retention after its newest entry", k, ttl)
			}
		}
	})
}

// keysMatching lists keys on every master (a cluster client's KEYS goes to one node).
func keysMatching(ctx context.Context, rdb redis.UniversalClient, pattern string) ([]string, error) {
	if c, ok := rdb.(*redis.ClusterClient); ok {
		var out []string
		err := c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			ks, err := n.Keys(ctx, pattern).Result()
			out = append(out, ks...)
			return err
		})
		return out, err
	}
	return rdb.Keys(ctx, pattern).Result()
}
