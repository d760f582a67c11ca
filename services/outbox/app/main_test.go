package app_test

import (
	"os"
	"testing"

	"github.com/postamt/postamt/internal/testkit/redistest"
)

// TestMain stops the Redis Cluster the tests share when POSTAMT_TEST_REDIS=cluster.
func TestMain(m *testing.M) { os.Exit(redistest.Main(m)) }
