package redisx_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

func TestCheckPartitions(t *testing.T) {
	ctx := context.Background()
	const key, legacy = "pm:x:{x0}:layout", "pm:x:{x0}:events"
	t.Run("a fresh keyspace records the count and keeps it", func(t *testing.T) {
		rdb := redistest.Start(t).Client(t)
		if err := redisx.CheckPartitions(ctx, rdb, key, legacy, 32); err != nil {
			t.Fatalf("first start with 32: %v", err)
		}
		if err := redisx.CheckPartitions(ctx, rdb, key, legacy, 32); err != nil {
			t.Fatalf("restart with 32: %v", err)
		}
		if got, want := rdb.Get(ctx, key).Val(), "32"; got != want {
			t.Errorf("record = %q, want %q", got, want)
		}
		err := redisx.CheckPartitions(ctx, rdb, key, legacy, 16)
		var pe *redisx.PartitionsError
		if !errors.As(err, &pe) || pe.Configured != 16 || pe.Recorded != 32 {
			t.Fatalf("restart with 16: error = %v, want a PartitionsError 16 vs 32", err)
		}
	})
	t.Run("data without a record was written with 16", func(t *testing.T) {
		rdb := redistest.Start(t).Client(t)
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: legacy, Values: []any{"k", "v"}}).Err(); err != nil {
			t.Fatal(err)
		}
		err := redisx.CheckPartitions(ctx, rdb, key, legacy, 32)
		var pe *redisx.PartitionsError
		if !errors.As(err, &pe) || pe.Configured != 32 || pe.Recorded != 16 {
			t.Fatalf("upgrade with 32: error = %v, want a PartitionsError 32 vs 16", err)
		}
		// The operator reads what to do from the message.
		for _, want := range []string{"REDIS_PARTITIONS", "32", "16", "chosen when a deployment is created"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message %q does not name %q", err, want)
			}
		}
		if err := redisx.CheckPartitions(ctx, rdb, key, legacy, 16); err != nil {
			t.Fatalf("upgrade with 16: %v", err)
		}
	})
}
