package redistest_test

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/testkit/redistest"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }

// TestSuite: in cluster mode, the shared cluster is empty for each test and keeps a test's
// data when that test asks again; in standalone mode each call is a server of its own.
func TestSuite(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []string{"standalone", "cluster"} {
		t.Run(mode, func(t *testing.T) {
			t.Setenv(redistest.TopologyEnv, mode)
			for i := range 2 {
				func() {
					// A test of its own: Cleanup runs at its end, as for a top-level test.
					t.Run("test", func(t *testing.T) {
						rdb := redistest.Suite(t)
						if err := rdb.Get(ctx, "left").Err(); !errors.Is(err, redis.Nil) {
							t.Errorf("run %d: GET left = %v, want redis.Nil (empty)", i, err)
						}
						if err := rdb.Set(ctx, "left", "v", 0).Err(); err != nil {
							t.Fatal(err)
						}
						if mode == "cluster" {
							if _, ok := rdb.(*redis.ClusterClient); !ok {
								t.Errorf("Suite in cluster mode = %T, want *redis.ClusterClient", rdb)
							}
							if got := redistest.Suite(t).Get(ctx, "left").Val(); got != "v" {
								t.Errorf("a second Suite of the same test reads %q, want its data %q", got, "v")
							}
						}
					})
				}()
			}
		})
	}
}
