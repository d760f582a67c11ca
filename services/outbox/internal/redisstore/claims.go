package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
)

// This file is the dispatcher's side of the ledger: which lanes (connectors) of a partition have
// due mail, the heads of a lane's due indexes, claims under a lease with a fencing token, and the
// renewal of leases while their mail is held. See docs/outbox-design.md, "Dispatch".

// Ready returns up to limit lanes of partition p whose ready score is at or before now, and the
// earliest ready score after now (ok false when there is none), so the partition's loop hands
// the first to their lanes and sleeps until the second.
func (l *Ledger) Ready(ctx context.Context, p int, now time.Time, limit int) (due []Lane, next time.Time, ok bool, err error) {
	pipe := l.rdb.Pipeline()
	nowMS := strconv.FormatInt(ms(now), 10)
	dueCmd := pipe.ZRangeArgs(ctx, redis.ZRangeArgs{Key: readyKey(p), Start: "-inf", Stop: nowMS, ByScore: true, Count: int64(limit)})
	nextCmd := pipe.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{Key: readyKey(p), Start: "(" + nowMS, Stop: "+inf", ByScore: true, Count: 1})
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, time.Time{}, false, fmt.Errorf("read ready lanes: %w", err)
	}
	for _, m := range dueCmd.Val() {
		if ln, ok := ParseLane(m); ok {
			due = append(due, ln)
		}
	}
	if z := nextCmd.Val(); len(z) > 0 {
		return due, time.UnixMilli(int64(z[0].Score)).UTC(), true, nil
	}
	return due, time.Time{}, false, nil
}

// Candidate is a due email at the head of one of its lane's indexes, as Heads read it.
type Candidate struct {
	ID        string
	Partition int
	// Priority is the index it was found in: 1..3 the priorities, 0 the lease index (mail whose
	// holder's lease ran out, taken over before anything else).
	Priority int
	// Due is its score in the due index, milliseconds.
	Due int64
}

// Heads reads up to n due emails of lane in each of the partitions parts, in one round trip:
// for each partition the first n of the lease index and of each priority's index with a score
// at or before now. The result is in claim order: mail whose lease ran out first (a crashed
// worker's mail must not wait behind a backlog), then high before normal before low, then oldest first across
// partitions at the granularity of headsGrain, and within that partition by partition, so that a
// claim of a backlog takes its emails from few partitions (one script each) instead of a few
// from every one.
//
// With many partitions (len(parts)·n above headsOnePass) reading n of every index would move
// len(parts)·n emails to choose n, so Heads reads in two round trips instead: the head of every
// index, then, for each index whose head is among the first n in claim order, as many as can
// still be among them. The first n of the result are the same either way; the rest holds at
// least the head of every index with due mail.
func (l *Ledger) Heads(ctx context.Context, lane Lane, parts []int, now time.Time, n int) ([]Candidate, error) {
	if len(parts)*n <= headsOnePass {
		reads := make([]headRead, 0, 4*len(parts))
		for _, p := range parts {
			for idx := range 4 {
				reads = append(reads, headRead{p: p, idx: idx, count: n})
			}
		}
		out, err := l.readHeads(ctx, lane, reads, now)
		sortHeads(out)
		return out, err
	}
	reads := make([]headRead, 0, 4*len(parts))
	for _, p := range parts {
		for idx := range 4 {
			reads = append(reads, headRead{p: p, idx: idx, count: 1})
		}
	}
	heads, err := l.readHeads(ctx, lane, reads, now)
	if err != nil {
		return nil, err
	}
	sortHeads(heads)
	// An index's emails come after its head, and the head of rank k comes after k others, so
	// that index can hold at most n-k of the first n.
	reads = reads[:0]
	again := make(map[headRead]bool, n)
	for k, c := range heads[:min(n, len(heads))] {
		reads = append(reads, headRead{p: c.Partition, idx: c.Priority, count: n - k})
		again[headRead{p: c.Partition, idx: c.Priority}] = true
	}
	out, err := l.readHeads(ctx, lane, reads, now)
	if err != nil {
		return nil, err
	}
	for _, c := range heads {
		if !again[headRead{p: c.Partition, idx: c.Priority}] {
			out = append(out, c)
		}
	}
	sortHeads(out)
	return out, nil
}

// headsOnePass bounds the emails one Heads round trip may read (partitions times n): beyond it
// Heads reads in two. At the default 16 partitions and a claim batch of up to 64, one.
const headsOnePass = 1024

// headRead is one index of a lane Heads reads: partition p, index idx (laneIndexKey), the first
// count due emails.
type headRead struct{ p, idx, count int }

// readHeads reads the due emails of reads in one pipeline.
func (l *Ledger) readHeads(ctx context.Context, lane Lane, reads []headRead, now time.Time) ([]Candidate, error) {
	pipe := l.rdb.Pipeline()
	cmds := make([]*redis.ZSliceCmd, len(reads))
	nowMS := strconv.FormatInt(ms(now), 10)
	for i, r := range reads {
		cmds[i] = pipe.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
			Key: laneIndexKey(r.p, lane, r.idx), Start: "-inf", Stop: nowMS, ByScore: true, Count: int64(r.count),
		})
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read due emails: %w", err)
	}
	var out []Candidate
	for i, c := range cmds {
		for _, z := range c.Val() {
			id, _ := z.Member.(string)
			out = append(out, Candidate{ID: id, Partition: reads[i].p, Priority: reads[i].idx, Due: int64(z.Score)})
		}
	}
	return out, nil
}

// sortHeads puts candidates in claim order (Heads).
func sortHeads(out []Candidate) {
	slices.SortFunc(out, func(a, b Candidate) int {
		if a.Priority != b.Priority {
			return a.Priority - b.Priority
		}
		if ga, gb := a.Due/headsGrain, b.Due/headsGrain; ga != gb {
			return cmp.Compare(ga, gb)
		}
		if a.Partition != b.Partition {
			return a.Partition - b.Partition
		}
		return cmp.Compare(a.Due, b.Due)
	})
}

// headsGrain is how finely "oldest first" orders due mail across partitions, in milliseconds:
// finer would spread every claim over all partitions, one script each, for an order no one can
// tell apart from this one.
const headsGrain = 100

// claimScript leases chosen due emails of one lane in one partition to a worker, and sets the
// lane's ready score to its exact earliest due time afterwards.
// KEYS[1] the lane's lease index, KEYS[2..4] its due indexes (high, normal, low), KEYS[5] the
// ready index, then per candidate: its record, then its old and new (SENDING) view index keys.
// ARGV[1] now ms, ARGV[2] lease end ms, ARGV[3] lane member, then per candidate: id, the version
// it was read at, the index it was found in (0 lease, 1..3 the priorities), the number of view
// index keys (old and new, half each), and its index score at the lease end.
// A candidate is claimed only if its version is unchanged since it was chosen and it is still
// due (never early): for each it bumps the fencing token and the version, sets SENDING, moves its
// view entries, and moves it to the lease index scored by the lease end, so a crashed worker's
// mail comes due again there, ahead of every priority.
// A candidate with an empty version was found without a record: if it still has none, its index
// entry goes (a lane must not read it again and again).
// Returns {claimed, ready}: per claimed email {id, fence, version, status before, due before
// (ms)}, and the lane's new ready score (-1: the lane has no mail in this partition).
var claimScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local out = {}
local k = 6
local a = 4
while a <= #ARGV do
  local id, ver, idx, nidx = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local from, rec = KEYS[idx + 1], KEYS[k]
  local score = redis.call('ZSCORE', from, id)
  if ver == '' then
    if redis.call('EXISTS', rec) == 0 then redis.call('ZREM', from, id) end
  elseif score and tonumber(score) <= now then
    local cur = redis.call('HMGET', rec, 'version', 'status', 'fence')
    if cur[1] == ver then
      -- One read and one write of the record (not a read and two HINCRBYs per field): every
      -- redis.call costs its own overhead, and the version check above makes the values exact.
      local fence = (tonumber(cur[3]) or 0) + 1
      local version = tonumber(ver) + 1
      redis.call('HSET', rec, 'status', 3, 'due', ARGV[2], 'sc', ARGV[a + 4], 'fence', fence, 'version', version)
      redis.call('ZREM', from, id)
      redis.call('ZADD', KEYS[1], ARGV[2], id)
      local half = nidx / 2
      for j = 1, half do
        redis.call('ZREM', KEYS[k + j], id)
        redis.call('ZADD', KEYS[k + half + j], ARGV[a + 4], id)
      end
      out[#out + 1] = {id, fence, version, tonumber(cur[2]), score}
    end
  end
  k = k + 1 + nidx
  a = a + 5
end
local best = -1
for i = 1, 4 do
  local f = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if f[2] and (best < 0 or tonumber(f[2]) < best) then best = tonumber(f[2]) end
end
if best < 0 then redis.call('ZREM', KEYS[5], ARGV[3])
else redis.call('ZADD', KEYS[5], best, ARGV[3]) end
return {out, best}
`)

// claimFields are the record fields ClaimLane reads of its candidates and hands to the worker.
var claimFields = []string{"status", "priority", "version", "bk", "tenant", "attempts", "connector", "imported", "from", "ik", "maxa", "ff", "rb", "sa", "sb", "mt", "mr", "lb", "mh"}

// Claimed is what ClaimLane took: the emails, each with its body, and per partition looked at
// the lane's earliest due time there afterwards (zero: none), which tells the dispatcher whether
// the partition still has due mail for the lane.
type Claimed struct {
	Emails []Email
	Next   map[int]time.Time
}

// ClaimLane leases the candidates cands (from Heads) of lane until now+lease, partition by
// partition, and brings the lane's ready score of every partition in parts up to date. Two round
// trips: the candidates' records, then one script per partition with the bodies of the
// candidates read in the same pipeline. Never early: nothing with a due time after now is
// claimed. Each claimed email comes back with Body set, Fence and Version as the claim left them,
// and Before/BeforeDue as it found them. An error wrapping redisx.ErrNotReplicated comes with
// the emails the unconfirmed claim took: the caller must not send them, and hands them back.
func (l *Ledger) ClaimLane(ctx context.Context, lane Lane, parts []int, cands []Candidate, now time.Time, lease time.Duration) (Claimed, error) {
	out := Claimed{Next: make(map[int]time.Time, len(parts))}
	var es []Email
	var orphans []Candidate
	if len(cands) > 0 {
		pipe := l.rdb.Pipeline()
		recs := make([]*redis.SliceCmd, len(cands))
		statics := make([]*redis.StringCmd, len(cands))
		for i, c := range cands {
			recs[i] = pipe.HMGet(ctx, l.recordKey(c.ID), claimFields...)
			statics[i] = pipe.Get(ctx, l.staticKey(c.ID))
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return out, fmt.Errorf("read due records: %w", err)
		}
		for i, c := range cands {
			v := recs[i].Val()
			if len(v) != len(claimFields) || v[0] == nil {
				orphans = append(orphans, c) // its record is gone: the claim drops the due entry
				continue
			}
			e, err := claimedRecord(c.ID, v)
			if err != nil {
				return out, err
			}
			if err := decodeStatic([]byte(statics[i].Val()), &e); err != nil {
				return out, err
			}
			if !inDue(e.Status) || laneOf(&e) != lane {
				continue
			}
			es = append(es, e)
		}
	}
	end := now.Add(lease)
	endMS := ms(end)
	type call struct {
		p      int
		cmd    *redis.Cmd
		bodies *redis.SliceCmd
		ids    []string
		keys   []string
		argv   []any
	}
	calls := make([]call, 0, len(parts))
	pipe := l.rdb.Pipeline()
	for _, p := range parts {
		keys := []string{laneIndexKey(p, lane, 0), laneIndexKey(p, lane, 1), laneIndexKey(p, lane, 2), laneIndexKey(p, lane, 3), readyKey(p)}
		argv := []any{ms(now), endMS, lane.Member()}
		var ids, bodies []string
		for i := range es {
			e := &es[i]
			if l.Partition(e.ID) != p {
				continue
			}
			old, nw := indexKeys(p, e, e.Status), indexKeys(p, e, outbox.StatusSending)
			keys = append(append(append(keys, l.recordKey(e.ID)), old...), nw...)
			argv = append(argv, e.ID, e.Version, indexOf(e), len(old)+len(nw), IndexScore(end, e.ID))
			ids = append(ids, e.ID)
			bodies = append(bodies, l.bodyKey(e.ID))
		}
		for _, o := range orphans {
			if o.Partition == p {
				keys = append(keys, l.recordKey(o.ID))
				argv = append(argv, o.ID, "", o.Priority, 0, 0)
			}
		}
		c := call{p: p, ids: ids, keys: keys, argv: argv, cmd: evalShaOnce(ctx, pipe, claimScript, keys, argv)}
		if len(bodies) > 0 {
			c.bodies = pipe.MGet(ctx, bodies...)
		}
		calls = append(calls, c)
	}
	// A claim the replicas did not confirm (redisx.Acks) was made on the master: its emails come
	// back with the error, for the caller to hand back unsent rather than leave them leased.
	var unconfirmed, skipped error
	var reply redis.Error
	if _, err := pipe.Exec(ctx); errors.Is(err, redisx.ErrNotReplicated) {
		unconfirmed = fmt.Errorf("claim: %w", err)
	} else if err != nil && !errors.As(err, &reply) {
		// Not a reply (a connection lost): whether the scripts ran is unknown; their claims, if
		// made, run out and are taken over. Replies are sorted per partition below.
		return out, fmt.Errorf("claim: %w", err)
	}
	byID := make(map[string]*Email, len(es))
	for i := range es {
		byID[es[i].ID] = &es[i]
	}
	for _, c := range calls {
		res, err := c.cmd.Slice()
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			res, err = claimScript.Run(ctx, l.rdb, c.keys, c.argv...).Slice() // loads the script
		}
		if errors.Is(err, redisx.ErrNotReplicated) {
			unconfirmed = fmt.Errorf("claim: %w", err)
			res, _ = c.cmd.Val().([]any)
			err = nil
			if len(res) != 2 {
				continue
			}
		}
		var rerr redis.Error
		if _, outage := errs.Outage(err); outage && errors.As(err, &rerr) {
			// Redis refused this partition's script without running it (TRYAGAIN while its
			// Cluster slot migrates, CLUSTERDOWN, LOADING): the other partitions' claims stand
			// and are used; this partition stays marked and is claimed again.
			skipped = fmt.Errorf("claim: %w", err)
			continue
		}
		if err != nil {
			return out, fmt.Errorf("claim: %w", err)
		}
		rows, ok1 := res[0].([]any)
		best, ok2 := res[1].(int64)
		if !ok1 || !ok2 {
			return out, errors.New("claim: malformed reply")
		}
		if best >= 0 {
			out.Next[c.p] = time.UnixMilli(best).UTC()
		} else {
			out.Next[c.p] = time.Time{}
		}
		var bodies []any
		if c.bodies != nil {
			bodies = c.bodies.Val()
			if c.bodies.Err() != nil && len(rows) > 0 {
				// The MGET names keys of one slot, but Redis refuses it (TRYAGAIN) while that slot
				// migrates and some keys have moved: read the bodies one by one, each redirected
				// on its own. Without its body a claimed email would fail as "body missing".
				if bodies, err = l.bodiesOneByOne(ctx, c.ids); err != nil {
					// The claims stand without bodies: they run out and are taken over.
					skipped = fmt.Errorf("claim: %w", err)
					continue
				}
			}
		}
		for _, r := range rows {
			row, ok := r.([]any)
			if !ok || len(row) != 5 {
				return out, errors.New("claim: malformed reply")
			}
			id, _ := row[0].(string)
			e := byID[id]
			if e == nil {
				return out, errors.New("claim: reply names an email not asked for")
			}
			e.Fence, _ = row[1].(int64)
			e.Version, _ = row[2].(int64)
			before, _ := row[3].(int64)
			e.Before = outbox.Status(before)
			if s, ok := row[4].(string); ok {
				n, _ := strconv.ParseFloat(s, 64)
				e.BeforeDue = time.UnixMilli(int64(n)).UTC()
			}
			e.Status = outbox.StatusSending
			e.Due, e.Score = end, end
			if i := slices.Index(c.ids, id); i >= 0 && i < len(bodies) {
				if s, ok := bodies[i].(string); ok {
					e.Body = []byte(s)
				}
			}
			out.Emails = append(out.Emails, *e)
		}
	}
	switch {
	case unconfirmed != nil:
		return out, unconfirmed
	case skipped != nil && len(out.Emails) == 0:
		return out, skipped
	}
	return out, nil
}

// onceCmd is a command go-redis must not send again by itself. A Cluster pipeline whose first
// reply on a node is retryable (TRYAGAIN while a slot migrates) is sent again whole, scripts that
// already ran included; a claim run twice finds its own claims at the second run and leaves
// them out of its reply, so they would run out unused and be taken over as "may have been
// sent". With onceCmd the batch is not resent: each partition's reply says what happened.
type onceCmd struct{ *redis.Cmd }

// NoRetry tells go-redis not to resend the command (or its pipeline batch).
func (onceCmd) NoRetry() bool { return true }

// evalShaOnce queues script on pipe as EVALSHA that go-redis never resends.
func evalShaOnce(ctx context.Context, pipe redis.Pipeliner, script *redis.Script, keys []string, argv []any) *redis.Cmd {
	args := make([]any, 0, 3+len(keys)+len(argv))
	args = append(args, "evalsha", script.Hash(), len(keys))
	for _, k := range keys {
		args = append(args, k)
	}
	args = append(args, argv...)
	cmd := redis.NewCmd(ctx, args...)
	_ = pipe.Process(ctx, onceCmd{cmd})
	return cmd
}

// bodiesOneByOne reads the bodies of ids with one GET each (pipelined), as MGET's results.
func (l *Ledger) bodiesOneByOne(ctx context.Context, ids []string) ([]any, error) {
	pipe := l.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.Get(ctx, l.bodyKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read bodies: %w", err)
	}
	out := make([]any, len(ids))
	for i, c := range cmds {
		if v, err := c.Result(); err == nil {
			out[i] = v
		}
	}
	return out, nil
}

// renewScript extends the leases of emails a worker still holds.
// KEYS, per email: its record, its lane's lease index. ARGV[1] the new lease end ms, then per
// email: id, fence.
// An email's lease is extended only while it is SENDING under that fence; the lane's ready score
// is left as it is (a lower bound stays one when scores rise).
// Returns per email 1 (extended) or 0 (the fence was lost: the email was claimed again or has
// left SENDING).
var renewScript = redis.NewScript(`
local out = {}
for i = 2, #ARGV, 2 do
  local rec, due = KEYS[i - 1], KEYS[i]
  local cur = redis.call('HMGET', rec, 'status', 'fence')
  if cur[1] == '3' and cur[2] == ARGV[i + 1] and redis.call('ZSCORE', due, ARGV[i]) then
    redis.call('ZADD', due, ARGV[1], ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
`)

// Renew extends the leases of held emails (claimed, not yet recorded) to until, one script per
// partition in one round trip. It reports per email whether its lease still holds; false means
// another worker has claimed it, or its result was recorded meanwhile.
func (l *Ledger) Renew(ctx context.Context, held []*Email, until time.Time) ([]bool, error) {
	byPart := make(map[int][]int)
	for i, e := range held {
		p := l.Partition(e.ID)
		byPart[p] = append(byPart[p], i)
	}
	type call struct {
		idx []int
		cmd *redis.Cmd
	}
	calls := make([]call, 0, len(byPart))
	pipe := l.rdb.Pipeline()
	for p, idx := range byPart {
		keys := make([]string, 0, 2*len(idx))
		argv := make([]any, 0, 1+2*len(idx))
		argv = append(argv, ms(until))
		for _, i := range idx {
			e := held[i]
			keys = append(keys, l.recordKey(e.ID), leaseKey(p, e.Tenant, e.Connector))
			argv = append(argv, e.ID, e.Fence)
		}
		calls = append(calls, call{idx: idx, cmd: renewScript.EvalSha(ctx, pipe, keys, argv...)})
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) && !redis.HasErrorPrefix(err, "NOSCRIPT") {
		return nil, fmt.Errorf("renew leases: %w", err)
	}
	out := make([]bool, len(held))
	for _, c := range calls {
		res, err := c.cmd.Int64Slice()
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			keys := make([]string, 0, 2*len(c.idx))
			argv := []any{ms(until)}
			for _, i := range c.idx {
				e := held[i]
				keys = append(keys, l.recordKey(e.ID), leaseKey(l.Partition(e.ID), e.Tenant, e.Connector))
				argv = append(argv, e.ID, e.Fence)
			}
			res, err = renewScript.Run(ctx, l.rdb, keys, argv...).Int64Slice()
		}
		if err != nil {
			return nil, fmt.Errorf("renew leases: %w", err)
		}
		if len(res) != len(c.idx) {
			return nil, errors.New("renew leases: malformed reply")
		}
		for j, i := range c.idx {
			out[i] = res[j] == 1
		}
	}
	return out, nil
}

// Ping checks that Redis answers, for a dispatcher that holds nothing to renew during an outage.
func (l *Ledger) Ping(ctx context.Context) error {
	if err := l.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping redis: %w", err)
	}
	return nil
}
