package redisstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
)

// Finished mail — SENT and CANCELLED — leaves the view indexes, but support still asks "did this
// batch go out?" for as long as the records are kept. The transition that makes an email final
// (applyScript) therefore adds it to a finished index per bucket, in its own partition, scored by
// the final time, so it is listed and counted with the same access as open mail until its
// record expires. The same step trims each index it adds to (at most 100 entries older than the
// retention) and lets the index expire a retention after its newest entry: an index never grows
// beyond what a retention (at worst, in a bucket that stops receiving final mail, two) brings in.

// FinalStatuses are the statuses of finished mail, listed apart from the outbox's open mail.
var FinalStatuses = []outbox.Status{outbox.StatusSent, outbox.StatusCancelled}

// finishedKey is a finished index: tenant T's emails of BUCKET that became final in status s in
// partition p, scored by IndexScore of their final time (sent or cancelled).
func finishedKey(p int, tenant, bucket string, s outbox.Status) string {
	return tag(p) + ":t:" + tenant + ":f:" + bucket + ":" + strconv.Itoa(int(s))
}

// finishedKeys are the finished indexes e enters when it becomes final in status s.
func finishedKeys(p int, e *Email, s outbox.Status) []string {
	out := make([]string, len(e.Buckets))
	for i, b := range e.Buckets {
		out[i] = finishedKey(p, e.Tenant, b, s)
	}
	return out
}

// finalStatuses are v's statuses for a read of the finished indexes: both final ones when v
// names none, and never an open one.
func finalStatuses(v View) []outbox.Status {
	if len(v.Statuses) == 0 {
		return FinalStatuses
	}
	return slices.DeleteFunc(slices.Clone(v.Statuses), func(s outbox.Status) bool { return !s.Final() })
}

// retainedFrom is the lowest index score of mail that is still retained at now: entries below
// it belong to records that have expired (or are about to) and are not read.
func (l *Ledger) retainedFrom(now time.Time) int64 {
	return ms(now.Add(-l.retention)) << 10
}

// ScanFinished returns up to limit entries of v's finished mail after cursor, newest final
// first (score, then id, both descending; the zero Cursor is the newest), and whether more may
// follow. v.Statuses are final statuses (empty: SENT and CANCELLED). Only mail that became
// final within the retention before now is read. One pipelined round trip over every
// partition, bucket and status; an email in several of the caller's buckets is returned once.
// An entry's record may have expired meanwhile: callers skip ids they cannot read.
func (l *Ledger) ScanFinished(ctx context.Context, v View, after Cursor, limit int, now time.Time) ([]Entry, bool, error) {
	sts := finalStatuses(v)
	if limit <= 0 || len(v.Buckets) == 0 || len(sts) == 0 {
		return nil, false, nil
	}
	lo, hi := strconv.FormatInt(l.retainedFrom(now), 10), "+inf"
	if after != (Cursor{}) {
		hi = strconv.FormatInt(after.Score, 10)
	}
	pipe := l.rdb.Pipeline()
	var cmds []*redis.ZSliceCmd
	for p := range l.parts {
		for _, b := range v.Buckets {
			for _, s := range sts {
				cmds = append(cmds, pipe.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
					Key: finishedKey(p, v.Tenant, b, s), Start: hi, Stop: lo, ByScore: true, Rev: true, Count: int64(limit + tieSlack),
				}))
			}
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, false, fmt.Errorf("scan finished mail: %w", err)
	}
	// after.before(score, id): the entry comes after the cursor in the descending order.
	before := func(score int64, id string) bool {
		return after == (Cursor{}) || score < after.Score || score == after.Score && id < after.ID
	}
	all, more := mergeEntries(cmds, limit, before, true)
	return all, more, nil
}

// CountFinished returns the number of v's finished emails per final status that became final
// within the retention before now, each counted once however many of v's buckets list it: a
// ZCOUNT of the retained window per index, in one pipelined round trip of a script per
// partition (as Count). An email whose record expired a moment early (the record's expiry and
// the window are set by two clocks) may still be counted; lists skip it.
func (l *Ledger) CountFinished(ctx context.Context, v View, now time.Time) (map[outbox.Status]int64, error) {
	sts := finalStatuses(v)
	if len(sts) == 0 {
		return map[outbox.Status]int64{}, nil
	}
	return l.count(ctx, v, sts, finishedKey, strconv.FormatInt(l.retainedFrom(now), 10))
}
