package redistest_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

func TestStartCluster(t *testing.T) {
	ctx := context.Background()
	begin := time.Now()
	c := redistest.StartCluster(t)
	t.Logf("6-node cluster up in %s", time.Since(begin).Round(time.Millisecond))
	rdb := c.Client(t)

	t.Run("shape and URL", func(t *testing.T) {
		if got, want := len(c.Nodes()), 6; got != want {
			t.Errorf("nodes = %d, want %d", got, want)
		}
		if got, want := len(c.Masters(t)), 3; got != want {
			t.Errorf("masters = %d, want %d", got, want)
		}
		u := c.URL()
		// The services strip "+cluster"; go-redis reads the rest.
		opts, err := redis.ParseClusterURL("redis" + u[len("redis+cluster"):])
		if err != nil {
			t.Fatalf("ParseClusterURL(%q): %v", u, err)
		}
		if got, want := len(opts.Addrs), 6; got != want {
			t.Errorf("URL %s has %d addresses, want %d", u, got, want)
		}
	})

	t.Run("a key survives KillMaster of its master", func(t *testing.T) {
		// The write and its WAIT on one connection to the key's master: WAIT counts the replicas
		// that have this connection's writes, so the key has reached the replica before the
		// master dies (a WAIT through the cluster client goes to any node and proves nothing,
		// which under load lost the key to the failover).
		master := c.MasterFor(t, "survivor")
		mc := master.Client(t)
		conn := mc.Conn()
		defer conn.Close()
		if err := conn.Set(ctx, "survivor", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if n, err := conn.Do(ctx, "WAIT", 1, 10_000).Int(); err != nil || n < 1 {
			t.Fatalf("WAIT = %d, %v: the replica has not the key", n, err)
		}
		begin := time.Now()
		c.KillMaster(t, master)
		t.Logf("failover in %s", time.Since(begin).Round(time.Millisecond))
		if got := c.MasterFor(t, "survivor"); got == master {
			t.Fatalf("the killed master %s still serves the key", master.Addr())
		}
		// A client's first commands after the failover may still go to the dead master's address
		// until it reloads the slot map; it must get there without help.
		var got string
		poll.Eventually(t, "the key read back through the old client", func() bool {
			var err error
			got, err = rdb.Get(ctx, "survivor").Result()
			if errors.Is(err, redis.Nil) {
				t.Fatal("the key is gone after the failover")
			}
			return err == nil
		})
		if got != "v" {
			t.Errorf("GET after failover = %q, want %q", got, "v")
		}
		if got, err := c.Client(t).Get(ctx, "survivor").Result(); err != nil || got != "v" {
			t.Errorf("GET through a new client = %q, %v; want %q", got, err, "v")
		}
		master.Restart(t)
		c.WaitHealthy(t)
		if got := len(c.Masters(t)); got != 3 {
			t.Errorf("masters after the old one rejoined = %d, want 3", got)
		}
	})

	t.Run("MigrateSlot moves a key while a writer runs", func(t *testing.T) {
		key := "{mig}k"
		if err := rdb.Set(ctx, key, "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			if err := rdb.Set(ctx, fmt.Sprintf("{mig}%d", i), i, 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		from := c.MasterFor(t, key)
		var to *redistest.Server
		for _, m := range c.Masters(t) {
			if m != from {
				to = m
				break
			}
		}
		var (
			wg      sync.WaitGroup
			stop    = make(chan struct{})
			writes  atomic.Int64
			errMu   sync.Mutex
			lastErr error
		)
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := rdb.Incr(ctx, "{mig}counter").Err(); err != nil {
					errMu.Lock()
					lastErr = err
					errMu.Unlock()
					return
				}
				writes.Add(1)
			}
		})
		c.MigrateSlot(t, ctx, c.Slot(t, key), to, redistest.MigrateBatch(2), redistest.MigratePause(20*time.Millisecond))
		close(stop)
		wg.Wait()
		if lastErr != nil {
			t.Errorf("INCR during the migration: %v", lastErr)
		}
		if got := c.MasterFor(t, key); got != to {
			t.Errorf("slot served by %s after MigrateSlot, want %s", got.Addr(), to.Addr())
		}
		if got, err := rdb.Get(ctx, key).Result(); err != nil || got != "v" {
			t.Errorf("GET after migration = %q, %v", got, err)
		}
		n, err := rdb.Get(ctx, "{mig}counter").Int64()
		if err != nil || n != writes.Load() {
			t.Errorf("counter = %d, %v; want the %d increments made", n, err, writes.Load())
		}
		// The key now lives on to: a plain client of to reads it without redirection.
		if got, err := to.Client(t).Get(ctx, key).Result(); err != nil || got != "v" {
			t.Errorf("GET on the new owner directly = %q, %v", got, err)
		}
	})

	t.Run("Flush empties every master", func(t *testing.T) {
		c.Flush(t)
		if err := rdb.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			if n := m.DBSize(ctx).Val(); n != 0 {
				return errors.New(m.Options().Addr + " is not empty")
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	})
}
