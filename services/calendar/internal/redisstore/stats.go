package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
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
