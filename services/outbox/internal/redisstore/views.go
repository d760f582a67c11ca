package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
)

// OpenStatuses are the statuses the outbox lists: everything not final.
var OpenStatuses = []outbox.Status{
	outbox.StatusScheduled, outbox.StatusQueued, outbox.StatusSending, outbox.StatusPendingRetry,
	outbox.StatusConnectorDisabled, outbox.StatusFailed,
}

// View selects emails of a tenant through its indexes: the union of Buckets in Statuses (all
// open statuses when empty). Final (SENT, CANCELLED) mail is in no view index but in the
// finished indexes, which ScanFinished and CountFinished read (finished.go).
type View struct {
	Tenant   string
	Buckets  []string
	Statuses []outbox.Status
}

func (v View) statuses() []outbox.Status {
	if len(v.Statuses) == 0 {
		return OpenStatuses
	}
	return v.Statuses
}

// Cursor is a position in a view's order (index score, then id); the zero Cursor is the start.
type Cursor struct {
	Score int64
	ID    string
}

func (c Cursor) less(score int64, id string) bool {
	return c.Score < score || c.Score == score && c.ID < id
}

// Entry is an email's place in a view.
type Entry struct {
	Score int64
	ID    string
}

// tieSlack is how many entries beyond the limit each index read takes, to step over entries that
// tie with the cursor's score (same millisecond and the same 10 hash bits: rare).
const tieSlack = 16

// Scan returns up to limit entries of v after cursor, in (score, id) order, and whether more may
// follow. One pipelined round trip over every partition, bucket and status; an email in several
// of the caller's buckets is returned once.
func (l *Ledger) Scan(ctx context.Context, v View, after Cursor, limit int) ([]Entry, bool, error) {
	if limit <= 0 || len(v.Buckets) == 0 {
		return nil, false, nil
	}
	min := "-inf"
	if after.ID != "" || after.Score != 0 {
		min = strconv.FormatInt(after.Score, 10)
	}
	pipe := l.rdb.Pipeline()
	var cmds []*redis.ZSliceCmd
	for p := range l.parts {
		for _, b := range v.Buckets {
			for _, s := range v.statuses() {
				cmds = append(cmds, pipe.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
					Key: indexKey(p, v.Tenant, b, s), Start: min, Stop: "+inf", ByScore: true, Count: int64(limit + tieSlack),
				}))
			}
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, false, fmt.Errorf("scan view: %w", err)
	}
	all, more := mergeEntries(cmds, limit, after.less, false)
	return all, more, nil
}

// mergeEntries merges index reads (each of at most limit+tieSlack entries) into one page: the
// entries keep accepts, each id once, sorted by (score, id) ascending or, with desc, descending,
// cut to limit. more reports whether any read was full or the page was cut: there may be more.
func mergeEntries(cmds []*redis.ZSliceCmd, limit int, keep func(score int64, id string) bool, desc bool) ([]Entry, bool) {
	seen := make(map[string]struct{})
	var all []Entry
	more := false
	for _, c := range cmds {
		zs := c.Val()
		if len(zs) == limit+tieSlack {
			more = true
		}
		for _, z := range zs {
			id, _ := z.Member.(string)
			score := int64(z.Score)
			if !keep(score, id) {
				continue
			}
			if _, dup := seen[id]; dup {
				continue
			}
			seen[id] = struct{}{}
			all = append(all, Entry{Score: score, ID: id})
		}
	}
	slices.SortFunc(all, func(a, b Entry) int {
		c := cmp.Compare(a.Score, b.Score)
		if c == 0 {
			c = strings.Compare(a.ID, b.ID)
		}
		if desc {
			return -c
		}
		return c
	})
	if len(all) > limit {
		return all[:limit], true
	}
	return all, more
}

// countScript counts a view's emails per status in one partition, each email once however many
// of the view's buckets list it.
// KEYS: per status, nb index keys (one per bucket). ARGV[1] nb, ARGV[2] the lowest score counted
// ("-inf": every entry; finished indexes count their retained window).
// With one bucket it is a ZCARD (or ZCOUNT) per status. With several it starts from the largest
// set and, for each smaller one, counts the members no larger set holds: the cost is the size of
// the smaller sets (a user's own buckets), never the tenant-wide one. It runs as EVALSHA_RO: a
// read, which waits for no replica (redisx.Acks).
var countScript = redis.NewScript(`
local nb, lo = tonumber(ARGV[1]), ARGV[2]
local function size(k)
  if lo == '-inf' then return redis.call('ZCARD', k) end
  return redis.call('ZCOUNT', k, lo, '+inf')
end
local out = {}
for s = 0, #KEYS / nb - 1 do
  local sets = {}
  for b = 1, nb do
    local k = KEYS[s * nb + b]
    sets[#sets + 1] = {k = k, n = size(k)}
  end
  table.sort(sets, function(x, y) return x.n > y.n end)
  local total = sets[1].n
  for i = 2, #sets do
    if sets[i].n > 0 then
      for _, id in ipairs(redis.call('ZRANGE', sets[i].k, lo, '+inf', 'BYSCORE')) do
        local dup = false
        for j = 1, i - 1 do
          if redis.call('ZSCORE', sets[j].k, id) then dup = true break end
        end
        if not dup then total = total + 1 end
      end
    end
  end
  out[#out + 1] = total
end
return out
`)

// Count returns the number of v's emails per status (in v's status order). One pipelined round
// trip: a script per partition.
func (l *Ledger) Count(ctx context.Context, v View) (map[outbox.Status]int64, error) {
	return l.count(ctx, v, v.statuses(), indexKey, "-inf")
}

// count runs countScript over the indexes key names for v's buckets in statuses sts, counting
// entries scored lo or more.
func (l *Ledger) count(ctx context.Context, v View, sts []outbox.Status, key func(p int, tenant, bucket string, s outbox.Status) string, lo string) (map[outbox.Status]int64, error) {
	out := make(map[outbox.Status]int64)
	if len(v.Buckets) == 0 {
		return out, nil
	}
	keysOf := func(p int) []string {
		keys := make([]string, 0, len(sts)*len(v.Buckets))
		for _, s := range sts {
			for _, b := range v.Buckets {
				keys = append(keys, key(p, v.Tenant, b, s))
			}
		}
		return keys
	}
	pipe := l.rdb.Pipeline()
	cmds := make([]*redis.Cmd, l.parts)
	for p := range l.parts {
		cmds[p] = countScript.RunRO(ctx, pipe, keysOf(p), len(v.Buckets), lo)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) && !redis.HasErrorPrefix(err, "NOSCRIPT") {
		return nil, fmt.Errorf("count view: %w", err)
	}
	for p, c := range cmds {
		ns, err := c.Int64Slice()
		if err != nil {
			// A pipelined EVALSHA fails with NOSCRIPT on a fresh server: count this partition alone,
			// which loads the script.
			ns, err = countScript.RunRO(ctx, l.rdb, keysOf(p), len(v.Buckets), lo).Int64Slice()
			if err != nil {
				return nil, fmt.Errorf("count view: %w", err)
			}
		}
		for i, n := range ns {
			out[sts[i]] += n
		}
	}
	return out, nil
}
