package redisx_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

// TestOpenTopologies connects through REDIS_URL's three forms, each with TLS and an ACL user
// (the kit's servers refuse plain connections and the default user), runs a script and a
// pipeline over keys of many slots, and checks that every write was confirmed by a replica of
// the master that took it (WithReplicaAcks): the replica holds it the moment the call returns.
func TestOpenTopologies(t *testing.T) {
	ctx := context.Background()
	secure := []redistest.Option{redistest.WithTLS(), redistest.WithUser("postamt", "pw-"+secret)}
	tests := []struct {
		name  string
		start func(t *testing.T) (url, ca string, replicaHas func(key string) bool)
		want  string
	}{
		{"standalone", func(t *testing.T) (string, string, func(string) bool) {
			s := redistest.Start(t, secure...)
			return s.URL(), s.CACertFile(), nil
		}, "*redis.Client"},
		{"sentinel", func(t *testing.T) (string, string, func(string) bool) {
			set := redistest.StartSentinel(t, secure...)
			replicas := set.Replicas(t)
			return set.URL(), set.CACertFile(), func(key string) bool {
				for _, r := range replicas {
					if n, _ := r.Client(t).Exists(ctx, key).Result(); n != 1 {
						return false
					}
				}
				return true
			}
		}, "*redis.Client"},
		{"cluster", func(t *testing.T) (string, string, func(string) bool) {
			c := redistest.StartCluster(t, secure...)
			return c.URL(), c.CACertFile(), func(key string) bool {
				for _, r := range replicasOf(t, c, c.MasterFor(t, key)) {
					rc := r.Client(t)
					if err := rc.ReadOnly(ctx).Err(); err != nil {
						return false
					}
					if n, _ := rc.Exists(ctx, key).Result(); n != 1 {
						return false
					}
				}
				return true
			}
		}, "*redis.ClusterClient"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, ca, replicaHas := tt.start(t)
			if !strings.HasPrefix(url, "rediss") || !strings.Contains(url, "postamt:") {
				t.Fatalf("the kit's URL %s is not TLS with credentials", redisx.Redact(url))
			}
			// Without the CA the server's certificate is not trusted; with a wrong password the
			// user is refused.
			if c, err := redisx.Open(ctx, url, redisx.WithPingTimeout(3*time.Second), redisx.WithRetries(-1, 1)); err == nil {
				c.Close()
				t.Error("Open without the CA succeeded")
			}
			wrong := strings.Replace(url, "pw-"+secret, "wrong", 1)
			if c, err := redisx.Open(ctx, wrong, redisx.WithTLSCAFile(ca), redisx.WithPingTimeout(3*time.Second), redisx.WithRetries(-1, 1)); err == nil {
				c.Close()
				t.Error("Open with a wrong password succeeded")
			} else if strings.Contains(err.Error(), "pw-"+secret) || strings.Contains(err.Error(), "wrong") {
				t.Errorf("error %q shows a password", err)
			}

			var opts []redisx.Option
			opts = append(opts, redisx.WithTLSCAFile(ca))
			if replicaHas != nil {
				opts = append(opts, redisx.WithReplicaAcks(1, time.Second))
			}
			c, err := redisx.Open(ctx, url, opts...)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer c.Close()
			if got := fmt.Sprintf("%T", c); got != tt.want {
				t.Errorf("client is %s, want %s", got, tt.want)
			}
			script := redis.NewScript(`redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])`)
			for p := range 16 {
				tag := fmt.Sprintf("{ob%d}", p)
				if err := script.Run(ctx, c, []string{tag + "a", tag + "n"}, "v").Err(); err != nil {
					t.Fatalf("script in %s: %v", tag, err)
				}
				if replicaHas != nil && !replicaHas(tag+"a") {
					t.Errorf("a replica lacks %sa when the script returned", tag)
				}
			}
			_, err = c.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i := range 16 {
					p.Set(ctx, fmt.Sprintf("{mb%d}p", i), i, 0)
				}
				return nil
			})
			if err != nil {
				t.Fatalf("pipeline over 16 slots: %v", err)
			}
			if replicaHas != nil {
				for i := range 16 {
					if k := fmt.Sprintf("{mb%d}p", i); !replicaHas(k) {
						t.Errorf("a replica lacks %s when the pipeline returned", k)
					}
				}
			}
		})
	}
}

// TestFailoverUnderWrites kills the master under a steady stream of confirmed writes, on a
// Sentinel set and on a Cluster: the client finds the promoted replica by itself, writes succeed
// again within a bound, and every write that was confirmed (returned nil) is there afterwards.
// Writes that failed meanwhile are allowed: their callers were told (ErrNotReplicated or a
// connection error) and retry.
func TestFailoverUnderWrites(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		start func(t *testing.T) (url string, kill func())
	}{
		{"sentinel", func(t *testing.T) (string, func()) {
			set := redistest.StartSentinel(t)
			return set.URL(), func() { set.KillMaster(t) }
		}},
		{"cluster", func(t *testing.T) (string, func()) {
			c := redistest.StartCluster(t)
			return c.URL(), func() {
				// With one replica per master the promoted one has none left, and its writes
				// cannot be confirmed until the failed node is back, as its replica (Kubernetes
				// restarts the pod); the prod overlay runs two replicas per master for this.
				m := c.MasterFor(t, "{w}")
				c.KillMaster(t, m)
				m.Restart(t)
				c.WaitHealthy(t)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, kill := tt.start(t)
			c, err := redisx.Open(ctx, url, redisx.WithReplicaAcks(1, 500*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var (
				mu        sync.Mutex
				confirmed []int
				failed    atomic.Int64
				stop      atomic.Bool
			)
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					for i := w; !stop.Load(); i += 4 {
						cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
						err := c.SAdd(cctx, "{w}set", i).Err()
						cancel()
						if err != nil {
							failed.Add(1)
							time.Sleep(20 * time.Millisecond)
							continue
						}
						mu.Lock()
						confirmed = append(confirmed, i)
						mu.Unlock()
					}
				})
			}
			count := func() int {
				mu.Lock()
				defer mu.Unlock()
				return len(confirmed)
			}
			waitMore := func(what string, than int) {
				deadline := time.Now().Add(30 * time.Second)
				for count() <= than+50 {
					if time.Now().After(deadline) {
						stop.Store(true)
						wg.Wait()
						t.Fatalf("%s: no confirmed writes for 30 s (%d confirmed, %d failed)", what, count(), failed.Load())
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			waitMore("before the kill", 0)
			kill()
			waitMore("after the failover", count())
			stop.Store(true)
			wg.Wait()
			members, err := c.SMembers(ctx, "{w}set").Result()
			if err != nil {
				t.Fatal(err)
			}
			have := make(map[string]bool, len(members))
			for _, m := range members {
				have[m] = true
			}
			lost := 0
			for _, i := range confirmed {
				if !have[fmt.Sprint(i)] {
					lost++
				}
			}
			t.Logf("%d writes confirmed, %d failed during the failover, %d confirmed writes lost", len(confirmed), failed.Load(), lost)
			if lost > 0 {
				t.Errorf("%d confirmed writes are gone after the failover", lost)
			}
		})
	}
}

// replicasOf are the running nodes of c that replicate master.
func replicasOf(t *testing.T, c *redistest.Cluster, master *redistest.Server) []*redistest.Server {
	t.Helper()
	port := master.Addr()[strings.LastIndexByte(master.Addr(), ':')+1:]
	var out []*redistest.Server
	for _, n := range c.Nodes() {
		info, err := n.Client(t).Info(context.Background(), "replication").Result()
		if err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_port:"+port+"\r") {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no replica of %s", master.Addr())
	}
	return out
}
