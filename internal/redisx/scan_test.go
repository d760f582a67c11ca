package redisx_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

// TestScanKeys finds every matching key once on one server and on every master of a Redis
// Cluster, whichever slot the key hashes to, and none that does not match.
func TestScanKeys(t *testing.T) {
	ctx := context.Background()
	for name, start := range map[string]func(t *testing.T) redis.UniversalClient{
		"server":  func(t *testing.T) redis.UniversalClient { return redistest.Start(t).Client(t) },
		"cluster": func(t *testing.T) redis.UniversalClient { return redistest.StartCluster(t).Client(t) },
	} {
		t.Run(name, func(t *testing.T) {
			c := start(t)
			var want []string
			for i := range 300 {
				k := fmt.Sprintf("pm:x:{p%d}:e:%d", i%17, i)
				want = append(want, k)
				if err := c.Set(ctx, k, "1", 0).Err(); err != nil {
					t.Fatal(err)
				}
				if err := c.Set(ctx, fmt.Sprintf("pm:x:{p%d}:b:%d", i%17, i), "1", 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
			var mu sync.Mutex
			var got []string
			err := redisx.ScanKeys(ctx, c, "pm:x:{p*}:e:*", 50, func(_ context.Context, keys []string) error {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, keys...)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(got)
			got = slices.Compact(got) // SCAN may report a key twice; ScanKeys says so
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("found %d keys, want the %d record keys", len(got), len(want))
			}
		})
	}
}
