package redistest_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

func TestStartSentinel(t *testing.T) {
	ctx := context.Background()
	begin := time.Now()
	s := redistest.StartSentinel(t)
	t.Logf("sentinel set up in %s", time.Since(begin).Round(time.Millisecond))
	rdb := s.Client(t)

	t.Run("shape and URL", func(t *testing.T) {
		if got, want := len(s.Sentinels()), 3; got != want {
			t.Errorf("sentinels = %d, want %d", got, want)
		}
		if got, want := len(s.Replicas(t)), 2; got != want {
			t.Errorf("replicas = %d, want %d", got, want)
		}
		u := s.URL()
		opts, err := redis.ParseFailoverURL("redis" + strings.TrimPrefix(u, "redis+sentinel"))
		if err != nil {
			t.Fatalf("ParseFailoverURL(%q): %v", u, err)
		}
		if got, want := opts.MasterName, s.MasterName(); got != want {
			t.Errorf("master_name = %q, want %q", got, want)
		}
		if got, want := len(opts.SentinelAddrs), 3; got != want {
			t.Errorf("URL %s has %d sentinels, want %d", u, got, want)
		}
	})

	// Both ways a master changes: the failover client keeps writing through each, and nothing it
	// was told was written is lost to a planned failover.
	t.Run("Failover changes the master while a client writes", func(t *testing.T) {
		old := s.Master(t)
		var (
			wg     sync.WaitGroup
			stop   = make(chan struct{})
			writes atomic.Int64
		)
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if rdb.Incr(ctx, "counter").Err() == nil {
					writes.Add(1)
				}
			}
		})
		begin := time.Now()
		s.Failover(t)
		t.Logf("failover in %s", time.Since(begin).Round(time.Millisecond))
		if got := s.Master(t); got == old {
			t.Fatalf("master after Failover = %s, the old one", got.Addr())
		}
		// The failover client follows the switch on its own (the sentinels announce it): its
		// writes reach the new master.
		reachesMaster(t, rdb, s.Master(t))
		close(stop)
		wg.Wait()
		if writes.Load() == 0 {
			t.Error("no write succeeded during the failover")
		}
	})

	t.Run("KillMaster promotes a replica", func(t *testing.T) {
		old := s.Master(t)
		reachesMaster(t, rdb, old)
		if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.Do(ctx, "WAIT", 2, 1000).Err(); err != nil {
			t.Fatal(err)
		}
		begin := time.Now()
		s.KillMaster(t)
		t.Logf("failover after a kill in %s", time.Since(begin).Round(time.Millisecond))
		if got := s.Master(t); got == old {
			t.Fatalf("master after KillMaster = %s, the killed one", got.Addr())
		}
		reachesMaster(t, rdb, s.Master(t))
		if got, err := rdb.Get(ctx, "k").Result(); err != nil || got != "v" {
			t.Errorf("GET k = %q, %v; want %q", got, err, "v")
		}
		s.Restart(t, old)
		if got, want := len(s.Replicas(t)), 2; got != want {
			t.Errorf("replicas after the old master came back = %d, want %d", got, want)
		}
	})
}

// reachesMaster waits until a write through the failover client rdb is on master.
func reachesMaster(t *testing.T, rdb *redis.Client, master *redistest.Server) {
	t.Helper()
	ctx := context.Background()
	direct := master.Client(t)
	i := 0
	poll.Eventually(t, "a write through the failover client on the master "+master.Addr(), func() bool {
		i++
		if rdb.Set(ctx, "probe", i, 0).Err() != nil {
			return false
		}
		got, err := direct.Get(ctx, "probe").Int()
		return err == nil && got == i
	})
}
