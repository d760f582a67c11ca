package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
)

// LaneStat is what the metrics read of one connector of a tenant, over every partition.
type LaneStat struct {
	Lane
	// Due is the mail due now and not claimed: QUEUED, SCHEDULED and PENDING_RETRY mail whose
	// due time has come, and SENDING mail whose claim's lease ran out (its holder died).
	Due int64
	// OldestDue is the earliest due time of that mail, the lease-expired excepted; zero when
	// none is due.
	OldestDue time.Time
	// Sending is the mail in SENDING: claimed by a replica, in conversation or about to be.
	Sending int64
	// HeldUntil is when the connector's wait for the relay ends (its limits, or a back-off
	// after throttling replies; Hold); zero when it does not wait.
	HeldUntil time.Time
}

// MetricsLockKey elects the one outbox replica that samples the lanes' gauges
// (gauges.Sampler.LockKey); it lives in the connectors' slot.
const MetricsLockKey = connTag + ":metrics-lock"

// LaneStats reads the lanes' due backlog, oldest due time, SENDING count and wait for the
// relay. It reads each partition's ready index first (ZRANGE 0 -1: the lanes with mail in any of
// their indexes there, which every script that adds mail to a lane index keeps; a claim removes
// a lane only when all four of its indexes are empty), then, per lane and partition it names,
// 4 ZCOUNT, 3 ZRANGE 0 0 and 1 ZCARD (O(log n) each), and one GET per lane: two pipelines, no
// scan. Its cost so grows with the (lane, partition) pairs that hold mail, not with every
// connector times every partition (BenchmarkLaneStats). Metrics samplers call it on an
// interval, never a scrape.
func (l *Ledger) LaneStats(ctx context.Context, lanes []Lane, now time.Time) ([]LaneStat, error) {
	ready := l.rdb.Pipeline()
	members := make([]*redis.StringSliceCmd, l.parts)
	for p := range l.parts {
		members[p] = ready.ZRange(ctx, readyKey(p), 0, -1)
	}
	if _, err := ready.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("lane stats: ready indexes: %w", err)
	}
	active := make([]map[string]bool, l.parts)
	for p := range l.parts {
		active[p] = make(map[string]bool, len(members[p].Val()))
		for _, m := range members[p].Val() {
			active[p][m] = true
		}
	}
	pipe := l.rdb.Pipeline()
	nowMS := strconv.FormatInt(ms(now), 10)
	type reads struct {
		due     [4]*redis.IntCmd
		heads   [3]*redis.ZSliceCmd
		sending *redis.IntCmd
	}
	all := make([][]*reads, len(lanes))
	held := make([]*redis.StringCmd, len(lanes))
	for i, ln := range lanes {
		held[i] = pipe.Get(ctx, heldKey(ln.Tenant, ln.Connector))
		all[i] = make([]*reads, l.parts)
		member := ln.Member()
		for p := range l.parts {
			if !active[p][member] {
				continue // no mail of the lane in this partition
			}
			r := &reads{}
			all[i][p] = r
			for idx := range 4 {
				r.due[idx] = pipe.ZCount(ctx, laneIndexKey(p, ln, idx), "-inf", nowMS)
			}
			for prio := 1; prio <= 3; prio++ {
				r.heads[prio-1] = pipe.ZRangeWithScores(ctx, laneIndexKey(p, ln, prio), 0, 0)
			}
			r.sending = pipe.ZCard(ctx, leaseKey(p, ln.Tenant, ln.Connector))
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("lane stats: %w", err)
	}
	out := make([]LaneStat, len(lanes))
	for i, ln := range lanes {
		st := LaneStat{Lane: ln}
		var oldest int64 = -1
		for _, r := range all[i] {
			if r == nil {
				continue
			}
			for _, c := range r.due {
				st.Due += c.Val()
			}
			for _, h := range r.heads {
				if zs := h.Val(); len(zs) > 0 && int64(zs[0].Score) <= ms(now) && (oldest < 0 || int64(zs[0].Score) < oldest) {
					oldest = int64(zs[0].Score)
				}
			}
			st.Sending += r.sending.Val()
		}
		if oldest >= 0 {
			st.OldestDue = time.UnixMilli(oldest)
		}
		st.HeldUntil = heldUntil(held[i].Val(), now)
		out[i] = st
	}
	return out, nil
}

// StatusCounts counts the tenants' mail in each of statuses, from the tenant-wide view index
// of every partition (one ZCARD each, O(1)).
func (l *Ledger) StatusCounts(ctx context.Context, tenants []string, statuses []outbox.Status) (map[outbox.Status]int64, error) {
	pipe := l.rdb.Pipeline()
	cmds := make(map[outbox.Status][]*redis.IntCmd, len(statuses))
	for _, s := range statuses {
		for _, t := range tenants {
			for p := range l.parts {
				cmds[s] = append(cmds[s], pipe.ZCard(ctx, indexKey(p, t, BucketAll, s)))
			}
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("status counts: %w", err)
	}
	out := make(map[outbox.Status]int64, len(statuses))
	for s, cs := range cmds {
		out[s] = 0
		for _, c := range cs {
			out[s] += c.Val()
		}
	}
	return out, nil
}
