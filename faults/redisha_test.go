package faults_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postamt/postamt/faults/harness"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

// These tests run the outbox as production does past one machine (issue 16): separate
// `postamt serve` processes on a Redis Cluster of three masters with a replica each, or on a
// Sentinel set, with REDIS_REPLICA_ACKS=1, under a steady load of submits and deliveries. One
// fault per test: a master SIGKILLed (its replica promoted, the node restarted as Kubernetes
// would), a slot moved to another master live, a Sentinel master SIGKILLed. Afterwards every
// email whose submit was answered OK is SENT, and every copy at the relay beyond the first is
// counted as an UNKNOWN attempt.

// haLoad submits batches through the API replica until stopped, each submit with an idempotency
// key and retried while the outbox answers UNAVAILABLE, as the API asks callers to.
type haLoad struct {
	s       *harness.Suite
	stop    atomic.Bool
	done    chan struct{}
	retried atomic.Int64

	mu   sync.Mutex
	mail []harness.Submitted
}

func startLoad(t *testing.T, s *harness.Suite) *haLoad {
	l := &haLoad{s: s, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for round := 0; !l.stop.Load(); round++ {
			got := s.Submit(t, harness.Batch{
				Tenant: tenant, N: 20, Clients: 4, Subject: fmt.Sprintf("HA %d", round),
				RetryFor: 90 * time.Second, Retried: &l.retried,
			})
			l.mu.Lock()
			l.mail = append(l.mail, got...)
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *haLoad) submitted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.mail)
}

// end stops the load and returns every accepted email.
func (l *haLoad) end() []harness.Submitted {
	l.stop.Store(true)
	<-l.done
	return l.mail
}

// haSuite starts the suite on redisURL with replica acknowledgements and a relay that answers
// every message a little late, so mail is in flight whenever the fault comes.
func haSuite(t *testing.T, redisURL string) (*harness.Suite, *harness.Relay) {
	s := harness.Start(t, harness.Options{
		Dispatchers: 2, RedisURL: redisURL,
		Env: map[string]string{"REDIS_REPLICA_ACKS": "1", "REDIS_REPLICA_ACK_TIMEOUT": "1s"},
	})
	relay := s.NewRelay(t)
	relay.Proxy.SetDelay(20 * time.Millisecond)
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: relay, PoolSize: 8})
	return s, relay
}

// underLoad runs fault while the load runs: after some mail has gone out, and for a few seconds
// after the fault, then settles the suite and checks the invariants (finish).
func underLoad(t *testing.T, s *harness.Suite, relay *harness.Relay, what string, fault func()) harness.Tally {
	s.Describe("batches of 20 keyed submits, retried while UNAVAILABLE; 2 dispatchers, relay 20 ms", what)
	l := startLoad(t, s)
	harness.Must(t, "mail flowing before the fault", 60*time.Second, func() bool { return relay.Distinct() >= 100 })
	at := l.submitted()
	start := time.Now()
	fault()
	faultTook := time.Since(start)
	s.RecoverFrom(time.Now())
	harness.Must(t, "submits accepted again after the fault", 60*time.Second, func() bool { return l.submitted() >= at+100 })
	mail := l.end()
	counts, settled := s.WaitSettled(len(mail), 90*time.Second)
	t.Logf("%d emails accepted, %d submits retried after UNAVAILABLE, the fault took %s to heal", len(mail), l.retried.Load(), faultTook.Round(time.Millisecond))
	tally := finish(t, s, mail)
	if !settled {
		t.Errorf("not everything settled: %s", counts)
	}
	return tally
}

// TestRedisClusterMasterKilled: the master that serves the outbox's first partition is
// SIGKILLed under load; its replica is promoted, the clients follow, and the killed node comes
// back as a replica (until then, with one replica per master, that master's writes cannot be
// confirmed and answer UNAVAILABLE).
func TestRedisClusterMasterKilled(t *testing.T) {
	c := redistest.StartCluster(t)
	s, relay := haSuite(t, c.URL())
	underLoad(t, s, relay, "Redis Cluster: a master SIGKILLed, its replica promoted, the node restarted", func() {
		m := c.MasterFor(t, "{ob0}")
		c.KillMaster(t, m)
		m.Restart(t)
		c.WaitHealthy(t)
	})
}

// TestRedisClusterSlotMigrated: the slot of the outbox's first partition moves to another master
// while mail is submitted, claimed and recorded in it: MOVED and ASK are followed, no command
// spans slots, and since no process dies, no email is taken over (no UNKNOWN attempt): what
// Redis refuses while the slot moves (TRYAGAIN for a script whose keys are split between the
// two masters) is done again, never given up or done twice.
func TestRedisClusterSlotMigrated(t *testing.T) {
	c := redistest.StartCluster(t)
	s, relay := haSuite(t, c.URL())
	tally := underLoad(t, s, relay, "Redis Cluster: a partition's slot migrated to another master", func() {
		from := c.MasterFor(t, "{ob0}")
		var to *redistest.Server
		for _, m := range c.Masters(t) {
			if m != from {
				to = m
				break
			}
		}
		c.MigrateSlot(t, context.Background(), c.Slot(t, "{ob0}"), to, redistest.MigrateBatch(5), redistest.MigratePause(20*time.Millisecond))
	})
	if tally.Unknown > 0 {
		t.Errorf("%d UNKNOWN attempts: mail was taken over though no process died", tally.Unknown)
	}
}

// TestRedisSentinelMasterKilled: the Sentinel set's master is SIGKILLed under load; the
// sentinels promote a replica (the other replica confirms writes meanwhile), the services find it
// through the sentinels, and the old master comes back as a replica.
func TestRedisSentinelMasterKilled(t *testing.T) {
	set := redistest.StartSentinel(t)
	s, relay := haSuite(t, set.URL())
	underLoad(t, s, relay, "Redis Sentinel: the master SIGKILLed, a replica promoted, the old master restarted", func() {
		old := set.Master(t)
		set.KillMaster(t)
		set.Restart(t, old)
	})
}
