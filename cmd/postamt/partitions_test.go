package main

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

// TestServeRefusesAnotherPartitionCount: REDIS_PARTITIONS reaches the service, which refuses
// data recorded with another count instead of serving.
func TestServeRefusesAnotherPartitionCount(t *testing.T) {
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := rdb.Set(ctx, "pm:mb:{mb0}:partitions", "16", 0).Err(); err != nil {
		t.Fatal(err)
	}
	err := serve(ctx, "mailbox", io.Discard, env(map[string]string{
		"REDIS_URL": rs.URL(), "NATS_URL": natstest.Start(t).URL(), "AUTH_HS256_SECRET": "0123456789abcdef0123456789abcdef",
		"GRPC_ADDR": "127.0.0.1:0", "OPS_ADDR": "", "REDIS_PARTITIONS": "32",
	}), nil, libs, nil)
	var pe *redisx.PartitionsError
	if !errors.As(err, &pe) || pe.Configured != 32 || pe.Recorded != 16 {
		t.Fatalf("serve mailbox with REDIS_PARTITIONS=32 on data of 16: %v, want a PartitionsError", err)
	}
}
