package redisx

import (
	"context"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Partition counts a deployment may choose (REDIS_PARTITIONS). The lower bound is the layout
// every deployment had before the count became a setting; the upper one keeps the loops and
// streams that run per partition (dispatcher lanes, relay streams) within reason.
const (
	// DefaultPartitions is the count of a deployment that never chose one: the layout of every
	// deployment created before the count was a setting, so their data stays where it is.
	DefaultPartitions = 16
	// MinPartitions and MaxPartitions bound REDIS_PARTITIONS.
	MinPartitions = 16
	MaxPartitions = 1024
)

// PartitionsError is why a service refuses to start on data written with another partition
// count: every key's place depends on the count, so a service running with another one would
// not find the data, and mail would wait in indexes no dispatcher reads.
type PartitionsError struct {
	// Key is where the keyspace's count is recorded.
	Key string
	// Configured is the count the service was started with; Recorded the one the data has.
	Configured, Recorded int
}

// Error names the variable, both counts and what to do.
func (e *PartitionsError) Error() string {
	return fmt.Sprintf("REDIS_PARTITIONS is %d, but the data in Redis was written with %d partitions (recorded in %s): "+
		"the partition count is chosen when a deployment is created and cannot change afterwards; set REDIS_PARTITIONS=%d",
		e.Configured, e.Recorded, e.Key, e.Recorded)
}

// checkPartitionsScript records a keyspace's partition count once and returns the recorded one.
// KEYS[1] the record, KEYS[2] a key every deployment of the keyspace wrote before the record
// existed (it must share the record's slot). ARGV[1] the configured count, ARGV[2] the count of
// a deployment without a record (DefaultPartitions).
// Returns the recorded count. Invariant: once written the record never changes, and data
// written before it existed is recorded with the count it was written with.
var checkPartitionsScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
local n = ARGV[1]
if redis.call('EXISTS', KEYS[2]) == 1 then n = ARGV[2] end
redis.call('SET', KEYS[1], n)
return n
`)

// CheckPartitions makes sure a keyspace's data was written with n partitions: it records n under
// key if the keyspace has no record yet, and returns a *PartitionsError if the recorded count is
// another. A keyspace with data but no record (legacy exists: e.g. partition 0's event stream,
// which every start of a service creates) was written before the count was a setting, with
// DefaultPartitions, and gets that recorded. key and legacy must share a hash slot.
func CheckPartitions(ctx context.Context, rdb redis.UniversalClient, key, legacy string, n int) error {
	got, err := checkPartitionsScript.Run(ctx, rdb, []string{key, legacy}, n, DefaultPartitions).Text()
	if err != nil {
		return fmt.Errorf("check the partition count in %s: %w", key, err)
	}
	recorded, err := strconv.Atoi(got)
	if err != nil {
		return fmt.Errorf("check the partition count: %s holds %q, not a number", key, got)
	}
	if recorded != n {
		return &PartitionsError{Key: key, Configured: n, Recorded: recorded}
	}
	return nil
}

// CheckPartitionCount refuses a partition count outside MinPartitions..MaxPartitions; 0 (a
// service's Deps left unset: DefaultPartitions) passes. Services check their Deps with it, since
// not every caller builds them from a validated REDIS_PARTITIONS.
func CheckPartitionCount(n int) error {
	if n != 0 && (n < MinPartitions || n > MaxPartitions) {
		return fmt.Errorf("%d partitions is outside %d..%d (REDIS_PARTITIONS)", n, MinPartitions, MaxPartitions)
	}
	return nil
}
