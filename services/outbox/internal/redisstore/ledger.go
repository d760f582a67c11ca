// Package redisstore is the outbox's state in Redis: one record per email, a due-time index and
// view indexes per partition, connectors and user settings, and every transition as one Lua
// script that checks the version (and, for a worker, the fencing token) and appends its event in
// the same step. See docs/outbox-design.md for the layout.
package redisstore

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
)

const prefix = "pm:ob:"

// Partitions is the number of email partitions (REDIS_PARTITIONS), each with its own due
// indexes, ready index, view indexes and event stream. Part of the data layout: chosen when a
// deployment is created and recorded in Redis (CheckPartitions).
func (l *Ledger) Partitions() int { return l.parts }

// Partition returns the partition of an email id; the engine runs one claim loop per partition.
func (l *Ledger) Partition(emailID string) int {
	return redisx.Partition(emailID, l.parts)
}

func tag(p int) string { return prefix + "{ob" + strconv.Itoa(p) + "}" }

// partitionsKey records the partition count the outbox's data was written with, in partition
// 0's slot beside its event stream, which every outbox start has created.
var partitionsKey = tag(0) + ":partitions"

// CheckPartitions refuses data written with another partition count than the ledger's (a
// *redisx.PartitionsError), and records the count on a fresh Redis. Services call it at start.
func (l *Ledger) CheckPartitions(ctx context.Context) error {
	return redisx.CheckPartitions(ctx, l.rdb, partitionsKey, eventsKey(0), l.parts)
}

func (l *Ledger) recordKey(id string) string   { return tag(l.Partition(id)) + ":e:" + id }
func (l *Ledger) attemptsKey(id string) string { return tag(l.Partition(id)) + ":a:" + id }
func (l *Ledger) bodyKey(id string) string     { return tag(l.Partition(id)) + ":b:" + id }

// staticKey holds what never changes after submit (Meta, Extra, the recipients), apart from the
// record: the record's fields then stay small, so Redis keeps the hash as a compact listpack
// (hash-max-listpack-value is 64 bytes by default), which is most of P8's budget.
func (l *Ledger) staticKey(id string) string { return tag(l.Partition(id)) + ":m:" + id }

// dueKey is the due index of one connector of a tenant and one priority (1 high, 2 normal, 3
// low) in a partition. Each connector has its own indexes, so a connector whose relay is slow
// or hangs, with any backlog, never stands in front of another connector's mail; a claim for a
// connector takes high before normal before low, each oldest first, by reading its three indexes.
func dueKey(p int, tenant, connector string, prio int) string {
	return tag(p) + ":t:" + tenant + ":due:" + connector + ":" + strconv.Itoa(clampPrio(prio))
}

// leaseKey is the lease index of one connector of a tenant in a partition: its mail in SENDING,
// scored by the lease end. A claim moves mail there from its due index, so mail whose holder's
// lease ran out is due again in an index of its own, which a lane reads before the priorities:
// a crashed worker's mail is taken over first, not behind the backlog that was due before its
// lease ended.
func leaseKey(p int, tenant, connector string) string {
	return tag(p) + ":t:" + tenant + ":due:" + connector + ":0"
}

// laneIndexKey is index idx of a lane in partition p: 0 the lease index, 1..3 the due indexes.
func laneIndexKey(p int, l Lane, idx int) string {
	if idx == 0 {
		return leaseKey(p, l.Tenant, l.Connector)
	}
	return dueKey(p, l.Tenant, l.Connector, idx)
}

// indexKeyOf is the lane index that holds e while it has status s: the lease index in SENDING,
// else the due index of its priority.
func indexKeyOf(p int, e *Email, s outbox.Status) string {
	if s == outbox.StatusSending {
		return leaseKey(p, e.Tenant, e.Connector)
	}
	return dueKey(p, e.Tenant, e.Connector, e.Priority)
}

// indexOf is the number of the lane index e is in (laneIndexKey).
func indexOf(e *Email) int {
	if e.Status == outbox.StatusSending {
		return 0
	}
	return clampPrio(e.Priority)
}

// readyKey is a partition's ready index: one member per connector with mail in the partition's
// due indexes (LaneMember), scored by a lower bound of its earliest due time. Writers lower a
// score with ZADD LT and announce it on WakeChannel; only a claim, which reads the connector's
// indexes, raises it to the exact value or removes the member. A low score costs a dispatcher one
// look that finds nothing; a high one would hide due mail, and no script writes one.
func readyKey(p int) string { return tag(p) + ":rdy" }

// Lane names the due mail of one connector of one tenant: the dispatcher's unit of concurrency.
type Lane struct{ Tenant, Connector string }

// Member is the lane's member in the ready index: connector ids cannot hold "/", so the first "/"
// separates the two.
func (l Lane) Member() string { return l.Connector + "/" + l.Tenant }

// ParseLane reads a ready index member.
func ParseLane(m string) (Lane, bool) {
	i := strings.IndexByte(m, '/')
	if i <= 0 || i == len(m)-1 {
		return Lane{}, false
	}
	return Lane{Connector: m[:i], Tenant: m[i+1:]}, true
}

func laneOf(e *Email) Lane { return Lane{Tenant: e.Tenant, Connector: e.Connector} }

// clampPrio keeps a priority to the three indexes; unset is normal.
func clampPrio(prio int) int {
	if prio == 0 {
		return 2
	}
	return min(max(prio, 1), 3)
}
func eventsKey(p int) string { return tag(p) + ":events" }

// idemKey maps an idempotency key to its email. It lives in the partition of the email, whose id
// is chosen so (see IDForKey).
func idemKey(p int, tenant, key string) string { return tag(p) + ":t:" + tenant + ":k:" + key }

// indexKey is one view index: the tenant's emails of one bucket in one status, scored by the
// list's sort time. See Buckets.
func indexKey(p int, tenant, bucket string, s outbox.Status) string {
	return tag(p) + ":t:" + tenant + ":i:" + bucket + ":" + strconv.Itoa(int(s))
}

// disabledKey holds a partition's CONNECTOR_DISABLED mail of one connector, to requeue on enable.
func disabledKey(p int, tenant, connector string) string {
	return tag(p) + ":t:" + tenant + ":cd:" + connector
}

// EventStreams returns every partition's event stream, for the relay.
func (l *Ledger) EventStreams() []string {
	out := make([]string, l.parts)
	for p := range out {
		out[p] = eventsKey(p)
	}
	return out
}

// Email is an email's record: what the engine's transitions read and write, and Meta, the
// encoded immutable part the API shows (recipients, subject, work item, ...), which the store
// never interprets.
type Email struct {
	ID        string
	Tenant    string
	Status    outbox.Status
	Priority  int // 1 high, 2 normal, 3 low
	Due       time.Time
	Connector string
	Imported  bool
	Attempts  int
	// RetryBase is the attempt count at the last manual retry: the retry pattern applies to the
	// attempts after it.
	RetryBase int
	Version   int64
	// Fence is the claim's fencing token; only fenced changes carrying it are applied.
	Fence int64
	// Before and BeforeDue are, on a claimed email, the status and due time the claim replaced,
	// so a claim that was never started can be handed back as it was. Before == StatusSending
	// means the claim took the email over from a worker whose lease ran out: that worker may
	// have sent it.
	Before    outbox.Status
	BeforeDue time.Time
	// From and Rcpts are the SMTP envelope.
	From  string
	Rcpts []string
	// Buckets are the view indexes the email is listed in (Bucket* functions).
	Buckets []string
	// IdemKey is the client's idempotency key, if any.
	IdemKey string
	// Meta is the encoded immutable part of the email.
	Meta []byte
	// Extra is the encoded part only the sent event needs (threading headers, Sender).
	Extra []byte
	// Body is the built message, stored apart from the record (P8 counts everything else); only
	// Submit reads it.
	Body []byte

	// Score is the email's sort time in the view indexes: its due time while it has one, else the
	// time of its last change.
	Score        time.Time
	LastAttempt  time.Time
	FirstFailure time.Time
	LastError    string
	SentTime     time.Time
	CancelTime   time.Time
	// MaxAttempts is the connector's attempt limit at the last attempt.
	MaxAttempts int
	// SendAt and ScheduledBy are the last reschedule's time and user; they override what Meta
	// holds from the submit (which never changes).
	SendAt      time.Time
	ScheduledBy string
	// MayHaveBeenSent marks mail held FAILED after an attempt that ended in the RFC 1047 window:
	// the relay may have it. A retry clears it.
	MayHaveBeenSent bool
	// Trigger is who queued the next attempt by hand (Retry, Send now); the attempt that follows
	// is theirs and moves it to LastBy. Empty while the retry pattern schedules.
	Trigger string
	// LastBy is who started the last attempt by hand; empty when the retry pattern did.
	LastBy string
	// ManualRetries counts the person's retries of the email.
	ManualRetries int
}

// Bucket names of the view indexes. An email is listed under BucketAll and under each bucket
// that gives someone access to it; a view is the union of the buckets the caller holds.
const BucketAll = "a"

// BucketUser lists the mail a user sent (view MINE).
func BucketUser(user string) string { return "u:" + user }

// BucketTeam lists the mail sent by members of a team, by their teams at sending time (TEAM).
func BucketTeam(team string) string { return "t:" + team }

// BucketMailbox lists the mail sent from a shared mailbox, for its members (ALL).
func BucketMailbox(mailbox string) string { return "m:" + mailbox }

// BucketSystem lists the tenant's system-generated mail (SYSTEM, for admins).
const BucketSystem = "s"

// BucketSystemMailbox lists the system-generated mail of a shared mailbox (SYSTEM, for members).
func BucketSystemMailbox(mailbox string) string { return "sm:" + mailbox }

// BucketFacts reads back what an email's buckets were built from (the Bucket* builders above):
// its sender, its mailbox and its teams — the facts the visibility rule and the sent event's
// team_ids need, read where the prefixes are written.
func BucketFacts(buckets []string) (sender, mailbox string, teams []string) {
	for _, b := range buckets {
		switch {
		case strings.HasPrefix(b, "u:"):
			sender = b[2:]
		case strings.HasPrefix(b, "m:"):
			mailbox = b[2:]
		case strings.HasPrefix(b, "t:"):
			teams = append(teams, b[2:])
		}
	}
	return sender, mailbox, teams
}

// IndexScore is an email's score in the view indexes: its sort time in milliseconds times 1024
// plus 10 bits of a hash of its id, so that emails of the same millisecond rarely tie and a page
// can continue after a (score, id) cursor with an exclusive range. Exact in a float64 until the
// year 2248.
func IndexScore(t time.Time, id string) int64 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	// The high bits: FNV-1a's low bits are what picks the partition, so within one partition
	// they are all alike.
	return ms(t)<<10 | int64(h.Sum32()>>22)
}

func scoreTime(score int64) time.Time {
	if score <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(score >> 10).UTC()
}

// Event is an announcement a transition appends in its own atomic step; its id is derived from
// the email id and the version the transition produces.
type Event struct {
	Subject string
	Msg     proto.Message
}

// Ledger is the outbox's email state.
type Ledger struct {
	rdb       redis.UniversalClient
	retention time.Duration
	parts     int
	// submits carries concurrent submits' scripts in shared pipelines (P3: one round trip
	// each had been most of what a submit cost the Go side).
	submits *redisx.Coalescer
}

// New returns a Ledger on rdb that keeps SENT and CANCELLED records for retention (0: 30 days)
// and spreads emails over partitions (REDIS_PARTITIONS; 0: redisx.DefaultPartitions).
// FAILED and every other status are kept until a person acts: nothing failed is dropped.
func New(rdb redis.UniversalClient, retention time.Duration, partitions int) *Ledger {
	if retention <= 0 {
		retention = 30 * 24 * time.Hour
	}
	if partitions <= 0 {
		partitions = redisx.DefaultPartitions
	}
	return &Ledger{rdb: rdb, retention: retention, parts: partitions, submits: redisx.NewCoalescer(rdb)}
}

// Retention returns how long final records are kept.
func (l *Ledger) Retention() time.Duration { return l.retention }

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// dueMS is a due time in the due index's milliseconds, rounded up: a claim at the millisecond
// of the score must not be before the due time (never early).
func dueMS(t time.Time) int64 {
	m := t.UnixMilli()
	if t.Sub(time.UnixMilli(m)) > 0 {
		m++
	}
	return m
}

func msString(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return strconv.FormatInt(t.UnixMilli(), 10)
}

func eventArgs(ctx context.Context, e *Email, version int64, ev Event) ([]any, error) {
	id := e.Tenant + ":email:" + e.ID + ":" + strconv.FormatInt(version, 10)
	return eventbus.Envelope(ctx, id, ev.Subject, e.Tenant, ev.Msg)
}

// inDue reports whether a status keeps the email in the due index.
func inDue(s outbox.Status) bool {
	return s == outbox.StatusScheduled || s == outbox.StatusQueued || s == outbox.StatusPendingRetry || s == outbox.StatusSending
}

func indexKeys(p int, e *Email, s outbox.Status) []string {
	if s.Final() {
		return nil
	}
	out := make([]string, len(e.Buckets))
	for i, b := range e.Buckets {
		out[i] = indexKey(p, e.Tenant, b, s)
	}
	return out
}

// WakeChannel is where a script announces that a connector's earliest due time in a partition
// moved earlier (new mail, a retry, mail handed back): the message is the partition's number.
// Dispatchers of every replica subscribe, so a sleep until the earliest due time is cut short
// without polling.
const WakeChannel = prefix + "wake"

// WakePartition returns the partition a WakeChannel message names, or false.
func (l *Ledger) WakePartition(msg string) (int, bool) {
	p, err := strconv.Atoi(msg)
	if err != nil || p < 0 || p >= l.parts {
		return 0, false
	}
	return p, true
}

// luaReady lowers a lane's score in the ready index to due (ms) when that is earlier (or the lane
// was not there), and then announces the partition on WakeChannel.
const luaReady = `
local function postamt_ready(readyKey, member, due, partition)
  if redis.call('ZADD', readyKey, 'LT', 'CH', due, member) == 1 then
    redis.call('PUBLISH', '` + WakeChannel + `', partition)
  end
end
`

// submitScript stores a new email, its body and its static part, and indexes it by due time
// and in its views.
// KEYS[1] record, KEYS[2] due index, KEYS[3] events, KEYS[4] body, KEYS[5] idempotency key (or
// the record again when there is none), KEYS[6] static part, KEYS[7] ready index, KEYS[8..]
// view indexes of the status.
// ARGV[1] due ms or "" (not due: FAILED imports), ARGV[2] id, ARGV[3] index score, ARGV[4] 1 with
// an idempotency key, ARGV[5..10] event envelope, ARGV[11] body, ARGV[12] static part, ARGV[13]
// lane member, ARGV[14] partition, ARGV[15..] record field/value pairs.
// Returns {1, id} when stored, {0, id} with the existing email's id when the idempotency key or
// the id is taken (nothing written). Invariant: a record is in its lane's due index exactly while
// its status is SCHEDULED, QUEUED, PENDING_RETRY or SENDING, the lane's ready score is at most its
// earliest due time, and the record is in one view index per bucket while it is not final.
var submitScript = redis.NewScript(eventbus.LuaEmit + luaReady + `
if ARGV[4] == '1' then
  local prev = redis.call('GET', KEYS[5])
  if prev then return {0, prev} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ARGV[2]} end
redis.call('HSET', KEYS[1], unpack(ARGV, 15))
redis.call('SET', KEYS[4], ARGV[11])
redis.call('SET', KEYS[6], ARGV[12])
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
  postamt_ready(KEYS[7], ARGV[13], ARGV[1], ARGV[14])
end
for i = 8, #KEYS do redis.call('ZADD', KEYS[i], ARGV[3], ARGV[2]) end
if ARGV[4] == '1' then redis.call('SET', KEYS[5], ARGV[2]) end
postamt_emit(KEYS[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
return {1, ARGV[2]}
`)

// Submit stores e (Version 1) with its event. It returns the id of the stored email and whether
// it was created: a repeated idempotency key returns the first email's id and created false.
// An email whose id exists is AlreadyExists.
func (l *Ledger) Submit(ctx context.Context, e *Email, ev Event) (string, bool, error) {
	p := l.Partition(e.ID)
	env, err := eventArgs(ctx, e, e.Version, ev)
	if err != nil {
		return "", false, err
	}
	ik, hasIK := l.recordKey(e.ID), "0"
	if e.IdemKey != "" {
		if l.Partition(e.Tenant+"\x00"+e.IdemKey) != p {
			return "", false, fmt.Errorf("submit %s: id is not in the idempotency key's partition (use IDForKey)", e.ID)
		}
		ik, hasIK = idemKey(p, e.Tenant, e.IdemKey), "1"
	}
	due := ""
	if inDue(e.Status) {
		due = strconv.FormatInt(dueMS(e.Due), 10)
	}
	if e.Score.IsZero() {
		e.Score = e.Due
	}
	keys := append([]string{l.recordKey(e.ID), dueKey(p, e.Tenant, e.Connector, e.Priority), eventsKey(p), l.bodyKey(e.ID), ik, l.staticKey(e.ID), readyKey(p)}, indexKeys(p, e, e.Status)...)
	argv := append([]any{due, e.ID, IndexScore(e.Score, e.ID), hasIK}, env...)
	argv = append(argv, e.Body, encodeStatic(e), laneOf(e).Member(), p)
	argv = append(argv, recordFields(e)...)
	var cmd *redis.Cmd
	if err := l.submits.Do(ctx, func(p redis.Pipeliner) { cmd = submitScript.EvalSha(ctx, p, keys, argv...) }); err != nil {
		return "", false, fmt.Errorf("submit %s: %w", e.ID, err)
	}
	res, err := cmd.Slice()
	if redis.HasErrorPrefix(err, "NOSCRIPT") {
		res, err = submitScript.Run(ctx, l.rdb, keys, argv...).Slice() // loads the script
	}
	if err != nil {
		return "", false, fmt.Errorf("submit %s: %w", e.ID, err)
	}
	created, _ := res[0].(int64)
	id, _ := res[1].(string)
	if created == 0 && id == e.ID && e.IdemKey == "" {
		return "", false, errs.AlreadyExists("email", e.ID)
	}
	return id, created == 1, nil
}

func boolField(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func dueField(e *Email) string {
	if e.Due.IsZero() {
		return ""
	}
	return strconv.FormatInt(dueMS(e.Due), 10)
}

func recordFields(e *Email) []any {
	return []any{
		"id", e.ID, "tenant", e.Tenant, "status", int(e.Status), "priority", e.Priority,
		"due", dueField(e), "sc", IndexScore(e.Score, e.ID), "connector", e.Connector, "imported", boolField(e.Imported),
		"attempts", e.Attempts, "version", e.Version, "fence", 0, "from", e.From,
		"bk", strings.Join(e.Buckets, ","), "ik", e.IdemKey,
		"le", e.LastError, "la", msString(e.LastAttempt), "ff", msString(e.FirstFailure), "maxa", e.MaxAttempts,
	}
}

// encodeStatic packs the static part as protobuf fields: 1 Meta, 2 Extra, 3 each recipient.
func encodeStatic(e *Email) []byte {
	b := make([]byte, 0, len(e.Meta)+len(e.Extra)+16*len(e.Rcpts)+8)
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, e.Meta)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, e.Extra)
	for _, r := range e.Rcpts {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, r)
	}
	return b
}

// decodeStatic unpacks what encodeStatic wrote into e.
func decodeStatic(b []byte, e *Email) error {
	e.Meta, e.Extra, e.Rcpts = nil, nil, nil
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.BytesType {
			return fmt.Errorf("static part of %s: malformed", e.ID)
		}
		b = b[n:]
		v, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return fmt.Errorf("static part of %s: malformed", e.ID)
		}
		b = b[m:]
		switch num {
		case 1:
			e.Meta = v
		case 2:
			e.Extra = v
		case 3:
			e.Rcpts = append(e.Rcpts, string(v))
		}
	}
	return nil
}

// IDForKey reports whether an email id may carry an idempotency key of tenant: the id must be in
// the key's partition, so submit checks and writes both in one script. NewID draws such ids.
func (l *Ledger) IDForKey(id, tenant, key string) bool {
	return key == "" || l.Partition(id) == l.Partition(tenant+"\x00"+key)
}

func claimedRecord(id string, v []any) (Email, error) {
	s := func(i int) string { x, _ := v[i].(string); return x }
	n := func(i int) int64 { x, _ := strconv.ParseInt(s(i), 10, 64); return x }
	e := Email{
		ID: id, Status: outbox.Status(n(0)), Priority: int(n(1)), Version: n(2), Tenant: s(4),
		Attempts: int(n(5)), Connector: s(6), Imported: s(7) == "1", From: s(8), IdemKey: s(9),
		MaxAttempts: int(n(10)), FirstFailure: msTime(s(11)), RetryBase: int(n(12)),
		SendAt: msTime(s(13)), ScheduledBy: s(14), Trigger: s(15), ManualRetries: int(n(16)),
		LastBy: s(17), MayHaveBeenSent: s(18) == "1",
	}
	if b := s(3); b != "" {
		e.Buckets = strings.Split(b, ",")
	}
	if e.Tenant == "" {
		return Email{}, fmt.Errorf("claim: record %s has no tenant", id)
	}
	return e, nil
}

func msTime(s string) time.Time {
	if s == "" || s == "0" {
		return time.Time{}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}

// ErrFenced means the caller no longer holds the email: its lease ran out and another worker
// claimed it, or a person changed it. The caller must drop its result.
var ErrFenced = errs.Aborted("LEASE_LOST", "the email was claimed again or changed; the result was not recorded")

// ErrChanged means the email changed between reading it and writing it; the caller reads again.
var ErrChanged = errs.Aborted("CONCURRENT_CHANGE", "the email changed concurrently; read it again")

// applyScript is every transition after submit: a worker's result, a claim handed back, and a
// person's action.
// KEYS[1] record, KEYS[2] the lane index of the new status (the lease index for SENDING, else
// the due index of the priority) of the new connector, KEYS[3] events, KEYS[4] attempt history,
// KEYS[5] body, KEYS[6] idempotency key (or the record), KEYS[7] the disabled set the email
// enters (or the record), KEYS[8] static part, KEYS[9] ready index, KEYS[10] the lane index of
// the old status of the old connector, KEYS[11] the disabled set the email leaves (or the
// record), KEYS[12..11+n] old view index keys, KEYS[12+n..] new view index keys (for a final
// status: its finished indexes, see finished.go). The old and
// new connector differ only for a move (MoveEmails); both lanes' keys carry the email's {obN}
// tag, so a move is one script on one slot like every other transition.
// ARGV[1] expected version, ARGV[2] expected fence or "", ARGV[3] new version, ARGV[4] new
// status, ARGV[5] n, ARGV[6] id, ARGV[7] due ms or "" (leaves the due index), ARGV[8] index
// score, ARGV[9] history entry or "", ARGV[10] retention ms or "" (final: the record, body,
// history, static part and idempotency key expire then), ARGV[11] the disabled sets: "add"
// (KEYS[7]), "rem" (KEYS[11]), "move" (both) or "",
// ARGV[12] attempts: "inc", "reset" (a manual retry: the pattern starts again at the current
// count, and the manual retries count one more) or "", ARGV[13..18] event envelope (ARGV[13] "":
// no event, for a claim handed back, which announced nothing either), ARGV[19] lane member of
// the new connector, ARGV[20] partition, ARGV[21..] field/value pairs to set.
// A final change also trims each finished index it adds to: at most 100 entries older than the
// retention before the final time (ARGV[8] >> 10) leave, and the index expires a retention after
// this, its newest entry.
// Returns the new version; 0 when the version or fence does not match (nothing written); -1 when
// a fenced change finds the record at exactly the version it would produce under the same fence:
// the change was applied by an earlier try whose reply was lost (only the fence's holder changes
// mail in SENDING), so a worker retrying after a broken connection does not take its own write
// for a lost lease.
var applyScript = redis.NewScript(eventbus.LuaEmit + luaReady + `
local cur = redis.call('HMGET', KEYS[1], 'version', 'fence', 'attempts')
if ARGV[2] ~= '' and cur[1] == ARGV[3] and cur[2] == ARGV[2] then return -1 end
if cur[1] ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and cur[2] ~= ARGV[2] then return 0 end
-- The record is written with one HSET (the attempt count from the read above, exact since the
-- version matched): each redis.call has a cost of its own beyond its command's.
local set = {'status', ARGV[4], 'version', ARGV[3], 'sc', ARGV[8], 'due', ARGV[7]}
if ARGV[12] == 'inc' then
  set[#set + 1] = 'attempts'
  set[#set + 1] = (tonumber(cur[3]) or 0) + 1
elseif ARGV[12] == 'reset' then
  set[#set + 1] = 'rb'
  set[#set + 1] = cur[3] or 0
  redis.call('HINCRBY', KEYS[1], 'mr', 1)
end
for i = 21, #ARGV do set[#set + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(set))
if ARGV[9] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[9]) end
redis.call('ZREM', KEYS[10], ARGV[6])
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[6])
  postamt_ready(KEYS[9], ARGV[19], ARGV[7], ARGV[20])
end
local n = tonumber(ARGV[5])
for i = 12, 11 + n do redis.call('ZREM', KEYS[i], ARGV[6]) end
for i = 12 + n, #KEYS do redis.call('ZADD', KEYS[i], ARGV[8], ARGV[6]) end
if ARGV[11] == 'rem' or ARGV[11] == 'move' then redis.call('ZREM', KEYS[11], ARGV[6]) end
if ARGV[11] == 'add' or ARGV[11] == 'move' then redis.call('ZADD', KEYS[7], ARGV[8], ARGV[6]) end
if ARGV[10] ~= '' then
  for _, i in ipairs({4, 5, 6, 8}) do
    if KEYS[i] ~= KEYS[1] then redis.call('PEXPIRE', KEYS[i], ARGV[10]) end
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[10])
  local cut = string.format('(%.0f', (math.floor(tonumber(ARGV[8]) / 1024) - tonumber(ARGV[10])) * 1024)
  for i = 12 + n, #KEYS do
    local old = redis.call('ZCOUNT', KEYS[i], '-inf', cut)
    if old > 0 then redis.call('ZREMRANGEBYRANK', KEYS[i], 0, math.min(old, 100) - 1) end
    redis.call('PEXPIRE', KEYS[i], ARGV[10])
  end
end
if ARGV[13] ~= '' then
  postamt_emit(KEYS[3], ARGV[13], ARGV[14], ARGV[15], ARGV[16], ARGV[17], ARGV[18])
end
return tonumber(ARGV[3])
`)

// Change is one transition of an email, applied by Apply.
type Change struct {
	Status outbox.Status
	// Due is the next due time; zero leaves the due index (which statuses other than SCHEDULED,
	// QUEUED, PENDING_RETRY and SENDING must).
	Due time.Time
	// At is when the change happens; it is the index score of mail without a due time.
	At time.Time
	// Fenced makes the change a worker's: it applies only under the claim's fencing token.
	Fenced bool
	// Attempt is an encoded history entry to append.
	Attempt []byte
	// CountAttempt adds one to the attempt count; ResetAttempts starts the connector's pattern
	// again (a manual retry) while the count and the history go on.
	CountAttempt, ResetAttempts bool
	// Attempted marks the end of a delivery attempt at At, under the connector's MaxAttempts.
	Attempted   bool
	MaxAttempts int
	// Error becomes the last error shown in the outbox; the first one also sets the first-failure
	// time. Empty leaves the last error as it was, unless ClearError: an attempt that succeeded
	// leaves no last error (the history keeps the earlier ones).
	Error      string
	ClearError bool
	// SendAt and ScheduledBy, when set, record a reschedule: the new send time and who set it.
	SendAt      time.Time
	ScheduledBy string
	// MayHaveBeenSent, with Attempted, marks the attempt's result as possibly delivered (RFC
	// 1047 window, held FAILED). Every recorded attempt sets the mark anew and a manual retry
	// clears it.
	MayHaveBeenSent bool
	// TriggeredBy, when set, is the person whose action queues the next attempt (Retry, Send
	// now); an Attempted change makes the email's trigger its last attempt's (Email.LastBy).
	TriggeredBy string
	// Connector, when set and not the email's, moves the email to that connector of its tenant
	// (MoveEmails): it leaves the old lane's index and disabled set and enters the new lane's in
	// the same step, and the new lane's ready score is lowered, so no claim of either lane sees
	// it in both or in neither.
	Connector string
}

// Apply makes change c to e, which the caller read (Get) or claimed (ClaimLane) at e.Version;
// ev announces the change (nil: nothing is announced, for a claim handed back). It
// fails with ErrFenced for a worker that lost its claim and ErrChanged when the email changed
// since it was read; nothing is written then. On success e holds the new state.
func (l *Ledger) Apply(ctx context.Context, e *Email, c Change, ev func(next *Email) Event) error {
	keys, argv, next, err := l.prepare(ctx, e, c, ev)
	if err != nil {
		return err
	}
	n, err := applyScript.Run(ctx, l.rdb, keys, argv...).Int64()
	return finish(e, c, next, n, err)
}

// Applied is one transition for ApplyMany: the email as claimed or read, the change, its event.
type Applied struct {
	Email *Email
	Change
	Event func(next *Email) Event
}

// ApplyMany makes several transitions in one pipelined round trip, each as Apply would (each
// checked and applied on its own: one refused does not stop the others), and returns each one's
// error in order. The dispatcher records a batch's results with it.
func (l *Ledger) ApplyMany(ctx context.Context, as []Applied) []error {
	errs := make([]error, len(as))
	type prepared struct {
		next *Email
		cmd  *redis.Cmd
	}
	ps := make([]prepared, len(as))
	pipe := l.rdb.Pipeline()
	for i, a := range as {
		keys, argv, next, err := l.prepare(ctx, a.Email, a.Change, a.Event)
		if err != nil {
			errs[i] = err
			continue
		}
		ps[i] = prepared{next: next, cmd: applyScript.EvalSha(ctx, pipe, keys, argv...)}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) && !redis.HasErrorPrefix(err, "NOSCRIPT") {
		// A failed round trip: every transition in it is unknown; the claims run out and the
		// mail comes due again.
		for i := range errs {
			if errs[i] == nil {
				errs[i] = fmt.Errorf("apply: %w", err)
			}
		}
		return errs
	}
	for i, a := range as {
		if errs[i] != nil {
			continue
		}
		n, err := ps[i].cmd.Int64()
		if redis.HasErrorPrefix(err, "NOSCRIPT") {
			errs[i] = l.Apply(ctx, a.Email, a.Change, a.Event) // loads the script for the next batch
			continue
		}
		errs[i] = finish(a.Email, a.Change, ps[i].next, n, err)
	}
	return errs
}

func finish(e *Email, c Change, next *Email, n int64, err error) error {
	if err != nil {
		return fmt.Errorf("apply %s to %s: %w", c.Status, e.ID, err)
	}
	if n == 0 {
		if c.Fenced {
			return ErrFenced
		}
		return ErrChanged
	}
	*e = *next // n == -1 too: an earlier try of this very change was applied
	return nil
}

// prepare builds the keys and arguments of applyScript for change c to e, and e's state after it.
func (l *Ledger) prepare(ctx context.Context, e *Email, c Change, ev func(next *Email) Event) ([]string, []any, *Email, error) {
	p := l.Partition(e.ID)
	if inDue(c.Status) != !c.Due.IsZero() {
		return nil, nil, nil, fmt.Errorf("apply %s: status %s with due time %v breaks the due-index invariant", e.ID, c.Status, c.Due)
	}
	if c.Connector != "" && c.Connector != e.Connector && (e.Status == outbox.StatusSending || c.Status == outbox.StatusSending) {
		// A claim's holder renews and records under the lane it claimed from.
		return nil, nil, nil, fmt.Errorf("apply %s: mail in SENDING cannot change connector", e.ID)
	}
	next := *e
	next.Version = e.Version + 1
	next.Status = c.Status
	if c.Connector != "" {
		next.Connector = c.Connector
	}
	next.Due = c.Due
	next.Score = c.Due
	if next.Score.IsZero() {
		next.Score = c.At
	}
	fence := ""
	if c.Fenced {
		fence = strconv.FormatInt(e.Fence, 10)
	}
	ik, cdIn, cdOut := l.recordKey(e.ID), l.recordKey(e.ID), l.recordKey(e.ID)
	if e.IdemKey != "" {
		ik = idemKey(p, e.Tenant, e.IdemKey)
	}
	// The disabled sets: the new connector's when the email enters CONNECTOR_DISABLED, the old
	// one's when it leaves it or changes connector in it.
	enters := c.Status == outbox.StatusConnectorDisabled
	leaves := e.Status == outbox.StatusConnectorDisabled && (!enters || next.Connector != e.Connector)
	if enters {
		cdIn = disabledKey(p, e.Tenant, next.Connector)
	}
	if leaves {
		cdOut = disabledKey(p, e.Tenant, e.Connector)
	}
	cdOp := ""
	switch {
	case enters && leaves:
		cdOp = "move"
	case enters:
		cdOp = "add"
	case leaves:
		cdOp = "rem"
	}
	retention := ""
	if c.Status.Final() {
		retention = strconv.FormatInt(l.retention.Milliseconds(), 10)
	}
	attempts := ""
	switch {
	case c.ResetAttempts:
		attempts = "reset"
		next.RetryBase = e.Attempts
	case c.CountAttempt:
		attempts = "inc"
		next.Attempts++
	}
	var set []any
	switch c.Status {
	case outbox.StatusSent:
		next.SentTime = c.At
		set = append(set, "st", ms(c.At))
	case outbox.StatusCancelled:
		next.CancelTime = c.At
		set = append(set, "ct", ms(c.At))
	}
	if c.ResetAttempts && e.MayHaveBeenSent {
		next.MayHaveBeenSent = false
		set = append(set, "mh", "")
	}
	if c.ResetAttempts {
		next.ManualRetries++
	}
	if c.Attempted {
		next.LastAttempt, next.MaxAttempts = c.At, c.MaxAttempts
		next.MayHaveBeenSent, next.LastBy, next.Trigger = c.MayHaveBeenSent, e.Trigger, ""
		set = append(set, "la", ms(c.At), "maxa", c.MaxAttempts)
		// The marks are written only when they change: most mail never has them, and every
		// field costs memory in every record (P8).
		if c.MayHaveBeenSent != e.MayHaveBeenSent {
			set = append(set, "mh", boolField(c.MayHaveBeenSent))
		}
		if e.Trigger != "" || e.LastBy != "" {
			set = append(set, "lb", e.Trigger, "mt", "")
		}
	}
	if c.TriggeredBy != "" {
		next.Trigger = c.TriggeredBy
		set = append(set, "mt", c.TriggeredBy)
	}
	if !c.SendAt.IsZero() {
		next.SendAt, next.ScheduledBy = c.SendAt, c.ScheduledBy
		set = append(set, "sa", ms(c.SendAt), "sb", c.ScheduledBy)
	}
	if next.Connector != e.Connector {
		set = append(set, "connector", next.Connector)
	}
	if c.ClearError && c.Error == "" {
		next.LastError = ""
		set = append(set, "le", "")
	}
	if c.Error != "" {
		next.LastError = c.Error
		set = append(set, "le", c.Error)
		if next.FirstFailure.IsZero() {
			next.FirstFailure = c.At
			set = append(set, "ff", ms(c.At))
		}
	}
	env := []any{"", "", "", "", "", ""}
	if ev != nil {
		var err error
		if env, err = eventArgs(ctx, &next, next.Version, ev(&next)); err != nil {
			return nil, nil, nil, err
		}
	}
	old, nw := indexKeys(p, e, e.Status), indexKeys(p, e, c.Status)
	if c.Status.Final() {
		nw = finishedKeys(p, e, c.Status) // listed by final time while retained (finished.go)
	}
	keys := append([]string{l.recordKey(e.ID), indexKeyOf(p, &next, c.Status), eventsKey(p), l.attemptsKey(e.ID), l.bodyKey(e.ID), ik, cdIn, l.staticKey(e.ID), readyKey(p), indexKeyOf(p, e, e.Status), cdOut}, old...)
	keys = append(keys, nw...)
	due := ""
	if !c.Due.IsZero() {
		due = strconv.FormatInt(dueMS(c.Due), 10)
	}
	argv := []any{e.Version, fence, next.Version, int(c.Status), len(old), e.ID, due, IndexScore(next.Score, e.ID), c.Attempt, retention, cdOp, attempts}
	argv = append(argv, env...)
	argv = append(argv, laneOf(&next).Member(), p)
	argv = append(argv, set...)
	return keys, argv, &next, nil
}

// Get reads an email's record.
func (l *Ledger) Get(ctx context.Context, id string) (*Email, error) {
	es, err := l.GetMany(ctx, []string{id})
	if err != nil {
		return nil, err
	}
	if len(es) == 0 {
		return nil, errs.NotFound("email", id)
	}
	return es[0], nil
}

func parseRecord(h map[string]string, static string) (*Email, error) {
	n := func(k string) int64 { v, _ := strconv.ParseInt(h[k], 10, 64); return v }
	e := &Email{
		ID: h["id"], Tenant: h["tenant"], Status: outbox.Status(n("status")), Priority: int(n("priority")),
		Due: msTime(h["due"]), Score: scoreTime(n("sc")), Connector: h["connector"], Imported: h["imported"] == "1",
		Attempts: int(n("attempts")), Version: n("version"), Fence: n("fence"), From: h["from"],
		IdemKey: h["ik"], LastError: h["le"], LastAttempt: msTime(h["la"]),
		FirstFailure: msTime(h["ff"]), SentTime: msTime(h["st"]), CancelTime: msTime(h["ct"]),
		MaxAttempts: int(n("maxa")), RetryBase: int(n("rb")), SendAt: msTime(h["sa"]), ScheduledBy: h["sb"],
		MayHaveBeenSent: h["mh"] == "1", Trigger: h["mt"], LastBy: h["lb"], ManualRetries: int(n("mr")),
	}
	if b := h["bk"]; b != "" {
		e.Buckets = strings.Split(b, ",")
	}
	if err := decodeStatic([]byte(static), e); err != nil {
		return nil, err
	}
	return e, nil
}

// GetMany reads several records in one round trip; missing ones are left out.
func (l *Ledger) GetMany(ctx context.Context, ids []string) ([]*Email, error) {
	pipe := l.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	statics := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGetAll(ctx, l.recordKey(id))
		statics[i] = pipe.Get(ctx, l.staticKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read emails: %w", err)
	}
	out := make([]*Email, 0, len(ids))
	for i, c := range cmds {
		if h := c.Val(); len(h) > 0 {
			e, err := parseRecord(h, statics[i].Val())
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// Attempts returns an email's encoded attempt history, oldest first.
func (l *Ledger) Attempts(ctx context.Context, id string) ([][]byte, error) {
	vs, err := l.rdb.LRange(ctx, l.attemptsKey(id), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read attempts: %w", err)
	}
	out := make([][]byte, len(vs))
	for i, v := range vs {
		out[i] = []byte(v)
	}
	return out, nil
}

// Body returns the built message of an email.
func (l *Ledger) Body(ctx context.Context, id string) ([]byte, error) {
	b, err := l.rdb.Get(ctx, l.bodyKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, errs.NotFound("email body", id)
	}
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	return b, nil
}

// Bodies returns the built messages of emails of one partition in one round trip (MGET: their
// keys share the partition's slot); a missing body is nil.
func (l *Ledger) Bodies(ctx context.Context, ids []string) ([][]byte, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = l.bodyKey(id)
	}
	vals, err := l.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("read bodies: %w", err)
	}
	out := make([][]byte, len(vals))
	for i, v := range vals {
		if s, ok := v.(string); ok {
			out[i] = []byte(s)
		}
	}
	return out, nil
}

// Disabled returns up to n ids of partition p's CONNECTOR_DISABLED mail of a connector, so
// enabling it can requeue them.
func (l *Ledger) Disabled(ctx context.Context, p int, tenant, connector string, n int) ([]string, error) {
	ids, err := l.rdb.ZRange(ctx, disabledKey(p, tenant, connector), 0, int64(n-1)).Result()
	if err != nil {
		return nil, fmt.Errorf("read disabled mail: %w", err)
	}
	return ids, nil
}

// ByIdempotencyKey returns the email a tenant's idempotency key names, if any.
func (l *Ledger) ByIdempotencyKey(ctx context.Context, tenant, key string) (string, bool, error) {
	id, err := l.rdb.Get(ctx, idemKey(l.Partition(tenant+"\x00"+key), tenant, key)).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read idempotency key: %w", err)
	}
	return id, true, nil
}
