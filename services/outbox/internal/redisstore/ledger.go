// Package redisstore is the outbox's ledger in Redis: one record per email, a due-time index per
// partition, and the transitions as Lua scripts that check state and fencing token and append
// their event in the same step. See docs/outbox-design.md for the layout.
//
// This is the first slice of issue 3: submit, claim under a lease with a fencing token, and
// complete. Views, counts, cancel, retry and the other actions build on the same record.
package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
)

// Partitions is the number of email partitions, each with its own due index and event stream.
// Part of the data layout: changing it needs a migration.
const Partitions = 16

const prefix = "pm:ob:"

// Partition returns the partition of an email id; the engine runs one claim loop per partition.
func Partition(emailID string) int {
	return redisx.Partition(emailID, Partitions)
}

func tag(p int) string { return prefix + "{ob" + strconv.Itoa(p) + "}" }

func recordKey(id string) string   { return tag(Partition(id)) + ":e:" + id }
func attemptsKey(id string) string { return tag(Partition(id)) + ":a:" + id }
func bodyKey(id string) string     { return tag(Partition(id)) + ":b:" + id }
func dueKey(p int) string          { return tag(p) + ":due" }
func eventsKey(p int) string       { return tag(p) + ":events" }

// EventStreams returns every partition's event stream, for the relay.
func EventStreams() []string {
	out := make([]string, Partitions)
	for p := range out {
		out[p] = eventsKey(p)
	}
	return out
}

// Email is the part of the record the engine's transitions read and write.
type Email struct {
	ID        string
	Tenant    string
	Status    outbox.Status
	Priority  int // 1 high, 2 normal, 3 low
	Due       time.Time
	Connector string
	Imported  bool
	Attempts  int
	Version   int64
	// Fence is the claim's fencing token; only Complete calls with it are accepted.
	Fence int64
	// From and Rcpts are the SMTP envelope; Body the built message (stored apart, see P8).
	From  string
	Rcpts []string
	Body  []byte
}

// Event is an announcement a transition appends in its own atomic step; its id is derived from
// the email id and the version the transition produces.
type Event struct {
	Subject string
	Msg     proto.Message
}

// Ledger is the outbox's Redis state.
type Ledger struct {
	rdb redis.UniversalClient
}

// New returns a Ledger on rdb.
func New(rdb redis.UniversalClient) *Ledger { return &Ledger{rdb: rdb} }

func ms(t time.Time) int64 { return t.UnixMilli() }

func eventArgs(ctx context.Context, e *Email, version int64, ev Event) ([]any, error) {
	id := e.Tenant + ":email:" + e.ID + ":" + strconv.FormatInt(version, 10)
	return eventbus.Envelope(ctx, id, ev.Subject, e.Tenant, ev.Msg)
}

// submitScript stores a new email and its body and indexes it by due time.
// KEYS[1] record, KEYS[2] partition due index, KEYS[3] partition events, KEYS[4] body.
// ARGV[1] due ms, ARGV[2] email id, ARGV[3..8] event envelope, ARGV[9] body, ARGV[10..] record
// field/value pairs.
// Returns 1, or 0 when the email exists (nothing written). Invariant: a record is in the due
// index exactly while its status is SCHEDULED, QUEUED, PENDING_RETRY or SENDING.
var submitScript = redis.NewScript(eventbus.LuaEmit + `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
redis.call('SET', KEYS[4], ARGV[9])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
postamt_emit(KEYS[3], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
return 1
`)

// Submit stores e (Status SCHEDULED or QUEUED, Version 1) due at e.Due with its event.
func (l *Ledger) Submit(ctx context.Context, e *Email, ev Event) error {
	p := Partition(e.ID)
	env, err := eventArgs(ctx, e, e.Version, ev)
	if err != nil {
		return err
	}
	imported := "0"
	if e.Imported {
		imported = "1"
	}
	argv := append([]any{ms(e.Due), e.ID}, env...)
	argv = append(argv, e.Body,
		"id", e.ID, "tenant", e.Tenant, "status", int(e.Status), "priority", e.Priority, "due", ms(e.Due),
		"connector", e.Connector, "imported", imported, "attempts", 0, "version", e.Version, "fence", 0,
		"from", e.From, "rcpts", strings.Join(e.Rcpts, ","))
	n, err := submitScript.Run(ctx, l.rdb, []string{recordKey(e.ID), dueKey(p), eventsKey(p), bodyKey(e.ID)}, argv...).Int()
	if err != nil {
		return fmt.Errorf("submit %s: %w", e.ID, err)
	}
	if n == 0 {
		return errs.AlreadyExists("email", e.ID)
	}
	return nil
}

// claimScript leases due emails to a worker.
// KEYS[1] due index, KEYS[2..] the candidates' records. ARGV[1] now ms, ARGV[2] lease end ms,
// ARGV[3] batch, ARGV[4..] the candidates' ids (same order as KEYS[2..]).
// Among candidates still due (score <= now) in a claimable status, it takes the batch with the
// highest priority, oldest due first; for each it bumps the fencing token and the version, sets
// SENDING and moves the due score to the lease end, so a crashed worker's mail comes due again.
// Never early: a candidate whose score moved past now is skipped. Returns, per claimed email,
// {id, fence, version, attempts, connector, imported, tenant, from, rcpts}.
var claimScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local cands = {}
for i = 2, #KEYS do
  local id = ARGV[i + 2]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    local st = redis.call('HMGET', KEYS[i], 'status', 'priority')
    local s = tonumber(st[1])
    if s == 1 or s == 2 or s == 3 or s == 4 then
      cands[#cands + 1] = {i = i, id = id, prio = tonumber(st[2]) or 2, due = tonumber(score)}
    end
  end
end
table.sort(cands, function(a, b)
  if a.prio ~= b.prio then return a.prio < b.prio end
  if a.due ~= b.due then return a.due < b.due end
  return a.id < b.id
end)
local out = {}
for n = 1, math.min(#cands, tonumber(ARGV[3])) do
  local c = cands[n]
  local key = KEYS[c.i]
  local fence = redis.call('HINCRBY', key, 'fence', 1)
  local version = redis.call('HINCRBY', key, 'version', 1)
  redis.call('HSET', key, 'status', 3)
  redis.call('ZADD', KEYS[1], ARGV[2], c.id)
  local r = redis.call('HMGET', key, 'attempts', 'connector', 'imported', 'tenant', 'from', 'rcpts')
  out[#out + 1] = {c.id, fence, version, r[1], r[2], r[3], r[4], r[5], r[6]}
end
return out
`)

// Claim leases up to batch emails of partition p that are due at now, until now+lease. It reads
// a window of candidates (4×batch, oldest due first) and claims in one script that declares
// every key it touches.
func (l *Ledger) Claim(ctx context.Context, p int, now time.Time, batch int, lease time.Duration) ([]Email, error) {
	ids, err := l.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{
		Key: dueKey(p), Start: "-inf", Stop: strconv.FormatInt(ms(now), 10), ByScore: true, Count: int64(4 * batch),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("read due emails: %w", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(ids)+1)
	keys = append(keys, dueKey(p))
	argv := make([]any, 0, len(ids)+3)
	argv = append(argv, ms(now), ms(now.Add(lease)), batch)
	for _, id := range ids {
		keys = append(keys, recordKey(id))
		argv = append(argv, id)
	}
	res, err := claimScript.Run(ctx, l.rdb, keys, argv...).Slice()
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	out := make([]Email, 0, len(res))
	for _, r := range res {
		row, ok := r.([]any)
		if !ok || len(row) != 9 {
			return nil, errors.New("claim: malformed reply")
		}
		str := func(i int) string { s, _ := row[i].(string); return s }
		num := func(i int) int64 {
			switch v := row[i].(type) {
			case int64:
				return v
			case string:
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
			return 0
		}
		out = append(out, Email{
			ID: str(0), Fence: num(1), Version: num(2), Attempts: int(num(3)), Connector: str(4),
			Imported: str(5) == "1", Tenant: str(6), Status: outbox.StatusSending, Due: now.Add(lease),
			From: str(7), Rcpts: strings.Split(str(8), ","),
		})
	}
	return out, nil
}

// ErrFenced means the caller no longer holds the email: its lease ran out and another worker
// claimed it, or a person changed it. The caller must drop its result.
var ErrFenced = errs.Aborted("LEASE_LOST", "the email was claimed again or changed; the result was not recorded")

// completeScript records an attempt's result, if the caller still holds the email.
// KEYS[1] record, KEYS[2] due index, KEYS[3] attempt history, KEYS[4] events.
// ARGV[1] fence, ARGV[2] new status, ARGV[3] next due ms or "" (leaves the due index),
// ARGV[4] 1 if the attempt counts, ARGV[5] history entry, ARGV[6] email id, ARGV[7] new version,
// ARGV[8..13] event envelope, ARGV[14..] extra field/value pairs (last error, times).
// Returns the new version, or 0 when the fence or status does not match (nothing written).
var completeScript = redis.NewScript(eventbus.LuaEmit + `
local cur = redis.call('HMGET', KEYS[1], 'fence', 'status', 'version')
if cur[1] ~= ARGV[1] or cur[2] ~= '3' or tonumber(cur[3]) + 1 ~= tonumber(ARGV[7]) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'version', ARGV[7])
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
if #ARGV >= 14 then redis.call('HSET', KEYS[1], unpack(ARGV, 14)) end
redis.call('RPUSH', KEYS[3], ARGV[5])
if ARGV[3] == '' then
  redis.call('ZREM', KEYS[2], ARGV[6])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
  redis.call('HSET', KEYS[1], 'due', ARGV[3])
end
postamt_emit(KEYS[4], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13])
return tonumber(ARGV[7])
`)

// Result is what a worker reports for a claimed email.
type Result struct {
	Decision outbox.Decision
	At       time.Time
	// Entry is the attempt's history entry (encoded by the caller).
	Entry string
	// LastError is shown in the outbox; empty on success.
	LastError string
}

// Complete records r for the claimed email e (as Claim returned it). It fails with ErrFenced
// when e's lease was lost, so a slow worker can never overwrite a newer attempt.
func (l *Ledger) Complete(ctx context.Context, e *Email, r Result, ev Event) (int64, error) {
	p := Partition(e.ID)
	version := e.Version + 1
	env, err := eventArgs(ctx, e, version, ev)
	if err != nil {
		return 0, err
	}
	next := ""
	if r.Decision.Status == outbox.StatusPendingRetry {
		next = strconv.FormatInt(ms(r.At.Add(r.Decision.Delay)), 10)
	}
	counts := "0"
	if r.Decision.ConsumesAttempt {
		counts = "1"
	}
	argv := []any{e.Fence, int(r.Decision.Status), next, counts, r.Entry, e.ID, version}
	argv = append(argv, env...)
	argv = append(argv, "last_attempt", ms(r.At), "last_error", r.LastError)
	n, err := completeScript.Run(ctx, l.rdb, []string{recordKey(e.ID), dueKey(p), attemptsKey(e.ID), eventsKey(p)}, argv...).Int64()
	if err != nil {
		return 0, fmt.Errorf("complete %s: %w", e.ID, err)
	}
	if n == 0 {
		return 0, ErrFenced
	}
	return n, nil
}

// Get reads an email's engine fields, for tests and the API.
func (l *Ledger) Get(ctx context.Context, id string) (*Email, error) {
	h, err := l.rdb.HGetAll(ctx, recordKey(id)).Result()
	if err != nil {
		return nil, fmt.Errorf("read email: %w", err)
	}
	if len(h) == 0 {
		return nil, errs.NotFound("email", id)
	}
	n := func(k string) int64 { v, _ := strconv.ParseInt(h[k], 10, 64); return v }
	return &Email{
		ID: h["id"], Tenant: h["tenant"], Status: outbox.Status(n("status")), Priority: int(n("priority")),
		Due: time.UnixMilli(n("due")).UTC(), Connector: h["connector"], Imported: h["imported"] == "1",
		Attempts: int(n("attempts")), Version: n("version"), Fence: n("fence"),
	}, nil
}

// Body returns the built message of an email.
func (l *Ledger) Body(ctx context.Context, id string) ([]byte, error) {
	b, err := l.rdb.Get(ctx, bodyKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, errs.NotFound("email body", id)
	}
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return b, nil
}

// Earliest returns the earliest due time of partition p, so the dispatcher sleeps until then.
func (l *Ledger) Earliest(ctx context.Context, p int) (time.Time, bool, error) {
	z, err := l.rdb.ZRangeWithScores(ctx, dueKey(p), 0, 0).Result()
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read earliest due: %w", err)
	}
	if len(z) == 0 {
		return time.Time{}, false, nil
	}
	return time.UnixMilli(int64(z[0].Score)).UTC(), true, nil
}
