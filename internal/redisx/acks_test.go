package redisx_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

// waits is how many WAIT commands the server has run.
func waits(t *testing.T, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_wait:calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

// TestReplicaAcks checks the durability rule: with WithReplicaAcks every kind of write returns
// only after a replica confirmed it (the replica holds it when the call returns), reads wait for
// nothing, concurrent writers share confirmations, and with the replica gone a write reports
// ErrNotReplicated — an outage for the edge — while a read still answers.
func TestReplicaAcks(t *testing.T) {
	ctx := context.Background()
	master := redistest.Start(t)
	replica := master.StartReplica(t)
	// Linked before the first write, and a second per confirmation: on a loaded machine a
	// replica's acknowledgement took over 500 ms once (CI, the whole suite running), which failed
	// a write with a live replica.
	replica.WaitLinked(t)
	c, err := redisx.Open(ctx, master.URL(), redisx.WithReplicaAcks(1, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mc, rc := master.Client(t), replica.Client(t)
	script := redis.NewScript(`return redis.call('INCR', KEYS[1])`)

	writes := map[string]func() error{
		"command": func() error { return c.Set(ctx, "{a}k", "v", 0).Err() },
		"script":  func() error { return script.Run(ctx, c, []string{"{a}n"}).Err() },
		"pipeline": func() error {
			_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error { p.Set(ctx, "{a}p", 1, 0); return nil })
			return err
		},
		"transaction": func() error {
			_, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error { p.Set(ctx, "{a}t", 1, 0); return nil })
			return err
		},
		"watch": func() error {
			return c.Watch(ctx, func(tx *redis.Tx) error {
				_, err := tx.TxPipelined(ctx, func(p redis.Pipeliner) error { p.Set(ctx, "{a}w", 1, 0); return nil })
				return err
			}, "{a}w")
		},
	}
	for name, write := range writes {
		before := waits(t, mc)
		if err := write(); err != nil {
			t.Fatalf("%s with a live replica: %v", name, err)
		}
		if waits(t, mc) == before {
			t.Errorf("%s returned without a WAIT on the master", name)
		}
	}
	// What the calls above wrote is on the replica already: each returned after its WAIT.
	for _, k := range []string{"{a}k", "{a}n", "{a}p", "{a}t", "{a}w"} {
		if n, err := rc.Exists(ctx, k).Result(); err != nil || n != 1 {
			t.Errorf("replica lacks %s right after the write returned (exists=%d, %v)", k, n, err)
		}
	}

	t.Run("reads wait for nothing", func(t *testing.T) {
		before := waits(t, mc)
		if err := c.Get(ctx, "{a}k").Err(); err != nil {
			t.Fatal(err)
		}
		if err := redis.NewScript(`return 1`).RunRO(ctx, c, []string{"{a}k"}).Err(); err != nil {
			t.Fatal(err)
		}
		if got := waits(t, mc); got != before {
			t.Errorf("a read ran %d WAITs", got-before)
		}
	})

	t.Run("concurrent writers share confirmations", func(t *testing.T) {
		before := waits(t, mc)
		const writers = 200
		var wg sync.WaitGroup
		errc := make(chan error, writers)
		for i := range writers {
			wg.Go(func() { errc <- c.Set(ctx, "{a}c"+strconv.Itoa(i), i, 0).Err() })
		}
		wg.Wait()
		close(errc)
		for err := range errc {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got := waits(t, mc) - before; got >= writers {
			t.Errorf("%d writers ran %d WAITs, want fewer: confirmations are shared", writers, got)
		}
	})

	t.Run("no replica: the write is not confirmed", func(t *testing.T) {
		replica.Kill()
		err := c.Set(ctx, "{a}lost", "v", 0).Err()
		if !errors.Is(err, redisx.ErrNotReplicated) {
			t.Fatalf("SET without a replica = %v, want ErrNotReplicated", err)
		}
		if dep, ok := errs.Outage(err); !ok || dep != errs.DepRedis {
			t.Errorf("Outage(%v) = %q, %v; want redis, true", err, dep, ok)
		}
		// The master took it: the caller must treat the error as "may have happened".
		if v, _ := mc.Get(ctx, "{a}lost").Result(); v != "v" {
			t.Errorf("master holds %q, want the unconfirmed write", v)
		}
		_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Get(ctx, "{a}k")
			p.Set(ctx, "{a}lost2", 1, 0)
			return nil
		})
		if !errors.Is(err, redisx.ErrNotReplicated) {
			t.Errorf("pipeline without a replica = %v, want ErrNotReplicated", err)
		}
		if v, err := c.Get(ctx, "{a}k").Result(); err != nil || v != "v" {
			t.Errorf("a read without a replica = %q, %v; want the value", v, err)
		}
	})
}

// TestWithoutReplicaAcks: off by default, a write on a master without replicas just succeeds.
func TestWithoutReplicaAcks(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c, err := redisx.Open(ctx, srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n := waits(t, srv.Client(t)); n != 0 {
		t.Errorf("%d WAITs without WithReplicaAcks", n)
	}
}
