package redisx_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

// TestCoalescer: 200 concurrent callers each get their own replies (and only their own error
// replies), and every command runs exactly once.
func TestCoalescer(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	ctx := context.Background()
	if err := rdb.Set(ctx, "not-a-counter", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	co := redisx.NewCoalescer(rdb)
	const callers = 200
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			var own, shared *redis.IntCmd
			var bad *redis.StatusCmd
			err := co.Do(ctx, func(p redis.Pipeliner) {
				own = p.Incr(ctx, fmt.Sprintf("own:%d", i))
				shared = p.Incr(ctx, "shared")
				if i%10 == 0 {
					bad = p.LSet(ctx, "not-a-counter", 0, "y") // WRONGTYPE for this caller only
				}
			})
			if err != nil {
				t.Error(err)
				return
			}
			if n, err := own.Result(); err != nil || n != 1 {
				t.Errorf("caller %d: own = %d, %v", i, n, err)
			}
			if n, err := shared.Result(); err != nil || n < 1 || n > callers {
				t.Errorf("caller %d: shared = %d, %v", i, n, err)
			}
			if i%10 == 0 && (bad.Err() == nil || !strings.Contains(bad.Err().Error(), "WRONGTYPE")) {
				t.Errorf("caller %d: want its WRONGTYPE, got %v", i, bad.Err())
			}
		})
	}
	wg.Wait()
	if n, err := rdb.Get(ctx, "shared").Int(); err != nil || n != callers {
		t.Fatalf("shared = %d, %v; want every INCR exactly once", n, err)
	}
}
