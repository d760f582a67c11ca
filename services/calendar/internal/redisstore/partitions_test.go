package redisstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
	"github.com/postamt/postamt/services/calendar/internal/redisstore"
)

// TestPartitionCount runs the store with a count other than the default: a tenant of a
// partition beyond 16 gets its CalDAV delivery queued in that partition's push due index, the
// wake-up names that partition, and the count is recorded so that a store of another count
// refuses the data.
func TestPartitionCount(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := redisstore.New(rdb, redisstore.Options{Partitions: 64})
	if err := s.CheckPartitions(ctx); err != nil {
		t.Fatalf("fresh Redis with 64: %v", err)
	}
	if got := len(s.EventStreams()); got != 64 || s.Partitions() != 64 {
		t.Fatalf("event streams = %d, partitions = %d; want 64", got, s.Partitions())
	}
	tenant := "kanzlei"
	for i := 0; s.PartitionOf(tenant) < 16; i++ {
		tenant = "kanzlei-" + string(rune('a'+i))
	}
	n := s.PartitionOf(tenant)
	if n != redisx.Partition(tenant, 64) {
		t.Fatalf("PartitionOf = %d, want FNV-1a mod 64 = %d", n, redisx.Partition(tenant, 64))
	}
	sub := rdb.Subscribe(ctx, redisstore.NotifyChannel)
	t.Cleanup(func() { _ = sub.Close() })
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := s.Enqueue(ctx, tenant, &calendar.Entry{ID: "e1", Owner: "huber", Revision: 1}, calendar.TargetCalDAV, true, now, ""); err != nil {
		t.Fatal(err)
	}
	m, err := sub.ReceiveMessage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := redisstore.ParseNotification(m.Payload); !ok || got.Kind != 'p' || got.Partition != n {
		t.Errorf("notification %q = %+v, want a push wake-up of partition %d", m.Payload, got, n)
	}
	due, err := s.ClaimDuePush(ctx, n, now.Add(time.Second), now.Add(time.Minute), 10)
	if err != nil || len(due) != 1 || due[0].Tenant != tenant || due[0].EntryID != "e1" {
		t.Errorf("ClaimDuePush(%d) = %+v, %v; want e1 of %s", n, due, err, tenant)
	}
	var pe *redisx.PartitionsError
	if err := redisstore.New(rdb, redisstore.Options{}).CheckPartitions(ctx); !errors.As(err, &pe) || pe.Recorded != 64 || pe.Configured != 16 {
		t.Errorf("a store of 16 on data of 64: %v, want a PartitionsError", err)
	}
}
