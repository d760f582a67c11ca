package redisstore_test

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// TestHeadsWithManyPartitions: with more partitions than one round trip reads n of each, Heads
// reads in two, and its first n are still exactly the first n in claim order over every
// partition's indexes (priority, oldest first by headsGrain, partition, due) — the same as
// reading each partition in full.
func TestHeadsWithManyPartitions(t *testing.T) {
	ctx := context.Background()
	l := redisstore.New(redistest.Start(t).Client(t), time.Hour, 64)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 400 {
		// Distinct due times over 1.2 s (several grains); some partitions get much more than
		// others, so the first n mix few and many partitions.
		id := fmt.Sprintf("h-%d", i)
		if i%4 == 0 {
			for j := 0; l.Partition(id) != 5; j++ {
				id = fmt.Sprintf("h-%d-%d", i, j)
			}
		}
		submit(t, l, id, 1+rng.IntN(3), t0.Add(time.Duration(rng.IntN(1200))*time.Millisecond+time.Duration(i)*time.Microsecond))
	}
	parts := make([]int, l.Partitions())
	for p := range parts {
		parts[p] = p
	}
	now := t0.Add(2 * time.Second)
	var all []redisstore.Candidate
	for _, p := range parts {
		got, err := l.Heads(ctx, lane, []int{p}, now, 400)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, got...)
	}
	slices.SortFunc(all, func(a, b redisstore.Candidate) int {
		if a.Priority != b.Priority {
			return a.Priority - b.Priority
		}
		if ga, gb := a.Due/100, b.Due/100; ga != gb {
			return cmp.Compare(ga, gb)
		}
		if a.Partition != b.Partition {
			return a.Partition - b.Partition
		}
		return cmp.Compare(a.Due, b.Due)
	})
	for _, n := range []int{17, 32, 64, 200} {
		got, err := l.Heads(ctx, lane, parts, now, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) < n {
			t.Fatalf("n=%d: %d candidates", n, len(got))
		}
		for i := range n {
			if got[i].ID != all[i].ID {
				t.Fatalf("n=%d: candidate %d is %+v, want %+v", n, i, got[i], all[i])
			}
		}
		// Every partition with due mail shows in the result, so a lane learns which are drained.
		seen := map[int]bool{}
		for _, c := range got {
			seen[c.Partition] = true
		}
		for _, c := range all {
			if !seen[c.Partition] {
				t.Fatalf("n=%d: partition %d has due mail but no candidate", n, c.Partition)
			}
		}
	}
}
