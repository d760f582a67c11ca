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

// DeadTargets are the targets whose dead items are indexed, in the order DeadItems reports them
// (a new slice each call: the gauges' label values, bounded by the code).
func DeadTargets() []calendar.Target {
	return []calendar.Target{calendar.TargetAgent, calendar.TargetCalDAV}
}

// DeadItems are the dead deliveries of one target over every partition: revisions given up that
// wait for a person (a new revision of the entry clears them).
type DeadItems struct {
	Target calendar.Target
	// Count is how many there are.
	Count int64
	// OldestDied is when the longest-standing of them died (for items written before the index
	// existed: when IndexDeadItems found them); zero when there are none.
	OldestDied time.Time
}

// DeadItems reads the partitions' dead indexes with ZCARD and ZRANGE 0 0 per partition and
// target (O(1) and O(log n), one pipeline), for the metrics sampler.
func (s *Store) DeadItems(ctx context.Context) ([]DeadItems, error) {
	targets := DeadTargets()
	pipe := s.rdb.Pipeline()
	cards := make([][]*redis.IntCmd, len(targets))
	heads := make([][]*redis.ZSliceCmd, len(targets))
	for i, g := range targets {
		cards[i] = make([]*redis.IntCmd, s.parts)
		heads[i] = make([]*redis.ZSliceCmd, s.parts)
		for n := range s.parts {
			cards[i][n] = pipe.ZCard(ctx, deadIndexKey(n, g))
			heads[i][n] = pipe.ZRangeWithScores(ctx, deadIndexKey(n, g), 0, 0)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("dead items: %w", err)
	}
	out := make([]DeadItems, len(targets))
	for i, g := range targets {
		out[i].Target = g
		oldest := int64(-1)
		for n := range s.parts {
			out[i].Count += cards[i][n].Val()
			if zs := heads[i][n].Val(); len(zs) > 0 {
				if sc := int64(zs[0].Score); oldest < 0 || sc < oldest {
					oldest = sc
				}
			}
		}
		if oldest >= 0 {
			out[i].OldestDied = time.UnixMilli(oldest)
		}
	}
	return out, nil
}

// IndexDeadItems adds dead items written before the dead index existed (by a version without
// it) to the index, once per deployment: when the marker pm:cal:{cal0}:deadindexed is missing
// it walks the calendar's dead hashes with SCAN (redisx.ScanKeys: about a second per 100,000
// keys of the whole Redis) and then sets the marker. Replicas starting together may both walk;
// indexing is idempotent. The service calls it at start, after CheckPartitions; it returns how
// many items it added.
func (s *Store) IndexDeadItems(ctx context.Context, now time.Time) (int64, error) {
	n, err := s.rdb.Exists(ctx, deadIndexedKey).Result()
	if err != nil {
		return 0, fmt.Errorf("dead index marker: %w", err)
	}
	if n == 1 {
		return 0, nil
	}
	var added int64
	err = redisx.ScanKeys(ctx, s.rdb, prefix+"{cal*}:t:*:q:*:dead", 1000, func(ctx context.Context, ks []string) error {
		for _, key := range ks {
			part, tenant, user, g, ok := parseDeadKey(key)
			if !ok || part >= s.parts {
				continue
			}
			a, err := indexDeadScript.Run(ctx, s.rdb, []string{key, deadIndexKey(part, g)}, tenant+"|"+user+"|", ms(now)).Int64()
			if err != nil {
				return fmt.Errorf("index dead items of %s: %w", key, err)
			}
			added += a
		}
		return nil
	})
	if err != nil {
		return added, err
	}
	if err := s.rdb.Set(ctx, deadIndexedKey, strconv.FormatInt(ms(now), 10), 0).Err(); err != nil {
		return added, fmt.Errorf("dead index marker: %w", err)
	}
	return added, nil
}

// parseDeadKey splits pm:cal:{calN}:t:T:u:U:q:G:dead (tenant and user ids hold no colon).
func parseDeadKey(key string) (part int, tenant, user string, g calendar.Target, ok bool) {
	rest, found := strings.CutPrefix(key, prefix+"{cal")
	if !found {
		return 0, "", "", "", false
	}
	num, rest, found := strings.Cut(rest, "}:t:")
	if !found {
		return 0, "", "", "", false
	}
	part, err := strconv.Atoi(num)
	if err != nil || part < 0 {
		return 0, "", "", "", false
	}
	f := strings.Split(rest, ":")
	if len(f) != 6 || f[1] != "u" || f[3] != "q" || f[5] != "dead" {
		return 0, "", "", "", false
	}
	g = calendar.Target(f[4])
	if g != calendar.TargetAgent && g != calendar.TargetCalDAV {
		return 0, "", "", "", false
	}
	return part, f[0], f[2], g, true
}
