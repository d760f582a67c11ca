package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/services/tracker/internal/events"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// maxCASAttempts bounds the retries of one read-modify-write under contention.
const maxCASAttempts = 16

// Store implements tracker.Store on Redis.
type Store struct {
	rdb   redis.UniversalClient
	parts int
}

var _ tracker.Store = (*Store)(nil)

// New returns a Store on rdb that spreads tenants over partitions (REDIS_PARTITIONS; 0 means
// redisx.DefaultPartitions).
func New(rdb redis.UniversalClient, partitions int) *Store {
	if partitions <= 0 {
		partitions = redisx.DefaultPartitions
	}
	return &Store{rdb: rdb, parts: partitions}
}

// Scripts. Each names every key it touches in KEYS; all keys of one call share the tenant's
// partition tag, so each runs in one Redis Cluster slot.
var (
	// recordScript writes or deletes a record and keeps the address index exact: the record's
	// old addresses lose it, its new ones gain it, in one step with the record, so the index
	// never lists a record under an address it no longer has.
	// KEYS[1] the record hash, KEYS[2] the tenant's record ids, KEYS[3 .. 2+n] the old
	// addresses' index hashes, KEYS[3+n ..] the new ones'.
	// ARGV[1] the version read (0: absent), ARGV[2] the record's JSON ("" deletes), ARGV[3] the
	// record id, ARGV[4] n, ARGV[5] the RecordRef JSON the index holds.
	// Returns 1, or 0 when the version changed since the read (nothing written).
	recordScript = redis.NewScript(`
if tonumber(redis.call('HGET', KEYS[1], 'v') or '0') ~= tonumber(ARGV[1]) then return 0 end
local n = tonumber(ARGV[4])
for i = 3, 2 + n do redis.call('HDEL', KEYS[i], ARGV[3]) end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  return 1
end
for i = 3 + n, #KEYS do redis.call('HSET', KEYS[i], ARGV[3], ARGV[5]) end
redis.call('HSET', KEYS[1], 'v', tonumber(ARGV[1]) + 1, 'j', ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
return 1
`)

	// trackScript stores a tracked email once per (tenant, Message-ID) with its indexes and its
	// EmailTracked event, atomically: no event without its email, no email without its event,
	// and a second arrival of the Message-ID (a redelivery, another member's Sent folder, a
	// journal copy) changes nothing.
	// KEYS[1] the email, KEYS[2] the partition's event stream, then the thread index (when
	// ARGV[2] is 1), the smart-key index (when ARGV[3] is 1), then the record indexes.
	// ARGV[1] the email's JSON (appendEmail), ARGV[4] the stamped candidate for the thread and
	// smart indexes ("<13-digit sent ms>|<JSON>": an index keeps the latest sent), ARGV[5] the
	// record-index member, ARGV[6..11] eventbus.Envelope.
	// Returns {1} when stored, {0, stored JSON} when the Message-ID was tracked before. (SET NX
	// is the presence check and the write in one command.)
	trackScript = redis.NewScript(eventbus.LuaEmit + `
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return {0, redis.call('GET', KEYS[1])} end
local i = 3
local sent = tonumber(string.sub(ARGV[4], 1, 13))
local function latest(key)
  local old = redis.call('GET', key)
  if (not old) or tonumber(string.sub(old, 1, 13)) <= sent then redis.call('SET', key, ARGV[4]) end
end
if ARGV[2] == '1' then latest(KEYS[i]); i = i + 1 end
if ARGV[3] == '1' then latest(KEYS[i]); i = i + 1 end
for j = i, #KEYS do redis.call('ZADD', KEYS[j], 0, ARGV[5]) end
postamt_emit(KEYS[2], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
return {1}
`)

	// trackManyScript is trackScript for several emails of one partition in one call (a
	// batch's writes: one script call per partition instead of one per email, which is most of
	// a call's cost). Each email is stored, indexed and announced exactly as trackScript does,
	// in the order given, and atomically on its own. Redis pays for every argument of a call,
	// so an email passes only what cannot be derived: values shared by the call come once, its
	// flags ride on its key count, and the Message-ID, the event id and the record-index member
	// are built here from the email's key and stamp.
	// KEYS[1] the partition's event stream; then each email's keys: the email, the thread index
	// (flag 1), the smart-key index (flag 2), then the record indexes.
	// ARGV[1] the number of emails, ARGV[2] the event subject; then per email: its header
	// (64 × its number of keys + flags), its tenant (flag 4: the first email of the call and
	// one whose tenant differs from the one before), trackScript's ARGV[1] (the email) and
	// ARGV[4] (the stamped candidate), the event's data, then its traceparent (flag 8), its
	// tracestate (flag 16) and its record-index member (flag 32; otherwise built from the
	// stamp, which gives the same member for every sent time before the year 2286).
	// Returns one number per email: 1 stored, 0 tracked before (nothing written).
	trackManyScript = redis.NewScript(eventbus.LuaEmit + `
local function latest(key, cand, sent)
  local old = redis.call('SET', key, cand, 'GET')
  if old and tonumber(string.sub(old, 1, 13)) > sent then redis.call('SET', key, old) end
end
local out = {}
local stream, subject = KEYS[1], ARGV[2]
local k, a = 2, 3
local tenant, off
for j = 1, tonumber(ARGV[1]) do
  local h = tonumber(ARGV[a])
  local f = h % 64
  local last = k + (h - f) / 64 - 1
  a = a + 1
  if f % 8 >= 4 then
    tenant = ARGV[a]
    a = a + 1
    -- KEYS[k] is pm:tr:{trN}:t:<tenant>:m:<Message-ID>
    off = string.find(KEYS[k], '}', 1, true) + 7 + #tenant
  end
  local data, cand, payload = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  a = a + 3
  local tp, ts, member = '', '', nil
  if f % 16 >= 8 then tp = ARGV[a]; a = a + 1 end
  if f % 32 >= 16 then ts = ARGV[a]; a = a + 1 end
  if f >= 32 then member = ARGV[a]; a = a + 1 end
  if not redis.call('SET', KEYS[k], data, 'NX') then
    out[j] = 0
  else
    local mid = string.sub(KEYS[k], off)
    local sent = tonumber(string.sub(cand, 1, 13))
    local i = k + 1
    if f % 2 == 1 then latest(KEYS[i], cand, sent); i = i + 1 end
    if f % 4 >= 2 then latest(KEYS[i], cand, sent); i = i + 1 end
    if i <= last then
      member = member or (string.format('%013d', 9999999999999 - sent) .. '|' .. mid)
      for r = i, last do redis.call('ZADD', KEYS[r], 0, member) end
    end
    postamt_emit(stream, tenant .. ':tracked:' .. mid .. ':1', subject, tenant, payload, tp, ts)
    out[j] = 1
  end
  k = last + 1
end
return out
`)
)

// ---- settings ----

// storedOrg is the JSON form of org settings.
type storedOrg struct {
	Auto        bool          `json:"auto"`
	Prefix      string        `json:"prefix,omitempty"`
	Digits      int           `json:"digits,omitempty"`
	InSubject   bool          `json:"in_subject,omitempty"`
	Smart       bool          `json:"smart,omitempty"`
	SmartMax    int           `json:"smart_max,omitempty"`
	SmartMinLen int           `json:"smart_min,omitempty"`
	SmartWindow time.Duration `json:"smart_window,omitempty"`
	Version     int64         `json:"v"`
	Updated     time.Time     `json:"at"`
}

func (s storedOrg) domain() tracker.OrgSettings {
	return tracker.OrgSettings{
		AutoTrackSentFolderItems: s.Auto, TokenPrefix: s.Prefix, TokenDigits: s.Digits, TokenInSubject: s.InSubject,
		Smart:   tracker.SmartMatching{Enabled: s.Smart, MaxRecipients: s.SmartMax, MinSubjectLen: s.SmartMinLen, Window: s.SmartWindow},
		Version: s.Version, Updated: s.Updated,
	}
}

func storeOrg(o tracker.OrgSettings) storedOrg {
	return storedOrg{
		Auto: o.AutoTrackSentFolderItems, Prefix: o.TokenPrefix, Digits: o.TokenDigits, InSubject: o.TokenInSubject,
		Smart: o.Smart.Enabled, SmartMax: o.Smart.MaxRecipients, SmartMinLen: o.Smart.MinSubjectLen, SmartWindow: o.Smart.Window,
		Version: o.Version, Updated: o.Updated,
	}
}

// OrgSettings implements tracker.Store.
func (s *Store) OrgSettings(ctx context.Context, tenant string) (tracker.OrgSettings, error) {
	var o storedOrg
	if _, _, err := redisx.GetJSON(ctx, s.rdb, s.tenantKeys(tenant).org(), &o); err != nil {
		return tracker.OrgSettings{}, fmt.Errorf("read org settings: %w", err)
	}
	return o.domain(), nil
}

// UpdateOrgSettings implements tracker.Store.
func (s *Store) UpdateOrgSettings(ctx context.Context, tenant string, mutate func(*tracker.OrgSettings) error) (tracker.OrgSettings, error) {
	o, err := redisx.UpdateJSON(ctx, s.rdb, s.tenantKeys(tenant).org(), func(st *storedOrg) error {
		d := st.domain()
		if err := mutate(&d); err != nil {
			return err
		}
		*st = storeOrg(d)
		return nil
	})
	if err != nil {
		return tracker.OrgSettings{}, fmt.Errorf("write org settings: %w", err)
	}
	return o.domain(), nil
}

type storedUser struct {
	Option  *tracker.Option `json:"opt,omitempty"`
	Version int64           `json:"v"`
}

// UserSettings implements tracker.Store.
func (s *Store) UserSettings(ctx context.Context, tenant, user string) (tracker.UserSettings, error) {
	var u storedUser
	if _, _, err := redisx.GetJSON(ctx, s.rdb, s.tenantKeys(tenant).user(user), &u); err != nil {
		return tracker.UserSettings{}, fmt.Errorf("read user settings: %w", err)
	}
	return tracker.UserSettings{UserID: user, Option: u.Option, Version: u.Version}, nil
}

// UpdateUserSettings implements tracker.Store.
func (s *Store) UpdateUserSettings(ctx context.Context, tenant, user string, mutate func(*tracker.UserSettings) error) (tracker.UserSettings, error) {
	u, err := redisx.UpdateJSON(ctx, s.rdb, s.tenantKeys(tenant).user(user), func(st *storedUser) error {
		d := tracker.UserSettings{UserID: user, Option: st.Option, Version: st.Version}
		if err := mutate(&d); err != nil {
			return err
		}
		*st = storedUser{Option: d.Option, Version: d.Version}
		return nil
	})
	if err != nil {
		return tracker.UserSettings{}, fmt.Errorf("write user settings: %w", err)
	}
	return tracker.UserSettings{UserID: user, Option: u.Option, Version: u.Version}, nil
}

// ---- records ----

type storedRecord struct {
	ID          string             `json:"id"`
	Kind        tracker.RecordKind `json:"k"`
	EntityType  string             `json:"et,omitempty"`
	DisplayName string             `json:"dn,omitempty"`
	Addresses   []string           `json:"a"`
	Version     int64              `json:"v"`
	Updated     time.Time          `json:"at"`
}

func (r *storedRecord) domain() tracker.Record {
	return tracker.Record{ID: r.ID, Kind: r.Kind, EntityType: r.EntityType, DisplayName: r.DisplayName, Addresses: r.Addresses, Version: r.Version, Updated: r.Updated}
}

// readRecord returns the record and its version; nil when absent.
func (s *Store) readRecord(ctx context.Context, k keys, id string) (*tracker.Record, error) {
	h, err := s.rdb.HMGet(ctx, k.record(id), "j").Result()
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", id, err)
	}
	raw, ok := h[0].(string)
	if !ok {
		return nil, nil
	}
	var r storedRecord
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return nil, fmt.Errorf("decode record %s: %w", id, err)
	}
	d := r.domain()
	return &d, nil
}

// writeRecord runs recordScript for a change from old (nil: absent) to r (nil: delete).
func (s *Store) writeRecord(ctx context.Context, k keys, id string, old, r *tracker.Record) (bool, error) {
	keysList := []string{k.record(id), k.records()}
	var version int64
	if old != nil {
		version = old.Version
		for _, a := range old.Addresses {
			keysList = append(keysList, k.address(a))
		}
	}
	nOld := len(keysList) - 2
	var data, ref []byte
	if r != nil {
		r.Version = version + 1
		for _, a := range r.Addresses {
			keysList = append(keysList, k.address(a))
		}
		var err error
		if data, err = json.Marshal(storedRecord{ID: r.ID, Kind: r.Kind, EntityType: r.EntityType, DisplayName: r.DisplayName, Addresses: r.Addresses, Version: r.Version, Updated: r.Updated}); err != nil {
			return false, err
		}
		if ref, err = json.Marshal(r.Ref()); err != nil {
			return false, err
		}
	}
	n, err := recordScript.Run(ctx, s.rdb, keysList, version, data, id, nOld, ref).Int()
	if err != nil {
		return false, fmt.Errorf("write record %s: %w", id, err)
	}
	return n == 1, nil
}

// UpsertRecord implements tracker.Store.
func (s *Store) UpsertRecord(ctx context.Context, tenant string, r *tracker.Record) error {
	k := s.tenantKeys(tenant)
	for range maxCASAttempts {
		old, err := s.readRecord(ctx, k, r.ID)
		if err != nil {
			return err
		}
		ok, err := s.writeRecord(ctx, k, r.ID, old, r)
		if err != nil || ok {
			return err
		}
	}
	return errs.Aborted("CONCURRENT_UPDATE", "too many concurrent changes to the same record; retry")
}

// DeleteRecord implements tracker.Store.
func (s *Store) DeleteRecord(ctx context.Context, tenant, id string) error {
	k := s.tenantKeys(tenant)
	for range maxCASAttempts {
		old, err := s.readRecord(ctx, k, id)
		if err != nil {
			return err
		}
		if old == nil {
			return errs.NotFound("record", id)
		}
		ok, err := s.writeRecord(ctx, k, id, old, nil)
		if err != nil || ok {
			return err
		}
	}
	return errs.Aborted("CONCURRENT_UPDATE", "too many concurrent changes to the same record; retry")
}

// GetRecord implements tracker.Store.
func (s *Store) GetRecord(ctx context.Context, tenant, id string) (*tracker.Record, error) {
	r, err := s.readRecord(ctx, s.tenantKeys(tenant), id)
	if err != nil {
		return nil, err
	}
	if r == nil {
		return nil, errs.NotFound("record", id)
	}
	return r, nil
}

// ListRecords implements tracker.Store.
func (s *Store) ListRecords(ctx context.Context, tenant, after string, limit int) ([]tracker.Record, error) {
	k := s.tenantKeys(tenant)
	min := "-"
	if after != "" {
		min = "(" + after
	}
	ids, err := s.rdb.ZRangeByLex(ctx, k.records(), &redis.ZRangeBy{Min: min, Max: "+", Count: int64(limit)}).Result()
	if err != nil {
		return nil, fmt.Errorf("list records: %w", err)
	}
	return s.records(ctx, k, ids)
}

// RecordsByAddress implements tracker.Store.
func (s *Store) RecordsByAddress(ctx context.Context, tenant, address string) ([]tracker.Record, error) {
	k := s.tenantKeys(tenant)
	ids, err := s.rdb.HKeys(ctx, k.address(address)).Result()
	if err != nil {
		return nil, fmt.Errorf("read address index: %w", err)
	}
	slices.Sort(ids)
	return s.records(ctx, k, ids)
}

func (s *Store) records(ctx context.Context, k keys, ids []string) ([]tracker.Record, error) {
	cmds := make([]*redis.SliceCmd, len(ids))
	if _, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.HMGet(ctx, k.record(id), "j")
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read records: %w", err)
	}
	out := make([]tracker.Record, 0, len(ids))
	for i, c := range cmds {
		raw, ok := c.Val()[0].(string)
		if !ok {
			continue // deleted between the index read and this one
		}
		var r storedRecord
		if err := json.Unmarshal([]byte(raw), &r); err != nil {
			return nil, fmt.Errorf("decode record %s: %w", ids[i], err)
		}
		out = append(out, r.domain())
	}
	return out, nil
}

// ---- tokens ----

// IssueToken implements tracker.Store. The number comes from one counter for all tenants (INCR,
// its own slot), then the token is recorded in the tenant's keyspace; a crash between the two
// only leaves a number unused.
func (s *Store) IssueToken(ctx context.Context, tenant, prefix string, digits int, regarding tracker.RecordRef, now time.Time) (tracker.Token, error) {
	n, err := s.rdb.Incr(ctx, tokenSeqKey).Result()
	if err != nil {
		return tracker.Token{}, fmt.Errorf("allocate token number: %w", err)
	}
	t := tracker.Token{Token: tracker.FormatToken(prefix, digits, n), Regarding: regarding, Issued: now}
	b, err := json.Marshal(t)
	if err != nil {
		return tracker.Token{}, err
	}
	if err := s.rdb.Set(ctx, s.tenantKeys(tenant).token(t.Token), b, 0).Err(); err != nil {
		return tracker.Token{}, fmt.Errorf("record token: %w", err)
	}
	return t, nil
}

// ---- tracking ----

// appendStamped appends a candidate's JSON prefixed with its sent time in 13 digits of
// milliseconds, so the tracking script can keep the latest without decoding JSON.
func appendStamped(b []byte, c *tracker.Candidate) []byte {
	b = appendDigits13(b, max(c.SentAt.UnixMilli(), 0))
	b = append(b, '|')
	return appendCandidate(b, c)
}

// appendDigits13 appends n (≥ 0) zero-padded to 13 digits.
func appendDigits13(b []byte, n int64) []byte {
	var d [20]byte
	s := strconv.AppendInt(d[:0], n, 10)
	for range 13 - len(s) {
		b = append(b, '0')
	}
	return append(b, s...)
}

func unstamp(raw string) (*tracker.Candidate, error) {
	_, js, ok := strings.Cut(raw, "|")
	if !ok {
		return nil, fmt.Errorf("index value without stamp")
	}
	c, err := decodeCandidate(js)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// cursor is the member of a record's index: newest sent first in lexical order, Message-ID
// breaking ties, so pages are keyset ranges.
func cursor(e *tracker.TrackedEmail) string {
	const maxMs = 9_999_999_999_999
	b := make([]byte, 0, 14+len(e.MessageID))
	b = appendDigits13(b, maxMs-max(min(e.SentAt.UnixMilli(), maxMs), 0))
	b = append(b, '|')
	return string(append(b, e.MessageID...))
}

func candidate(e *tracker.TrackedEmail) tracker.Candidate {
	return tracker.Candidate{MessageID: e.MessageID, Regarding: e.Regarding, SentAt: e.SentAt}
}

// Gather implements tracker.Store: one pipeline reads the settings, the Message-ID, and every
// correlation and address lookup.
func (s *Store) Gather(ctx context.Context, tenant string, q tracker.Query) (tracker.Gathered, error) {
	gs, err := s.GatherMany(ctx, []tracker.TenantQuery{{Tenant: tenant, Query: q}})
	if err != nil {
		return tracker.Gathered{}, err
	}
	return gs[0], nil
}

// gatherCmds are one query's replies in a GatherMany pipeline: slots of the string values
// read (-1: not read) and the address index commands.
type gatherCmds struct {
	org, user, existing, irt, thread, smart int
	exists                                  *redis.IntCmd
	tokens, refs                            []int
	addrs                                   []*redis.StringSliceCmd
	// regarding reads the JSON of the record the message names as its regarding record.
	regarding *redis.StringCmd
}

// gatherStrings are the string keys a GatherMany call reads, each once: one MGET per partition
// (a Redis Cluster slot) instead of a GET per key, so Redis parses and dispatches one command
// for all of them.
type gatherStrings struct {
	slot  map[string]int // key -> slot
	part  []int          // slot -> its MGET
	pos   []int          // slot -> its position in that MGET
	mgets []*mgetCall
	parts map[string]int // partition -> its MGET
	vals  []string       // after the read: slot -> value
	found []bool         // slot -> the key exists
}

type mgetCall struct {
	keys []string
	cmd  *redis.SliceCmd
}

// add returns the slot of a key of partition k.part, adding it when new.
func (g *gatherStrings) add(k *keys, key string) int {
	if i, ok := g.slot[key]; ok {
		return i
	}
	m, ok := g.parts[k.part]
	if !ok {
		m = len(g.mgets)
		g.parts[k.part] = m
		g.mgets = append(g.mgets, &mgetCall{})
	}
	i := len(g.part)
	g.slot[key] = i
	g.part = append(g.part, m)
	g.pos = append(g.pos, len(g.mgets[m].keys))
	g.mgets[m].keys = append(g.mgets[m].keys, key)
	return i
}

// read takes the MGET replies.
func (g *gatherStrings) read() error {
	g.vals, g.found = make([]string, len(g.part)), make([]bool, len(g.part))
	for _, m := range g.mgets {
		if err := m.cmd.Err(); err != nil {
			return err
		}
		if n := len(m.cmd.Val()); n != len(m.keys) {
			return fmt.Errorf("MGET of %d keys answered %d values", len(m.keys), n)
		}
	}
	for i, m := range g.part {
		v, ok := g.mgets[m].cmd.Val()[g.pos[i]].(string)
		g.vals[i], g.found[i] = v, ok
	}
	return nil
}

// GatherMany implements tracker.Store: one pipeline for every query. A key several messages
// read (the tenant's settings, a user's options, the email many replies answer, a sender's
// address) is read and decoded once per call; the string values are read by one MGET per
// partition.
func (s *Store) GatherMany(ctx context.Context, qs []tracker.TenantQuery) ([]tracker.Gathered, error) {
	cmds := make([]gatherCmds, len(qs))
	strs := &gatherStrings{slot: make(map[string]int, 4*len(qs)), parts: map[string]int{}}
	hashes := make(map[string]*redis.StringSliceCmd, 2*len(qs))
	slots := make([]int, 0, 2*len(qs))
	addrs := make([]*redis.StringSliceCmd, 0, 4*len(qs))
	tk := keysOf{s: s}
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range qs {
			q, c, k := &qs[i], &cmds[i], tk.of(qs[i].Tenant)
			c.org, c.user, c.existing, c.irt, c.thread, c.smart = strs.add(&k, k.org()), -1, -1, -1, -1, -1
			if q.User != "" {
				c.user = strs.add(&k, k.user(q.User))
			}
			if q.PresenceOnly {
				c.exists = p.Exists(ctx, k.email(q.MessageID))
			} else {
				c.existing = strs.add(&k, k.email(q.MessageID))
			}
			if q.InReplyTo != "" {
				c.irt = strs.add(&k, k.email(q.InReplyTo))
			}
			if len(q.Tokens)+len(q.References) > 0 {
				start := len(slots)
				for _, t := range q.Tokens {
					slots = append(slots, strs.add(&k, k.token(t)))
				}
				for _, r := range q.References {
					slots = append(slots, strs.add(&k, k.email(r)))
				}
				all := slots[start:len(slots):len(slots)]
				c.tokens, c.refs = all[:len(q.Tokens):len(q.Tokens)], all[len(q.Tokens):]
			}
			if q.ThreadID != "" {
				c.thread = strs.add(&k, k.thread(q.ThreadID))
			}
			if q.SmartKey != "" {
				c.smart = strs.add(&k, k.smart(q.SmartKey))
			}
			start := len(addrs)
			for _, a := range q.Addresses {
				key := k.address(a)
				hc, ok := hashes[key]
				if !ok {
					hc = p.HVals(ctx, key)
					hashes[key] = hc
				}
				addrs = append(addrs, hc)
			}
			c.addrs = addrs[start:len(addrs):len(addrs)]
			if q.Regarding != "" {
				c.regarding = p.HGet(ctx, k.record(q.Regarding), "j")
			}
		}
		for _, m := range strs.mgets {
			m.cmd = p.MGet(ctx, m.keys...)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("gather: %w", err)
	}
	if err := strs.read(); err != nil {
		return nil, fmt.Errorf("gather: %w", err)
	}
	n := len(strs.part)
	d := &decoder{
		strs: strs, decoded: make([]bool, n), orgs: make([]tracker.OrgSettings, n), users: make([]storedUser, n),
		cands: make([]*tracker.Candidate, n), recs: make(map[*redis.StringSliceCmd][]tracker.RecordRef, len(hashes)),
	}
	out := make([]tracker.Gathered, len(qs))
	for i := range qs {
		if err := d.gathered(&qs[i].Query, &cmds[i], &out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// decoder decodes GatherMany's replies, each shared reply once.
type decoder struct {
	strs *gatherStrings
	// decoded[slot] says that the slot's value has been decoded into orgs, users or cands.
	decoded []bool
	orgs    []tracker.OrgSettings
	users   []storedUser
	// cands are decoded emails and index entries; nil for a key that does not exist.
	cands []*tracker.Candidate
	recs  map[*redis.StringSliceCmd][]tracker.RecordRef
}

// candidate decodes a tracked email's JSON (stamped false) or an index entry (stamped true).
func (d *decoder) candidate(slot int, stamped bool) (*tracker.Candidate, error) {
	if d.decoded[slot] {
		return d.cands[slot], nil
	}
	d.decoded[slot] = true
	if !d.strs.found[slot] {
		return nil, nil
	}
	raw := d.strs.vals[slot]
	var cand *tracker.Candidate
	var err error
	if stamped {
		cand, err = unstamp(raw)
	} else {
		var x tracker.Candidate
		x, err = decodeCandidate(raw)
		cand = &x
	}
	if err != nil {
		d.decoded[slot] = false
		return nil, err
	}
	d.cands[slot] = cand
	return cand, nil
}

// gathered decodes one query's replies into g.
func (d *decoder) gathered(q *tracker.Query, c *gatherCmds, g *tracker.Gathered) error {
	ev := &g.Evidence
	if !d.decoded[c.org] {
		if d.strs.found[c.org] {
			var o storedOrg
			if err := json.Unmarshal([]byte(d.strs.vals[c.org]), &o); err != nil {
				return fmt.Errorf("decode org settings: %w", err)
			}
			d.orgs[c.org] = o.domain()
		}
		d.decoded[c.org] = true
	}
	ev.Org = d.orgs[c.org]
	ev.User = tracker.UserSettings{UserID: q.User}
	if c.user >= 0 {
		if !d.decoded[c.user] {
			if d.strs.found[c.user] {
				if err := json.Unmarshal([]byte(d.strs.vals[c.user]), &d.users[c.user]); err != nil {
					return fmt.Errorf("decode user settings: %w", err)
				}
			}
			d.decoded[c.user] = true
		}
		u := d.users[c.user]
		ev.User.Option, ev.User.Version = u.Option, u.Version
	}
	if c.exists != nil {
		g.AlreadyTracked = c.exists.Err() == nil && c.exists.Val() > 0
	}
	if c.existing >= 0 && d.strs.found[c.existing] {
		e, err := decodeEmail([]byte(d.strs.vals[c.existing]))
		if err != nil {
			return err
		}
		g.Existing, g.AlreadyTracked = e, true
	}
	var err error
	if c.irt >= 0 {
		if ev.InReplyTo, err = d.copyOf(d.candidate(c.irt, false)); err != nil {
			return err
		}
	}
	for i, slot := range c.tokens {
		if d.strs.found[slot] {
			var t tracker.Token
			if err := json.Unmarshal([]byte(d.strs.vals[slot]), &t); err != nil {
				return fmt.Errorf("decode token: %w", err)
			}
			if ev.Tokens == nil {
				ev.Tokens = map[string]tracker.Token{}
			}
			ev.Tokens[q.Tokens[i]] = t
		}
	}
	for i, slot := range c.refs {
		cand, err := d.candidate(slot, false)
		if err != nil {
			return err
		}
		if cand != nil {
			if ev.References == nil {
				ev.References = map[string]tracker.Candidate{}
			}
			ev.References[q.References[i]] = *cand
		}
	}
	if c.thread >= 0 {
		if ev.Thread, err = d.copyOf(d.candidate(c.thread, true)); err != nil {
			return fmt.Errorf("decode thread index: %w", err)
		}
	}
	if c.smart >= 0 {
		if ev.Smart, err = d.copyOf(d.candidate(c.smart, true)); err != nil {
			return fmt.Errorf("decode smart index: %w", err)
		}
	}
	for i, ac := range c.addrs {
		refs, ok := d.recs[ac]
		if !ok {
			vals := ac.Val()
			if len(vals) > 0 {
				refs = make([]tracker.RecordRef, 0, len(vals))
			}
			for _, raw := range vals {
				r, err := decodeRef(raw)
				if err != nil {
					return fmt.Errorf("decode address index: %w", err)
				}
				refs = append(refs, r)
			}
			slices.SortFunc(refs, func(a, b tracker.RecordRef) int { return strings.Compare(a.ID, b.ID) })
			d.recs[ac] = refs
		}
		if len(refs) == 0 {
			continue
		}
		if ev.Records == nil {
			ev.Records = map[string][]tracker.RecordRef{}
		}
		ev.Records[q.Addresses[i]] = refs
	}
	if c.regarding != nil {
		switch raw, err := c.regarding.Result(); {
		case errors.Is(err, redis.Nil):
			// The tenant has no such record: the regarding rule says so.
		case err != nil:
			return fmt.Errorf("read regarding record %s: %w", q.Regarding, err)
		default:
			var r storedRecord
			if err := json.Unmarshal([]byte(raw), &r); err != nil {
				return fmt.Errorf("decode regarding record %s: %w", q.Regarding, err)
			}
			rec := r.domain()
			ref := rec.Ref()
			ev.Regarding = &ref
		}
	}
	return nil
}

// copyOf returns a copy of a shared candidate, so one message's evidence never aliases
// another's.
func (d *decoder) copyOf(c *tracker.Candidate, err error) (*tracker.Candidate, error) {
	if c == nil || err != nil {
		return nil, err
	}
	x := *c
	return &x, nil
}

// trackCall is trackScript's keys and arguments for one tracked email.
func (s *Store) trackCall(ctx context.Context, tenant string, e *tracker.TrackedEmail, smartKey string) ([]string, []any, error) {
	k := s.tenantKeys(tenant)
	data := appendEmail(make([]byte, 0, 1024), e)
	c := candidate(e)
	cand := appendStamped(make([]byte, 0, 128), &c)
	ks := make([]string, 2, 6)
	ks[0], ks[1] = k.email(e.MessageID), k.events()
	hasThread, hasSmart := "0", "0"
	if e.ThreadID != "" {
		ks, hasThread = append(ks, k.thread(e.ThreadID)), "1"
	}
	if smartKey != "" {
		ks, hasSmart = append(ks, k.smart(smartKey)), "1"
	}
	var seen []string
	addRecord := func(id string) {
		if !slices.Contains(seen, id) {
			seen = append(seen, id)
			ks = append(ks, k.recordMails(id))
		}
	}
	if e.Regarding != nil {
		addRecord(e.Regarding.ID)
	}
	for _, l := range e.Links {
		addRecord(l.Record.ID)
	}
	ev := events.EmailTracked(tenant, e)
	env, err := eventbus.Envelope(ctx, ev.ID, ev.Subject, tenant, ev.Msg)
	if err != nil {
		return nil, nil, err
	}
	return ks, append([]any{data, hasThread, hasSmart, cand, cursor(e)}, env...), nil
}

// Track implements tracker.Store.
func (s *Store) Track(ctx context.Context, tenant string, e *tracker.TrackedEmail, smartKey string) (bool, *tracker.TrackedEmail, error) {
	ks, argv, err := s.trackCall(ctx, tenant, e, smartKey)
	if err != nil {
		return false, nil, err
	}
	res, err := trackScript.Run(ctx, s.rdb, ks, argv...).Slice()
	if err != nil {
		return false, nil, fmt.Errorf("track: %w", err)
	}
	if n, _ := res[0].(int64); n == 1 {
		return true, e, nil
	}
	raw, _ := res[1].(string)
	old, err := decodeEmail([]byte(raw))
	if err != nil {
		return false, nil, err
	}
	return false, old, nil
}

// maxTrackPerCall bounds the emails of one trackManyScript call, so one call keeps Redis busy
// for a millisecond or two at most.
const maxTrackPerCall = 64

// keysOf remembers the keys of the last tenant asked for: the messages of a batch are mostly of
// one tenant, and building a tenant's keys hashes the tenant and allocates.
type keysOf struct {
	s      *Store
	tenant string
	k      keys
	ok     bool
}

func (c *keysOf) of(tenant string) keys {
	if !c.ok || c.tenant != tenant {
		c.tenant, c.k, c.ok = tenant, c.s.tenantKeys(tenant), true
	}
	return c.k
}

// trackMany is one trackManyScript call being built: the keys and arguments of up to
// maxTrackPerCall tracked emails of one partition.
type trackMany struct {
	idx    []int // the writes it tracks
	keys   []string
	argv   []any
	tenant string // the tenant of the last email added
	cmd    *redis.Cmd
	// buf holds the emails' JSON, stamped candidates and event data, each argument a piece of
	// it (a piece stays valid when buf grows).
	buf []byte
}

func newTrackMany(k keys) *trackMany {
	c := &trackMany{keys: make([]string, 1, 1+4*16), argv: make([]any, 2, 2+5*16), buf: make([]byte, 0, 8<<10)}
	c.keys[0], c.argv[0], c.argv[1] = k.events(), 0, events.EmailTrackedSubject
	return c
}

// The flags of an email's header in a trackManyScript call.
const (
	tmThread  = 1
	tmSmart   = 2
	tmTenant  = 4
	tmParent  = 8
	tmState   = 16
	tmCursor  = 32
	tmPerKey  = 64 // the header is tmPerKey × the email's number of keys + its flags
	maxCursor = 9_999_999_999_999
)

// add appends an email's keys and arguments (see trackManyScript). The EmailTracked event is
// the one trackCall builds for trackScript.
func (c *trackMany) add(ctx context.Context, tenant string, k keys, e *tracker.TrackedEmail, smartKey string) error {
	ev := events.EmailTracked(tenant, e)
	start := len(c.buf)
	buf, err := proto.MarshalOptions{}.MarshalAppend(c.buf, ev.Msg)
	if err != nil {
		return fmt.Errorf("%w: marshal %s: %w", eventbus.ErrInvalidEvent, ev.ID, err)
	}
	payload := buf[start:len(buf):len(buf)]
	var tc traceCarrier
	propagation.TraceContext{}.Inject(ctx, &tc)

	first := len(c.keys)
	flags := 0
	c.keys = append(c.keys, k.email(e.MessageID))
	if e.ThreadID != "" {
		c.keys, flags = append(c.keys, k.thread(e.ThreadID)), flags|tmThread
	}
	if smartKey != "" {
		c.keys, flags = append(c.keys, k.smart(smartKey)), flags|tmSmart
	}
	records := len(c.keys)
	addRecord := func(id string) {
		key := k.recordMails(id)
		if !slices.Contains(c.keys[records:], key) {
			c.keys = append(c.keys, key)
		}
	}
	if e.Regarding != nil {
		addRecord(e.Regarding.ID)
	}
	for _, l := range e.Links {
		addRecord(l.Record.ID)
	}
	newTenant := len(c.idx) == 0 || tenant != c.tenant
	if newTenant {
		flags |= tmTenant
	}
	if tc.parent != "" {
		flags |= tmParent
	}
	if tc.state != "" {
		flags |= tmState
	}
	ms := e.SentAt.UnixMilli()
	if ms > maxCursor {
		flags |= tmCursor
	}
	c.argv = append(c.argv, tmPerKey*(len(c.keys)-first)+flags)
	if newTenant {
		c.argv = append(c.argv, tenant)
		c.tenant = tenant
	}
	cand := candidate(e)
	start = len(buf)
	buf = appendEmail(buf, e)
	data := buf[start:len(buf):len(buf)]
	start = len(buf)
	buf = appendStamped(buf, &cand)
	c.argv = append(c.argv, data, buf[start:len(buf):len(buf)], payload)
	c.buf = buf
	if tc.parent != "" {
		c.argv = append(c.argv, tc.parent)
	}
	if tc.state != "" {
		c.argv = append(c.argv, tc.state)
	}
	if flags&tmCursor != 0 {
		c.argv = append(c.argv, cursor(e))
	}
	c.argv[0] = len(c.idx) + 1
	return nil
}

// traceCarrier takes the W3C trace context of an event as eventbus.Envelope would put it into
// the stream entry, without a map per event.
type traceCarrier struct{ parent, state string }

// Get is part of propagation.TextMapCarrier; injecting never reads.
func (t *traceCarrier) Get(string) string { return "" }

// Keys is part of propagation.TextMapCarrier; injecting never lists.
func (t *traceCarrier) Keys() []string { return nil }

// Set keeps the two headers the stream entry has fields for (eventbus.Envelope keeps the same).
func (t *traceCarrier) Set(key, value string) {
	switch key {
	case eventbus.HeaderTraceparent:
		t.parent = value
	case eventbus.HeaderTracestate:
		t.state = value
	}
}

// WriteMany implements tracker.Store: one pipeline of SETs of explanations with their TTL and
// trackManyScript calls, each for up to maxTrackPerCall tracked emails of one partition in
// their order (each email atomic on its own, so a Message-ID tracked meanwhile is left as it
// is). Writes to the same key keep their order: all keys of an email are in its tenant's
// partition. The scripts are called by their SHA; when Redis does not know one (a restart, a
// SCRIPT FLUSH), it is loaded and the refused calls are sent again: a refused call ran nothing.
func (s *Store) WriteMany(ctx context.Context, ws []tracker.Write) ([]tracker.WriteResult, error) {
	out := make([]tracker.WriteResult, len(ws))
	var calls []*trackMany
	open := map[string]*trackMany{} // by partition
	sets := make([]*redis.StatusCmd, len(ws))
	type set struct {
		key string
		val []byte
		ttl time.Duration
	}
	pending := make([]set, len(ws))
	tk := keysOf{s: s}
	for i, w := range ws {
		wctx := w.Ctx //nolint:contextcheck // each write of the batch runs under its own caller's context
		if wctx == nil {
			wctx = ctx
		}
		switch {
		case w.Email != nil:
			k := tk.of(w.Tenant)
			c := open[k.part]
			if c == nil || len(c.idx) == maxTrackPerCall {
				c = newTrackMany(k)
				open[k.part] = c
				calls = append(calls, c)
			}
			if err := c.add(wctx, w.Tenant, k, w.Email, w.SmartKey); err != nil {
				out[i].Err = err
				continue
			}
			c.idx = append(c.idx, i)
		case w.Explanation != nil:
			b := appendExplanation(make([]byte, 0, 512), w.Explanation)
			pending[i] = set{key: tk.of(w.Tenant).decision(w.Explanation.MessageID), val: b, ttl: w.TTL}
		default:
			out[i].Err = errors.New("write: neither a tracked email nor an explanation")
		}
	}
	for attempt := 0; ; attempt++ {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, c := range calls {
				c.cmd = trackManyScript.EvalSha(ctx, p, c.keys, c.argv...)
			}
			if attempt == 0 {
				for i, st := range pending {
					if st.key != "" {
						sets[i] = p.Set(ctx, st.key, st.val, st.ttl)
					}
				}
			}
			return nil
		})
		// A Redis error reply is the one command's (NOSCRIPT, WRONGTYPE); anything else (the
		// connection) fails every write.
		var reply redis.Error
		if err != nil && !errors.As(err, &reply) {
			return nil, fmt.Errorf("write decisions: %w", err)
		}
		if attempt == 0 {
			for i, c := range sets {
				if c != nil && c.Err() != nil {
					out[i].Err = fmt.Errorf("keep decision: %w", c.Err())
				}
			}
		}
		var again []*trackMany
		for _, c := range calls {
			res, err := c.cmd.Int64Slice()
			switch {
			case isNoScript(err) && attempt == 0:
				again = append(again, c)
			case err != nil || len(res) != len(c.idx):
				if err == nil {
					err = fmt.Errorf("%d results for %d emails", len(res), len(c.idx))
				}
				for _, i := range c.idx {
					out[i].Err = fmt.Errorf("track: %w", err)
				}
			default:
				for j, i := range c.idx {
					out[i].Created = res[j] == 1
				}
			}
		}
		if len(again) == 0 {
			return out, nil
		}
		if err := trackManyScript.Load(ctx, s.rdb).Err(); err != nil {
			return nil, fmt.Errorf("load the tracking script: %w", err)
		}
		calls = again
	}
}

func isNoScript(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") }

// GetTracked implements tracker.Store.
func (s *Store) GetTracked(ctx context.Context, tenant, messageID string) (*tracker.TrackedEmail, error) {
	raw, err := s.rdb.Get(ctx, s.tenantKeys(tenant).email(messageID)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, errs.NotFound("tracked email", messageID)
	case err != nil:
		return nil, fmt.Errorf("read tracked email: %w", err)
	}
	return decodeEmail(raw)
}

// ListTracked implements tracker.Store.
func (s *Store) ListTracked(ctx context.Context, tenant, recordID, after string, limit int) ([]tracker.TrackedEmail, string, error) {
	k := s.tenantKeys(tenant)
	min := "-"
	if after != "" {
		min = "(" + after
	}
	members, err := s.rdb.ZRangeByLex(ctx, k.recordMails(recordID), &redis.ZRangeBy{Min: min, Max: "+", Count: int64(limit + 1)}).Result()
	if err != nil {
		return nil, "", fmt.Errorf("list tracked emails: %w", err)
	}
	next := ""
	if len(members) > limit {
		members = members[:limit]
		next = members[limit-1]
	}
	cmds := make([]*redis.StringCmd, len(members))
	if _, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, m := range members {
			_, id, _ := strings.Cut(m, "|")
			cmds[i] = p.Get(ctx, k.email(id))
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, "", fmt.Errorf("read tracked emails: %w", err)
	}
	out := make([]tracker.TrackedEmail, 0, len(cmds))
	for _, c := range cmds {
		if c.Err() != nil {
			continue
		}
		e, err := decodeEmail([]byte(c.Val()))
		if err != nil {
			return nil, "", err
		}
		out = append(out, *e)
	}
	return out, next, nil
}

// SaveDecision implements tracker.Store.
func (s *Store) SaveDecision(ctx context.Context, tenant string, x *tracker.Explanation, ttl time.Duration) error {
	b := appendExplanation(nil, x)
	if err := s.rdb.Set(ctx, s.tenantKeys(tenant).decision(x.MessageID), b, ttl).Err(); err != nil {
		return fmt.Errorf("keep decision: %w", err)
	}
	return nil
}

// Decision implements tracker.Store.
func (s *Store) Decision(ctx context.Context, tenant, messageID string) (*tracker.Explanation, error) {
	raw, err := s.rdb.Get(ctx, s.tenantKeys(tenant).decision(messageID)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, errs.NotFound("decision", messageID)
	case err != nil:
		return nil, fmt.Errorf("read decision: %w", err)
	}
	return decodeExplanation(raw)
}
