package redistest

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TopologyEnv names the environment variable that chooses the Redis a Suite client talks to:
// "standalone" (or unset) or "cluster". `make test-cluster` sets it.
const TopologyEnv = "POSTAMT_TEST_REDIS"

// Suite returns the Redis the services under test should use, so one service test suite runs
// as a matrix over topologies:
//
//   - standalone (default): a fresh redis-server for tb, exactly Start(tb).Client(tb);
//   - cluster: a client of a 6-node Redis Cluster shared by the whole test binary, since starting
//     one takes seconds. It is emptied (FLUSHALL on every master) when a test takes it while no
//     other test holds it, so tests of one binary that run one after another each start empty,
//     and a test (or its subtests) asking again keeps its data. Parallel tests share it.
//
// Tests that kill or restart their Redis need a Server of their own: use Start.
func Suite(tb testing.TB) redis.UniversalClient {
	tb.Helper()
	switch mode := os.Getenv(TopologyEnv); mode {
	case "", "standalone":
		return Start(tb).Client(tb)
	case "cluster":
		skipUnlessRedis(tb)
		return shared.take(tb)
	default:
		tb.Fatalf("redistest: %s=%q: want standalone or cluster", TopologyEnv, mode)
		return nil
	}
}

// Main runs the tests of m and then stops the cluster Suite shared, if it started one; call it
// from TestMain as os.Exit(redistest.Main(m)). Without it the cluster's processes still die with
// the test binary (the kernel kills them, see setProcAttr) but its temp dir stays behind.
func Main(m *testing.M) int {
	code := m.Run()
	shared.close()
	return code
}

// shared is the cluster of Suite for the test binary.
var shared sharedCluster

type sharedCluster struct {
	mu      sync.Mutex
	cluster *Cluster
	err     error // why the cluster could not start; every later test fails with it
	holders int   // tests that took the cluster and have not finished
}

func (s *sharedCluster) take(tb testing.TB) redis.UniversalClient {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cluster == nil && s.err == nil {
		s.err = s.start()
	}
	if s.err != nil {
		tb.Fatalf("redistest: the shared cluster: %v", s.err)
	}
	if s.holders == 0 {
		if err := s.cluster.flush(); err != nil {
			tb.Fatalf("redistest: the shared cluster: %v", err)
		}
	}
	s.holders++
	tb.Cleanup(func() {
		s.mu.Lock()
		s.holders--
		s.mu.Unlock()
	})
	return s.cluster.Client(tb)
}

func (s *sharedCluster) start() error {
	dir, err := os.MkdirTemp("", "redistest-cluster-")
	if err != nil {
		return err
	}
	c, err := startCluster(dir, newConfig(nil))
	if c != nil {
		c.owned = true
	}
	if err != nil {
		if c != nil {
			c.Close()
		}
		return fmt.Errorf("start: %w", err)
	}
	s.cluster = c
	return nil
}

func (s *sharedCluster) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cluster != nil {
		s.cluster.Close()
		s.cluster = nil
	}
}
