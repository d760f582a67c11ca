package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Relays ration (issue 21): Exchange Online takes 30 messages a minute and 10,000 recipients a
// day per mailbox, Gmail and Workspace count recipients in a rolling day, Amazon SES per second
// and per day. A Budget is one such allowance, kept in Redis so that every replica draws from
// the same one, and Take grants sends against a set of budgets (a connector's and its sender's)
// in one script.
//
// A window's count is kept in buckets of a sixtieth of the window each (a second for a minute,
// 24 minutes for a day), in one hash per budget and window with the running sum, so a take
// costs O(1) amortised however many sends the window holds. A bucket leaves the count only once
// it lies wholly outside the window of every send it holds — 61 buckets are counted, the
// current one and the 60 before it — so the count never falls short of the sends in the last
// window: a limit is never exceeded, at the price of up to a sixtieth of the window's allowance
// coming back late. A calendar day (as some providers count) is one counter per local
// date instead.
//
//	{obl:T}:b:BUDGET:U:w:MS   hash    bucket index -> count, "sum", "lo" (the oldest bucket
//	                                  counted); U is m (messages) or r (recipients)
//	{obl:T}:b:BUDGET:U:d:DATE string  the count of a calendar day in the budget's zone
//
// A tenant's budgets share the slot {obl:T}, so one script checks a connector's and a sender's
// together (Redis Cluster) while tenants spread over the cluster: no one slot carries every
// take. A budget is a handful of small keys, and a take is one short script.

// Window is one limit of a Budget: at most Limit units (messages or recipients) in any Length,
// or, with Day set, in each calendar day of Zone.
type Window struct {
	Length time.Duration
	Limit  int
	// Recipients counts recipients rather than messages.
	Recipients bool
	// Day counts calendar days in Zone (Length is ignored).
	Day  bool
	Zone *time.Location
}

// Budget is the set of windows a connector or a sender mailbox is held to.
type Budget struct {
	// Tenant owns the budget; one Take names budgets of one tenant.
	Tenant string
	// Key names the budget within the tenant, e.g. "c:CONNECTOR" or "s:ADDRESS".
	Key     string
	Windows []Window
}

// ErrNeverFits means a send can never pass a budget: it has more recipients than a window
// allows in all. Waiting cannot help; the email must fail (or be split) instead.
var ErrNeverFits = errors.New("more recipients than the relay's limit allows at once")

func limitTag(tenant string) string { return prefix + "{obl:" + tenant + "}" }

const windowBuckets = 60

// takeScript grants sends in order while every window has room.
// KEYS: per window, its key. ARGV[1] now in ms, ARGV[2] the number of windows W, then per
// window: kind ("r" rolling, "d" day), limit, recipients (1/0), bucket width in ms (rolling) or
// the ms at which the day ends (day), TTL in ms; then the sends' recipient counts.
// Returns {granted, retry_at_ms, window}: retry_at_ms is 0 when everything was granted, -1 when
// the next send can never fit; window is the (1-based) window that holds it longest.
var takeScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local w = tonumber(ARGV[2])
local win = {}
local a = 3
for i = 1, w do
  local x = {key = KEYS[i], kind = ARGV[a], limit = tonumber(ARGV[a+1]), rcpt = ARGV[a+2] == '1',
    width = tonumber(ARGV[a+3]), ttl = tonumber(ARGV[a+4])}
  a = a + 5
  if x.kind == 'r' then
    local cur = math.floor(now / x.width)
    local lo = tonumber(redis.call('HGET', x.key, 'lo') or cur)
    local sum = tonumber(redis.call('HGET', x.key, 'sum') or 0)
    local first = cur - ` + strconv.Itoa(windowBuckets) + `
    if lo < first then
      if first - lo > ` + strconv.Itoa(windowBuckets) + ` then
        redis.call('DEL', x.key)
        sum = 0
      else
        for b = lo, first - 1 do
          local n = tonumber(redis.call('HGET', x.key, b) or 0)
          if n > 0 then
            sum = sum - n
            redis.call('HDEL', x.key, b)
          end
        end
      end
      lo = first
    end
    x.cur, x.lo, x.sum = cur, lo, sum
  else
    x.sum = tonumber(redis.call('GET', x.key) or 0)
  end
  win[i] = x
end
local granted = 0
local retry = 0
local block = 0
for s = a, #ARGV do
  local r = tonumber(ARGV[s])
  for i = 1, w do
    local x = win[i]
    local need = 1
    if x.rcpt then need = r end
    if need > x.limit then
      retry = -1
      block = i
    elseif x.sum + need > x.limit then
      local t
      if x.kind == 'r' then
        -- the first moment enough of the oldest buckets have left the window
        local freed = 0
        t = (x.cur + 1) * x.width
        for b = x.lo, x.cur do
          freed = freed + tonumber(redis.call('HGET', x.key, b) or 0)
          if x.sum - freed + need <= x.limit then
            t = (b + ` + strconv.Itoa(windowBuckets+1) + `) * x.width
            break
          end
        end
      else
        t = x.width
      end
      if t > retry and retry ~= -1 then
        retry = t
        block = i
      end
    end
  end
  if retry ~= 0 then break end
  for i = 1, w do
    local x = win[i]
    local need = 1
    if x.rcpt then need = r end
    x.sum = x.sum + need
    if x.kind == 'r' then
      redis.call('HINCRBY', x.key, x.cur, need)
    end
  end
  granted = granted + 1
end
for i = 1, w do
  local x = win[i]
  if x.kind == 'r' then
    redis.call('HSET', x.key, 'sum', x.sum, 'lo', x.lo)
  else
    redis.call('SET', x.key, x.sum)
  end
  redis.call('PEXPIRE', x.key, x.ttl)
end
return {granted, retry, block}
`)

// Refusal says why Take granted fewer sends than asked: the earliest time the next one fits,
// and the index in budgets of the budget that holds it longest (a connector's limit holds all of
// its mail; a sender's only that sender's).
type Refusal struct {
	RetryAt time.Time
	Budget  int
	// Pace is the time the refusing window allows per unit (its length over its limit; a
	// calendar day's 24 hours over its limit): mail waiting for the same budget is spread by it
	// over the windows to come rather than all coming due at RetryAt.
	Pace time.Duration
}

// Take grants, in order, as many of the sends (each given by its number of recipients) as
// every window of every budget allows at now, and counts them. When it grants fewer than asked,
// the Refusal says until when and which budget; ErrNeverFits (with the budget) when the next
// send never can. Replicas call it concurrently; each grant is counted once.
func (l *Ledger) Take(ctx context.Context, budgets []Budget, recipients []int, now time.Time) (granted int, refused Refusal, err error) {
	if len(recipients) == 0 {
		return 0, Refusal{}, nil
	}
	var keys []string
	var owner []int          // owner[i]: the budget of window i
	var pace []time.Duration // pace[i]: window i's time per unit
	argv := []any{now.UnixMilli(), 0}
	for bi, b := range budgets {
		if b.Tenant != budgets[0].Tenant {
			return 0, Refusal{}, fmt.Errorf("budgets of tenants %q and %q in one take", budgets[0].Tenant, b.Tenant)
		}
		tag := limitTag(b.Tenant)
		for _, w := range b.Windows {
			if w.Limit <= 0 {
				continue
			}
			unit := "m"
			rcpt := 0
			if w.Recipients {
				unit, rcpt = "r", 1
			}
			if w.Day {
				zone := w.Zone
				if zone == nil {
					zone = time.UTC
				}
				local := now.In(zone)
				y, m, d := local.Date()
				end := time.Date(y, m, d+1, 0, 0, 0, 0, zone)
				keys, owner = append(keys, tag+":b:"+b.Key+":"+unit+":d:"+local.Format("20060102")), append(owner, bi)
				pace = append(pace, 24*time.Hour/time.Duration(w.Limit))
				argv = append(argv, "d", w.Limit, rcpt, end.UnixMilli(), (48 * time.Hour).Milliseconds())
				continue
			}
			if w.Length < windowBuckets*time.Millisecond {
				return 0, Refusal{}, fmt.Errorf("budget %s: a window of %s is shorter than %d ms", b.Key, w.Length, windowBuckets)
			}
			// Rounded up: 60 buckets must span at least the window.
			width := (w.Length.Milliseconds() + windowBuckets - 1) / windowBuckets
			keys, owner = append(keys, tag+":b:"+b.Key+":"+unit+":w:"+strconv.FormatInt(w.Length.Milliseconds(), 10)), append(owner, bi)
			pace = append(pace, w.Length/time.Duration(w.Limit))
			argv = append(argv, "r", w.Limit, rcpt, width, (2 * w.Length).Milliseconds())
		}
	}
	if len(keys) == 0 {
		return len(recipients), Refusal{}, nil
	}
	argv[1] = len(keys)
	for _, r := range recipients {
		argv = append(argv, max(r, 1))
	}
	res, err := takeScript.Run(ctx, l.rdb, keys, argv...).Int64Slice()
	if err != nil || len(res) != 3 {
		return 0, Refusal{}, fmt.Errorf("take from the relay's budget: %w (%v)", err, res)
	}
	granted = int(res[0])
	if w := int(res[2]); w >= 1 && w <= len(owner) {
		refused.Budget, refused.Pace = owner[w-1], pace[w-1]
	}
	switch {
	case res[1] < 0:
		return granted, refused, ErrNeverFits
	case res[1] > 0:
		refused.RetryAt = time.UnixMilli(res[1]).UTC()
	}
	return granted, refused, nil
}

// heldKey records until when, and why, a connector's mail waits for the relay: "MS|reason", with
// the wait's end as its expiry, for every replica's API (a lane's hold itself is the replica's).
func heldKey(tenant, connector string) string { return limitTag(tenant) + ":held:" + connector }

// holdScript extends a connector's recorded wait, never shortens it.
// KEYS[1] held key; ARGV[1] until ms, ARGV[2] reason. Returns 1 when written.
var holdScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  local ms = tonumber(string.match(cur, '^(%d+)|'))
  if ms and ms >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PXAT', ARGV[1])
return 1
`)

// Hold records that a connector's mail waits until until (the relay's limits, or a back-off
// after throttling replies) and why, so GetConnector shows it whichever replica is asked. A later
// wait extends it; it expires by itself.
func (l *Ledger) Hold(ctx context.Context, tenant, connector string, until time.Time, reason string) error {
	if err := holdScript.Run(ctx, l.rdb, []string{heldKey(tenant, connector)}, until.UnixMilli(), reason).Err(); err != nil {
		return fmt.Errorf("record the connector's wait: %w", err)
	}
	return nil
}

// Held returns until when and why a connector's mail waits; the zero time when it does not.
func (l *Ledger) Held(ctx context.Context, tenant, connector string, now time.Time) (time.Time, string, error) {
	v, err := l.rdb.Get(ctx, heldKey(tenant, connector)).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, "", nil
	}
	if err != nil {
		return time.Time{}, "", fmt.Errorf("read the connector's wait: %w", err)
	}
	until := heldUntil(v, now)
	if until.IsZero() {
		return time.Time{}, "", nil
	}
	_, reason, _ := strings.Cut(v, "|")
	return until, reason, nil
}

// heldUntil reads the end of a recorded wait ("MS|reason"); zero when it is past, malformed or
// absent.
func heldUntil(v string, now time.Time) time.Time {
	msStr, _, _ := strings.Cut(v, "|")
	ms, err := strconv.ParseInt(msStr, 10, 64)
	if err != nil || !time.UnixMilli(ms).After(now) {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// Waiting counts a connector's open mail in its lane's indexes over every partition: due is
// what is due now or in conversation (SENDING), later what comes due after now (scheduled, or
// waiting for a retry, a back-off or a limit). CONNECTOR_DISABLED and FAILED mail is in neither.
// One pipelined round trip of four counts per partition, for an admin's question, not a hot path.
func (l *Ledger) Waiting(ctx context.Context, lane Lane, now time.Time) (due, later int64, err error) {
	pipe := l.rdb.Pipeline()
	nowMS := strconv.FormatInt(now.UnixMilli(), 10)
	var dues, laters []*redis.IntCmd
	for p := range l.parts {
		dues = append(dues, pipe.ZCard(ctx, laneIndexKey(p, lane, 0)))
		for idx := 1; idx <= 3; idx++ {
			dues = append(dues, pipe.ZCount(ctx, laneIndexKey(p, lane, idx), "-inf", nowMS))
			laters = append(laters, pipe.ZCount(ctx, laneIndexKey(p, lane, idx), "("+nowMS, "+inf"))
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return 0, 0, fmt.Errorf("count the connector's mail: %w", err)
	}
	for _, c := range dues {
		due += c.Val()
	}
	for _, c := range laters {
		later += c.Val()
	}
	return due, later, nil
}
