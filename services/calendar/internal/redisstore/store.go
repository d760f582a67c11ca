package redisstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
	"github.com/postamt/postamt/services/calendar/internal/events"
	"github.com/postamt/postamt/services/calendar/internal/ical"
)

// Options tune a Store; zero values are the documented defaults.
type Options struct {
	// LogMaxLen bounds each user's sync log, in lines (approximately); 0 means 1000.
	LogMaxLen int
	// LogRetention bounds the age of each user's sync log lines: older ones are dropped as new
	// ones are written; 0 means 30 days.
	LogRetention time.Duration
	// Partitions is how many partitions tenants are spread over (REDIS_PARTITIONS); 0 means
	// redisx.DefaultPartitions. Part of the data layout (CheckPartitions).
	Partitions int
	// Zones resolves entries' time zones for the series index (cached); nil means
	// ical.NewZones(). The service's builder's, so one cache serves both.
	Zones *ical.Zones
}

// Store implements calendar.Store on Redis.
type Store struct {
	rdb    redis.UniversalClient
	parts  int
	logMax int64
	keep   time.Duration
	// logBound is the scripts' sync log bound, "maxlen:retention ms" (cal_log).
	logBound string
	zones    *ical.Zones
}

var _ calendar.Store = (*Store)(nil)

// New returns a Store on rdb.
func New(rdb redis.UniversalClient, opts Options) *Store {
	if opts.LogMaxLen == 0 {
		opts.LogMaxLen = 1000
	}
	if opts.LogRetention == 0 {
		opts.LogRetention = 30 * 24 * time.Hour
	}
	if opts.Partitions <= 0 {
		opts.Partitions = redisx.DefaultPartitions
	}
	if opts.Zones == nil {
		if z, err := ical.NewZones(); err == nil { // the embedded table, checked by ical's tests
			opts.Zones = z
		}
	}
	return &Store{rdb: rdb, parts: opts.Partitions, logMax: int64(opts.LogMaxLen), keep: opts.LogRetention,
		logBound: strconv.Itoa(opts.LogMaxLen) + ":" + strconv.FormatInt(opts.LogRetention.Milliseconds(), 10), zones: opts.Zones}
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func ms(t time.Time) int64 { return t.UnixMilli() }

// ---- settings ----

// TenantSettings implements calendar.Store.
func (s *Store) TenantSettings(ctx context.Context, tenant string) (calendar.TenantSettings, error) {
	var t calendar.TenantSettings
	if _, _, err := redisx.GetJSON(ctx, s.rdb, s.tenantKeys(tenant).settings(), &t); err != nil {
		return t, fmt.Errorf("read tenant settings: %w", err)
	}
	return t, nil
}

// UpdateTenantSettings implements calendar.Store.
func (s *Store) UpdateTenantSettings(ctx context.Context, tenant string, mutate func(*calendar.TenantSettings) error) (calendar.TenantSettings, error) {
	return redisx.UpdateJSON(ctx, s.rdb, s.tenantKeys(tenant).settings(), mutate)
}

// UserSettings implements calendar.Store.
func (s *Store) UserSettings(ctx context.Context, tenant, user string) (calendar.UserSettings, error) {
	var u calendar.UserSettings
	if _, _, err := redisx.GetJSON(ctx, s.rdb, s.tenantKeys(tenant).userSettings(user), &u); err != nil {
		return u, fmt.Errorf("read user settings: %w", err)
	}
	u.UserID = user
	return u, nil
}

// UpdateUserSettings implements calendar.Store.
func (s *Store) UpdateUserSettings(ctx context.Context, tenant, user string, mutate func(*calendar.UserSettings) error) (calendar.UserSettings, error) {
	u, err := redisx.UpdateJSON(ctx, s.rdb, s.tenantKeys(tenant).userSettings(user), func(u *calendar.UserSettings) error {
		u.UserID = user
		return mutate(u)
	})
	return u, err
}

// ---- entries ----

// A stored revision is the entry's JSON, a line break, then the iCalendar text as it is:
// delivering a revision decodes only the small JSON, never the text (which, as a JSON string,
// cost most of an agent's catch-up in escapes). JSON never holds a raw line break, so the first
// one ends it.
func encodeRevision(r *calendar.Revision) (string, error) {
	e, err := json.Marshal(&r.Entry)
	if err != nil {
		return "", fmt.Errorf("encode revision: %w", err)
	}
	return string(e) + "\n" + string(r.ICS), nil
}

// WriteEntry implements calendar.Store.
func (s *Store) WriteEntry(ctx context.Context, tenant string, w calendar.Write) (int64, error) {
	k := s.tenantKeys(tenant)
	e := &w.Rev.Entry
	cur, err := json.Marshal(e)
	if err != nil {
		return 0, err
	}
	rev, err := encodeRevision(w.Rev)
	if err != nil {
		return 0, err
	}
	ev := events.EntryChanged(tenant, e, w.Target)
	env, err := eventbus.Envelope(ctx, ev.ID, ev.Subject, tenant, ev.Msg)
	if err != nil {
		return 0, err
	}
	target := w.Target
	qt := target
	if qt == calendar.TargetNone {
		qt = calendar.TargetAgent // keys must be named even when unused
	}
	wake := wakePayload(tenant, e.Owner)
	if target == calendar.TargetCalDAV {
		wake = pushPayload(k.n)
	}
	series, err := s.seriesScore(e)
	if err != nil {
		return 0, err
	}
	keys := []string{k.entry(e.ID), k.revs(e.ID), k.owner(e.Owner), k.events(), k.queue(e.Owner, qt), k.items(e.Owner, qt),
		k.pos(e.Owner), k.log(e.Owner), k.pushDue(), k.dead(e.Owner, qt), k.series(e.Owner), k.errs(e.Owner, qt), k.remote(e.Owner, qt),
		k.deadIndex(qt), k.pendingIndex(qt)}
	argv := append([]any{w.Prev, e.Revision, cur, rev, e.ID, e.Score(), string(target), flag(w.Log), s.logBound, ms(w.Now),
		dueMember(tenant, e.Owner, e.ID), NotifyChannel, wake, series}, append(env, flag(e.Cancelled))...)
	res, err := writeScript.Run(ctx, s.rdb, keys, argv...).Slice()
	if err != nil {
		return 0, fmt.Errorf("write entry %s: %w", e.ID, err)
	}
	if res[0].(int64) == 0 {
		rc := &calendar.ErrRevisionChanged{}
		if raw, _ := res[1].(string); raw != "" {
			var stored calendar.Entry
			if err := json.Unmarshal([]byte(raw), &stored); err != nil {
				return 0, fmt.Errorf("decode entry %s: %w", e.ID, err)
			}
			rc.Current = &stored
		}
		return 0, rc
	}
	return res[1].(int64), nil
}

// Enqueue implements calendar.Store.
func (s *Store) Enqueue(ctx context.Context, tenant string, e *calendar.Entry, target calendar.Target, log bool, now time.Time, detail string) (int64, error) {
	k := s.tenantKeys(tenant)
	wake := wakePayload(tenant, e.Owner)
	if target == calendar.TargetCalDAV {
		wake = pushPayload(k.n)
	}
	keys := []string{k.queue(e.Owner, target), k.items(e.Owner, target), k.pos(e.Owner), k.log(e.Owner), k.pushDue(),
		k.dead(e.Owner, target), k.remote(e.Owner, target), k.errs(e.Owner, target), k.pendingIndex(target)}
	pos, err := enqueueScript.Run(ctx, s.rdb, keys, e.ID, e.Revision, flag(e.Cancelled), string(target), flag(log), s.logBound,
		ms(now), dueMember(tenant, e.Owner, e.ID), NotifyChannel, wake, detail).Int64()
	if err != nil {
		return 0, fmt.Errorf("enqueue entry %s: %w", e.ID, err)
	}
	return pos, nil
}

// seriesScore is a recurring entry's place in the owner's series index: the start of its last
// occurrence in Unix milliseconds, "+inf" when it has no end, "" when it does not recur. The
// rule is expanded in the entry's zone, as it was validated and is written in iCalendar (an
// all-day entry's rule in UTC, from midnight of its day).
func (s *Store) seriesScore(e *calendar.Entry) (string, error) {
	if e.RRule == "" {
		return "", nil
	}
	loc := time.UTC
	if !e.Kind.AllDay() {
		if s.zones == nil {
			return "", fmt.Errorf("series end of %s: no time zone table", e.ID)
		}
		// The stored zone is the IANA name the entry was validated with.
		l, err := s.zones.Load(e.TimeZone)
		if err != nil {
			return "", fmt.Errorf("series end of %s: zone: %w", e.ID, err)
		}
		loc = l
	}
	last, ok, err := ical.SeriesEnd(e.RRule, time.UnixMilli(e.Score()), loc)
	if err != nil {
		return "", fmt.Errorf("series end of %s: %w", e.ID, err)
	}
	if !ok {
		return "+inf", nil
	}
	return strconv.FormatInt(last.UnixMilli(), 10), nil
}

// GetEntry implements calendar.Store.
func (s *Store) GetEntry(ctx context.Context, tenant, id string) (*calendar.Entry, error) {
	vals, err := s.rdb.HMGet(ctx, s.tenantKeys(tenant).entry(id), "cur", warnField).Result()
	if err != nil {
		return nil, fmt.Errorf("read entry %s: %w", id, err)
	}
	raw, ok := vals[0].(string)
	if !ok {
		return nil, errs.NotFound("entry", id)
	}
	var e calendar.Entry
	if err := json.Unmarshal([]byte(raw), &e); err != nil {
		return nil, fmt.Errorf("decode entry %s: %w", id, err)
	}
	e.SyncWarning = warningText(vals[1])
	return &e, nil
}

// GetRevision implements calendar.Store.
func (s *Store) GetRevision(ctx context.Context, tenant, id string, rev int64) (*calendar.Revision, error) {
	raw, err := s.rdb.HGet(ctx, s.tenantKeys(tenant).revs(id), strconv.FormatInt(rev, 10)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, errs.NotFound("entry revision", id+"@"+strconv.FormatInt(rev, 10))
	}
	if err != nil {
		return nil, fmt.Errorf("read revision %s@%d: %w", id, rev, err)
	}
	return decodeRevision(raw)
}

func decodeRevision(raw string) (*calendar.Revision, error) {
	e, ics, ok := strings.Cut(raw, "\n")
	if !ok {
		return nil, errors.New("decode revision: no iCalendar part")
	}
	r := &calendar.Revision{ICS: []byte(ics)}
	if err := json.Unmarshal([]byte(e), &r.Entry); err != nil {
		return nil, fmt.Errorf("decode revision: %w", err)
	}
	return r, nil
}

// ListEntries implements calendar.Store. Entries with the cursor's score come first, those
// after the cursor's id (Redis orders equal scores by member).
func (s *Store) ListEntries(ctx context.Context, tenant, owner string, from, to, afterScore int64, afterID string, limit int) ([]calendar.Entry, error) {
	k := s.tenantKeys(tenant)
	var out []calendar.Entry
	if afterScore < from {
		// First the series that began before the range and still have occurrences in it, in
		// (start, id) order after the cursor.
		early, err := s.seriesBefore(ctx, k, owner, from, to, afterScore, afterID)
		if err != nil {
			return nil, err
		}
		if len(early) >= limit {
			return early[:limit], nil
		}
		out, limit = early, limit-len(early)
		afterScore, afterID = from-1, ""
	}
	var ids []string
	min := strconv.FormatInt(max(from, afterScore), 10)
	if afterScore >= from {
		if afterID != "" {
			ties, err := s.rdb.ZRangeByScore(ctx, k.owner(owner), &redis.ZRangeBy{Min: min, Max: min}).Result()
			if err != nil {
				return nil, err
			}
			for _, id := range ties {
				if id > afterID && len(ids) < limit {
					ids = append(ids, id)
				}
			}
		}
		min = "(" + min
	}
	if len(ids) < limit {
		more, err := s.rdb.ZRangeByScore(ctx, k.owner(owner), &redis.ZRangeBy{Min: min, Max: "(" + strconv.FormatInt(to, 10), Count: int64(limit - len(ids))}).Result()
		if err != nil {
			return nil, err
		}
		ids = append(ids, more...)
	}
	es, err := s.entries(ctx, k, ids)
	if err != nil {
		return nil, err
	}
	return append(out, es...), nil
}

// seriesBefore returns the owner's recurring entries that start before from (and before to) and
// whose last occurrence is at or after from, after the cursor, in (start, id) order.
func (s *Store) seriesBefore(ctx context.Context, k keys, owner string, from, to, afterScore int64, afterID string) ([]calendar.Entry, error) {
	ids, err := s.rdb.ZRangeByScore(ctx, k.series(owner), &redis.ZRangeBy{Min: strconv.FormatInt(from, 10), Max: "+inf"}).Result()
	if err != nil {
		return nil, fmt.Errorf("list series: %w", err)
	}
	es, err := s.entries(ctx, k, ids)
	if err != nil {
		return nil, err
	}
	out := es[:0]
	for _, e := range es {
		sc := e.Score()
		if sc < from && sc < to && (sc > afterScore || sc == afterScore && e.ID > afterID) {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b calendar.Entry) int {
		if c := cmp.Compare(a.Score(), b.Score()); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// entries reads the current revisions of ids in one round trip, skipping ids gone meanwhile.
func (s *Store) entries(ctx context.Context, k keys, ids []string) ([]calendar.Entry, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HMGet(ctx, k.entry(id), "cur", warnField)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("list entries: %w", err)
	}
	out := make([]calendar.Entry, 0, len(ids))
	for _, c := range cmds {
		vals, err := c.Result()
		if err != nil {
			continue
		}
		raw, ok := vals[0].(string)
		if !ok {
			continue
		}
		var e calendar.Entry
		if err := json.Unmarshal([]byte(raw), &e); err != nil {
			return nil, fmt.Errorf("decode entry: %w", err)
		}
		e.SyncWarning = warningText(vals[1])
		out = append(out, e)
	}
	return out, nil
}

// ---- queues ----

// item is a parsed queue item.
type item struct {
	pos, rev int64
	state    string
	attempts int
	err      string
}

func parseItem(s string) (item, bool) {
	parts := strings.SplitN(s, "|", 5)
	if len(parts) != 5 {
		return item{}, false
	}
	pos, err1 := strconv.ParseInt(parts[0], 10, 64)
	rev, err2 := strconv.ParseInt(parts[1], 10, 64)
	att, err3 := strconv.Atoi(parts[3])
	if err1 != nil || err2 != nil || err3 != nil {
		return item{}, false
	}
	return item{pos: pos, rev: rev, state: parts[2], attempts: att, err: parts[4]}, true
}

// NextDeliveries implements calendar.Store.
func (s *Store) NextDeliveries(ctx context.Context, tenant, user string, target calendar.Target, after int64, limit int, log bool, maxUnanswered int) ([]calendar.Delivery, error) {
	k := s.tenantKeys(tenant)
	res, err := nextScript.Run(ctx, s.rdb, []string{k.queue(user, target), k.items(user, target), k.log(user), k.errs(user, target), k.remote(user, target)},
		after, limit, flag(log), s.logBound, string(target), maxUnanswered).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("next deliveries: %w", err)
	}
	ds := make([]calendar.Delivery, 0, len(res)/5)
	for i := 0; i+4 < len(res); i += 5 {
		pos, _ := strconv.ParseInt(res[i+1], 10, 64)
		rev, _ := strconv.ParseInt(res[i+2], 10, 64)
		att, _ := strconv.Atoi(res[i+3])
		errCount, _ := strconv.Atoi(res[i+4])
		ds = append(ds, calendar.Delivery{Position: pos, EntryID: res[i], Revision: rev, Attempt: att, Errors: errCount})
	}
	return ds, s.fill(ctx, k, user, target, ds)
}

// fill reads the revisions and remote ids of deliveries in one round trip.
func (s *Store) fill(ctx context.Context, k keys, user string, target calendar.Target, ds []calendar.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	pipe := s.rdb.Pipeline()
	revs := make([]*redis.StringCmd, len(ds))
	remotes := make([]*redis.StringCmd, len(ds))
	for i, d := range ds {
		revs[i] = pipe.HGet(ctx, k.revs(d.EntryID), strconv.FormatInt(d.Revision, 10))
		remotes[i] = pipe.HGet(ctx, k.remote(user, target), d.EntryID)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("read revisions: %w", err)
	}
	for i := range ds {
		raw, err := revs[i].Result()
		if err != nil {
			return fmt.Errorf("revision %s@%d: %w", ds[i].EntryID, ds[i].Revision, err)
		}
		if ds[i].Rev, err = decodeRevision(raw); err != nil {
			return err
		}
		if r, err := remotes[i].Result(); err == nil {
			ds[i].RemoteID, ds[i].RemoteVersion, _ = strings.Cut(r, "\n")
		}
	}
	return nil
}

// PendingThrough implements calendar.Store.
func (s *Store) PendingThrough(ctx context.Context, tenant, user string, target calendar.Target, through int64) ([]calendar.Delivery, error) {
	k := s.tenantKeys(tenant)
	zs, err := s.rdb.ZRangeByScoreWithScores(ctx, k.queue(user, target), &redis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(through, 10)}).Result()
	if err != nil {
		return nil, err
	}
	var out []calendar.Delivery
	for _, z := range zs {
		d, ok, err := s.DeliveryAt(ctx, tenant, user, target, int64(z.Score))
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, d)
		}
	}
	return out, nil
}

// DeliveryAt implements calendar.Store.
func (s *Store) DeliveryAt(ctx context.Context, tenant, user string, target calendar.Target, pos int64) (calendar.Delivery, bool, error) {
	k := s.tenantKeys(tenant)
	p := strconv.FormatInt(pos, 10)
	ids, err := s.rdb.ZRangeByScore(ctx, k.queue(user, target), &redis.ZRangeBy{Min: p, Max: p}).Result()
	if err != nil || len(ids) == 0 {
		return calendar.Delivery{}, false, err
	}
	raw, err := s.rdb.HGet(ctx, k.items(user, target), ids[0]).Result()
	if errors.Is(err, redis.Nil) {
		return calendar.Delivery{}, false, nil
	}
	if err != nil {
		return calendar.Delivery{}, false, err
	}
	it, ok := parseItem(raw)
	if !ok || it.pos != pos {
		return calendar.Delivery{}, false, nil
	}
	return calendar.Delivery{Position: pos, EntryID: ids[0], Revision: it.rev, Attempt: max(it.attempts-1, 0)}, true, nil
}

// Ack implements calendar.Store.
func (s *Store) Ack(ctx context.Context, tenant, user string, a calendar.AckInput) (calendar.AckResult, error) {
	keys, argv, err := s.ackArgs(ctx, tenant, user, a)
	if err != nil {
		return calendar.AckResult{}, err
	}
	res, err := ackScript.Run(ctx, s.rdb, keys, argv...).Slice()
	if err != nil {
		return calendar.AckResult{}, fmt.Errorf("ack %s@%d: %w", a.EntryID, a.Position, err)
	}
	return ackResult(res), nil
}

// AckMany implements calendar.Store: the acknowledgements of one stream, in order, in one round
// trip (an agent catching up acknowledges thousands of deliveries a second).
func (s *Store) AckMany(ctx context.Context, tenant, user string, as []calendar.AckInput) ([]calendar.AckResult, error) {
	out := make([]calendar.AckResult, len(as))
	if len(as) == 1 {
		r, err := s.Ack(ctx, tenant, user, as[0])
		out[0] = r
		return out, err
	}
	keys := make([][]string, len(as))
	argv := make([][]any, len(as))
	for i, a := range as {
		var err error
		if keys[i], argv[i], err = s.ackArgs(ctx, tenant, user, a); err != nil {
			return nil, err
		}
	}
	run := func() ([]*redis.Cmd, error) {
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(as))
		for i := range as {
			cmds[i] = ackScript.EvalSha(ctx, pipe, keys[i], argv[i]...)
		}
		_, err := pipe.Exec(ctx)
		return cmds, err
	}
	cmds, err := run()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// A fresh server refuses every EVALSHA of the pipeline, so none ran: load and go again.
		if err := ackScript.Load(ctx, s.rdb).Err(); err != nil {
			return nil, fmt.Errorf("load ack script: %w", err)
		}
		cmds, err = run()
	}
	for i, c := range cmds {
		res, cerr := c.Slice()
		if cerr != nil {
			return out[:i], fmt.Errorf("ack %s@%d: %w", as[i].EntryID, as[i].Position, cerr)
		}
		out[i] = ackResult(res)
	}
	if err != nil {
		return out, fmt.Errorf("ack: %w", err)
	}
	return out, nil
}

// ackArgs are the ack script's keys and arguments, with both events the outcome may announce
// (delivered, or failed); the script emits the one that applies.
func (s *Store) ackArgs(ctx context.Context, tenant, user string, a calendar.AckInput) ([]string, []any, error) {
	k := s.tenantKeys(tenant)
	dev := events.EntryDelivered(tenant, user, a)
	denv, err := eventbus.Envelope(ctx, dev.ID, dev.Subject, tenant, dev.Msg)
	if err != nil {
		return nil, nil, err
	}
	fev := events.DeliveryFailed(tenant, user, a, max(a.Attempts, 1))
	fenv, err := eventbus.Envelope(ctx, fev.ID, fev.Subject, tenant, fev.Msg)
	if err != nil {
		return nil, nil, err
	}
	retry := "0"
	switch {
	case a.Dead:
		retry = "dead"
	case !a.RetryAt.IsZero():
		retry = strconv.FormatInt(ms(a.RetryAt), 10)
	}
	maxAttempts := a.MaxAttempts
	if maxAttempts <= 0 {
		maxAttempts = 1
	}
	wake := wakePayload(tenant, user)
	keys := []string{k.queue(user, a.Target), k.items(user, a.Target), k.dead(user, a.Target), k.acked(user), k.remote(user, a.Target),
		k.events(), k.log(user), k.agent(user), k.pos(user), k.pushDue(), k.errs(user, a.Target), k.deadIndex(a.Target), k.pendingIndex(a.Target)}
	argv := []any{a.Position, a.EntryID, string(a.Outcome), a.RemoteID, a.RemoteVersion, a.Message, a.Session, maxAttempts,
		flag(a.Log), s.logBound, string(a.Target), retry, dueMember(tenant, user, a.EntryID), a.Revision, ms(a.Now), NotifyChannel, wake}
	return keys, append(append(argv, denv...), fenv...), nil
}

func ackResult(res []any) calendar.AckResult {
	var out calendar.AckResult
	if len(res) == 0 {
		return out
	}
	switch res[0] {
	case "replaced":
		out.Replaced = true
	case "stale":
		out.Stale = true
	case "dead":
		out.Dead = true
	case "requeued":
		if len(res) > 1 {
			out.Requeued, _ = res[1].(int64)
		}
	}
	return out
}

// QueueStats implements calendar.Store.
func (s *Store) QueueStats(ctx context.Context, tenant, user string) (calendar.QueueStats, error) {
	k := s.tenantKeys(tenant)
	pipe := s.rdb.Pipeline()
	var pend, dead []*redis.IntCmd
	for _, g := range []calendar.Target{calendar.TargetAgent, calendar.TargetCalDAV} {
		pend = append(pend, pipe.ZCard(ctx, k.queue(user, g)))
		dead = append(dead, pipe.HLen(ctx, k.dead(user, g)))
	}
	acked := pipe.Get(ctx, k.acked(user))
	conflicts := pipe.SCard(ctx, k.conflicts(user))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return calendar.QueueStats{}, fmt.Errorf("queue stats: %w", err)
	}
	var st calendar.QueueStats
	for i := range pend {
		st.Pending += pend[i].Val()
		st.Dead += dead[i].Val()
	}
	st.AckedPosition, _ = acked.Int64()
	st.Conflicts = conflicts.Val()
	return st, nil
}

// ---- presence ----

// ClaimAgent implements calendar.Store.
func (s *Store) ClaimAgent(ctx context.Context, tenant, user string, p calendar.Presence) (string, error) {
	k := s.tenantKeys(tenant)
	prev, err := claimAgentScript.Run(ctx, s.rdb, []string{k.agent(user)}, p.Session, p.AgentID, ms(p.Since),
		NotifyChannel, kickPrefix(tenant, user)).Text()
	if err != nil {
		return "", fmt.Errorf("claim agent: %w", err)
	}
	return prev, nil
}

// TouchAgent implements calendar.Store.
func (s *Store) TouchAgent(ctx context.Context, tenant, user, session string, now time.Time) (bool, error) {
	n, err := touchAgentScript.Run(ctx, s.rdb, []string{s.tenantKeys(tenant).agent(user)}, session, ms(now)).Int()
	return n == 1, err
}

// ReleaseAgent implements calendar.Store.
func (s *Store) ReleaseAgent(ctx context.Context, tenant, user, session string, now time.Time) error {
	return releaseAgentScript.Run(ctx, s.rdb, []string{s.tenantKeys(tenant).agent(user)}, session, ms(now)).Err()
}

// Presence implements calendar.Store.
func (s *Store) Presence(ctx context.Context, tenant, user string) (*calendar.Presence, error) {
	h, err := s.rdb.HGetAll(ctx, s.tenantKeys(tenant).agent(user)).Result()
	if err != nil {
		return nil, err
	}
	if len(h) == 0 {
		return nil, nil
	}
	since, _ := strconv.ParseInt(h["since"], 10, 64)
	seen, _ := strconv.ParseInt(h["seen"], 10, 64)
	return &calendar.Presence{Session: h["s"], AgentID: h["a"], Since: time.UnixMilli(since).UTC(), LastSeen: time.UnixMilli(seen).UTC()}, nil
}

// ---- sync log ----

// AppendLog implements calendar.Store.
// Lines older than the retention are dropped, by the new line's id (Redis server time).
func (s *Store) AppendLog(ctx context.Context, tenant, user string, l calendar.LogLine) error {
	key := s.tenantKeys(tenant).log(user)
	id, err := s.rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: key, MaxLen: s.logMax, Approx: true,
		Values: []any{"a", l.Action, "e", l.EntryID, "r", l.Revision, "g", string(l.Target), "p", l.Position, "d", l.Detail},
	}).Result()
	if err != nil {
		return fmt.Errorf("append to sync log: %w", err)
	}
	msStr, _, _ := strings.Cut(id, "-")
	t, _ := strconv.ParseInt(msStr, 10, 64)
	if err := s.rdb.XTrimMinID(ctx, key, strconv.FormatInt(t-s.keep.Milliseconds(), 10)).Err(); err != nil {
		return fmt.Errorf("trim sync log: %w", err)
	}
	return nil
}

// SyncLog implements calendar.Store.
func (s *Store) SyncLog(ctx context.Context, tenant, user, before string, minTime time.Time, limit int) ([]calendar.LogLine, error) {
	key := s.tenantKeys(tenant).log(user)
	start := "+"
	if before != "" {
		start = "(" + before
	}
	msgs, err := s.rdb.XRevRangeN(ctx, key, start, strconv.FormatInt(ms(minTime), 10), int64(limit)).Result()
	if err != nil {
		return nil, fmt.Errorf("read sync log: %w", err)
	}
	out := make([]calendar.LogLine, 0, len(msgs))
	for _, m := range msgs {
		l := calendar.LogLine{ID: m.ID}
		if t, _, ok := strings.Cut(m.ID, "-"); ok {
			n, _ := strconv.ParseInt(t, 10, 64)
			l.Time = time.UnixMilli(n).UTC()
		}
		str := func(f string) string { v, _ := m.Values[f].(string); return v }
		l.Action, l.EntryID, l.Target, l.Detail = str("a"), str("e"), calendar.Target(str("g")), str("d")
		l.Revision, _ = strconv.ParseInt(str("r"), 10, 64)
		l.Position, _ = strconv.ParseInt(str("p"), 10, 64)
		out = append(out, l)
	}
	return out, nil
}

// ---- push ----

// DuePush is a push delivery claimed from a partition's due index.
type DuePush struct {
	Tenant, User, EntryID string
}

// ClaimDuePush leases up to limit due push deliveries of partition n until leaseEnd.
func (s *Store) ClaimDuePush(ctx context.Context, n int, now, leaseEnd time.Time, limit int) ([]DuePush, error) {
	members, err := claimDueScript.Run(ctx, s.rdb, []string{pushDueKey(n)}, ms(now), ms(leaseEnd), limit).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("claim due pushes: %w", err)
	}
	out := make([]DuePush, 0, len(members))
	for _, m := range members {
		if t, u, e, ok := parseDueMember(m); ok {
			out = append(out, DuePush{Tenant: t, User: u, EntryID: e})
		} else {
			s.rdb.ZRem(ctx, pushDueKey(n), m) // not ours: drop it rather than claim it forever
		}
	}
	return out, nil
}

// NextPushDue is the earliest due time in partition n; false when nothing is queued.
func (s *Store) NextPushDue(ctx context.Context, n int) (time.Time, bool, error) {
	zs, err := s.rdb.ZRangeWithScores(ctx, pushDueKey(n), 0, 0).Result()
	if err != nil || len(zs) == 0 {
		return time.Time{}, false, err
	}
	return time.UnixMilli(int64(zs[0].Score)), true, nil
}

// HoldPush marks a claimed push delivery in flight and returns it with its revision and the
// remembered CalDAV object name and ETag; false when the entry has no push item any more.
func (s *Store) HoldPush(ctx context.Context, p DuePush) (calendar.Delivery, bool, error) {
	k := s.tenantKeys(p.Tenant)
	raw, err := s.rdb.HGet(ctx, k.items(p.User, calendar.TargetCalDAV), p.EntryID).Result()
	if errors.Is(err, redis.Nil) {
		s.rdb.ZRem(ctx, k.pushDue(), dueMember(p.Tenant, p.User, p.EntryID))
		return calendar.Delivery{}, false, nil
	}
	if err != nil {
		return calendar.Delivery{}, false, err
	}
	it, ok := parseItem(raw)
	if !ok {
		return calendar.Delivery{}, false, fmt.Errorf("malformed push item %s", p.EntryID)
	}
	res, err := holdScript.Run(ctx, s.rdb, []string{k.items(p.User, calendar.TargetCalDAV)}, p.EntryID, it.pos).StringSlice()
	if err != nil || len(res) != 2 {
		return calendar.Delivery{}, false, err
	}
	rev, _ := strconv.ParseInt(res[0], 10, 64)
	att, _ := strconv.Atoi(res[1])
	ds := []calendar.Delivery{{Position: it.pos, EntryID: p.EntryID, Revision: rev, Attempt: att}}
	if err := s.fill(ctx, k, p.User, calendar.TargetCalDAV, ds); err != nil {
		return calendar.Delivery{}, false, err
	}
	return ds[0], true, nil
}
