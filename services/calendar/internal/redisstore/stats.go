package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
)

// PushBacklog is what waits for server-side (CalDAV) push, over every partition.
type PushBacklog struct {
	// Pending are the deliveries in the push due indexes: waiting, retrying or held by a worker.
	Pending int64
	// Due are those whose time has come (including held ones whose lease ran out).
	Due int64
	// OldestDue is the earliest due time among them; zero when none is due.
	OldestDue time.Time
}

// PushBacklog reads the push due indexes with ZCARD, ZCOUNT and ZRANGE 0 0 per partition
// (O(log n) each, one pipeline), for the metrics sampler.
func (s *Store) PushBacklog(ctx context.Context, now time.Time) (PushBacklog, error) {
	pipe := s.rdb.Pipeline()
	nowMS := strconv.FormatInt(ms(now), 10)
	cards := make([]*redis.IntCmd, s.parts)
	dues := make([]*redis.IntCmd, s.parts)
	heads := make([]*redis.ZSliceCmd, s.parts)
	for n := range s.parts {
		cards[n] = pipe.ZCard(ctx, pushDueKey(n))
		dues[n] = pipe.ZCount(ctx, pushDueKey(n), "-inf", nowMS)
		heads[n] = pipe.ZRangeWithScores(ctx, pushDueKey(n), 0, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return PushBacklog{}, fmt.Errorf("push backlog: %w", err)
	}
	var b PushBacklog
	oldest := int64(-1)
	for n := range s.parts {
		b.Pending += cards[n].Val()
		b.Due += dues[n].Val()
		if zs := heads[n].Val(); len(zs) > 0 {
			if sc := int64(zs[0].Score); sc <= ms(now) && (oldest < 0 || sc < oldest) {
				oldest = sc
			}
		}
	}
	if oldest >= 0 {
		b.OldestDue = time.UnixMilli(oldest)
	}
	return b, nil
}

// QueueTargets are the targets whose queue items and dead items are indexed, in the order
// QueueTotals reports them (a new slice each call: the gauges' label values, bounded by the code).
func QueueTargets() []calendar.Target {
	return []calendar.Target{calendar.TargetAgent, calendar.TargetCalDAV}
}

// QueueTotals are one target's deliveries over every tenant, user and partition.
type QueueTotals struct {
	Target calendar.Target
	// Pending are the queue items: revisions waiting to be delivered and acknowledged (for an
	// agent, most wait for their user's agent to connect).
	Pending int64
	// OldestQueued is when the longest-waiting of them was queued (a newer revision of the
	// entry keeps that time); zero when none waits.
	OldestQueued time.Time
	// Dead are the deliveries given up, waiting for a person (a new revision of the entry
	// clears them).
	Dead int64
	// OldestDied is when the longest-standing of them died; zero when there are none.
	OldestDied time.Time
}

// QueueTotals reads the partitions' pending and dead indexes with ZCARD and ZRANGE 0 0 per
// partition, target and index (O(1) and O(log n), one pipeline: 8 × REDIS_PARTITIONS
// commands however many users there are), for the metrics sampler. Items written before the
// indexes existed count once IndexQueues has indexed them, with that time as theirs.
func (s *Store) QueueTotals(ctx context.Context) ([]QueueTotals, error) {
	targets := QueueTargets()
	type reads struct {
		card *redis.IntCmd
		head *redis.ZSliceCmd
	}
	pipe := s.rdb.Pipeline()
	read := func(key string) reads {
		return reads{card: pipe.ZCard(ctx, key), head: pipe.ZRangeWithScores(ctx, key, 0, 0)}
	}
	pending := make([][]reads, len(targets))
	dead := make([][]reads, len(targets))
	for i, g := range targets {
		for n := range s.parts {
			pending[i] = append(pending[i], read(pendingIndexKey(n, g)))
			dead[i] = append(dead[i], read(deadIndexKey(n, g)))
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("calendar queue totals: %w", err)
	}
	sum := func(rs []reads) (int64, time.Time) {
		var count int64
		oldest := int64(-1)
		for _, r := range rs {
			count += r.card.Val()
			if zs := r.head.Val(); len(zs) > 0 && (oldest < 0 || int64(zs[0].Score) < oldest) {
				oldest = int64(zs[0].Score)
			}
		}
		if oldest < 0 {
			return count, time.Time{}
		}
		return count, time.UnixMilli(oldest)
	}
	out := make([]QueueTotals, len(targets))
	for i, g := range targets {
		out[i].Target = g
		out[i].Pending, out[i].OldestQueued = sum(pending[i])
		out[i].Dead, out[i].OldestDied = sum(dead[i])
	}
	return out, nil
}

// IndexQueues adds the queue items and dead items written before the pending and dead indexes
// existed (by a version without them) to the indexes, once per deployment: when the marker
// pm:cal:{cal0}:queuesindexed is missing it walks the calendar's queues and dead hashes with
// SCAN (redisx.ScanKeys: about a second per 100,000 keys of the whole Redis), indexing each in
// one script, and then sets the marker. Replicas starting together may both walk; indexing is
// idempotent. The service calls it at start, in the background; it returns how many items it
// added.
func (s *Store) IndexQueues(ctx context.Context, now time.Time) (int64, error) {
	n, err := s.rdb.Exists(ctx, queuesIndexedKey).Result()
	if err != nil {
		return 0, fmt.Errorf("calendar queue index marker: %w", err)
	}
	if n == 1 {
		return 0, nil
	}
	var added int64
	err = redisx.ScanKeys(ctx, s.rdb, prefix+"{cal*}:t:*:u:*:q:*", 1000, func(ctx context.Context, ks []string) error {
		for _, key := range ks {
			q, ok := parseQueueKey(key)
			if !ok || q.part >= s.parts {
				continue
			}
			kind, index := "zset", pendingIndexKey(q.part, q.target)
			if q.dead {
				kind, index = "hash", deadIndexKey(q.part, q.target)
			}
			a, err := indexQueueScript.Run(ctx, s.rdb, []string{key, index}, kind, q.tenant+"|"+q.user+"|", ms(now)).Int64()
			if err != nil {
				return fmt.Errorf("index the calendar items of %s: %w", key, err)
			}
			added += a
		}
		return nil
	})
	if err != nil {
		return added, err
	}
	if err := s.rdb.Set(ctx, queuesIndexedKey, strconv.FormatInt(ms(now), 10), 0).Err(); err != nil {
		return added, fmt.Errorf("calendar queue index marker: %w", err)
	}
	return added, nil
}

// queueKey is a user's queue (pm:cal:{calN}:t:T:u:U:q:G) or dead hash (…:q:G:dead), parsed.
type queueKey struct {
	part         int
	tenant, user string
	target       calendar.Target
	dead         bool
}

// parseQueueKey reads a queue or dead hash key; false for the users' other queue keys (items,
// ERROR answers) and anything else. Tenant and user ids hold no colon (internal/ids).
func parseQueueKey(key string) (queueKey, bool) {
	rest, found := strings.CutPrefix(key, prefix+"{cal")
	if !found {
		return queueKey{}, false
	}
	num, rest, found := strings.Cut(rest, "}:t:")
	if !found {
		return queueKey{}, false
	}
	part, err := strconv.Atoi(num)
	if err != nil || part < 0 {
		return queueKey{}, false
	}
	f := strings.Split(rest, ":")
	if len(f) < 5 || f[1] != "u" || f[3] != "q" {
		return queueKey{}, false
	}
	q := queueKey{part: part, tenant: f[0], user: f[2], target: calendar.Target(f[4])}
	switch {
	case len(f) == 6 && f[5] == "dead":
		q.dead = true
	case len(f) != 5:
		return queueKey{}, false
	}
	if q.target != calendar.TargetAgent && q.target != calendar.TargetCalDAV {
		return queueKey{}, false
	}
	return q, true
}
