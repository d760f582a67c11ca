package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/services/calendar/internal/calendar"
)

// warnField is the entry hash field holding an open CalDAV conflict note, "rev|note".
const warnField = "warn"

func (k keys) pushBase(u string) string  { return k.user(u) + ":pushbase" }
func (k keys) conflicts(u string) string { return k.user(u) + ":conflicts" }

// warningText is the note of a stored "rev|note" value; empty for none.
func warningText(v any) string {
	s, ok := v.(string)
	if !ok {
		return ""
	}
	_, note, _ := strings.Cut(s, "|")
	return note
}

// clearConflictScript removes an entry's conflict note when it is older than a revision that
// reached the calendar without conflict, so a note stays until a later change of Postamt's is
// delivered cleanly (the merged revision's own clean push keeps it).
// KEYS[1] entry hash, [2] the owner's conflict set. ARGV[1] entry id, [2] the revision pushed.
// Returns 1 when a note was removed, else 0.
var clearConflictScript = redis.NewScript(`
local w = redis.call('HGET', KEYS[1], 'warn')
if not w then return 0 end
local rev = tonumber(string.match(w, '^(%d+)|'))
if rev and rev >= tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], 'warn')
redis.call('SREM', KEYS[2], ARGV[1])
return 1
`)

// PushBase returns the iCalendar object last pushed to (or adopted from) the user's CalDAV
// calendar for an entry: the base of the three-way merge after a 412. Nil when none is known
// (an entry pushed before the base was kept, or never pushed).
func (s *Store) PushBase(ctx context.Context, tenant, user, entry string) ([]byte, error) {
	raw, err := s.rdb.HGet(ctx, s.tenantKeys(tenant).pushBase(user), entry).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read push base %s: %w", entry, err)
	}
	return []byte(raw), nil
}

// SetPushBase remembers what the calendar now holds for an entry — the object and the ETag
// under its resource name — so the next write is conditional on it and the next merge has a
// base. The push worker calls it before it adopts a merge into a new revision, so that
// revision's push finds the ETag even if another replica pushes it.
func (s *Store) SetPushBase(ctx context.Context, tenant, user, entry, remoteID, etag string, ics []byte) error {
	k := s.tenantKeys(tenant)
	pipe := s.rdb.TxPipeline()
	pipe.HSet(ctx, k.pushBase(user), entry, string(ics))
	pipe.HSet(ctx, k.remote(user, calendar.TargetCalDAV), entry, remoteID+"\n"+etag)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("write push base %s: %w", entry, err)
	}
	return nil
}

// SetConflict records an open CalDAV conflict note on an entry (shown with it and counted in
// the owner's sync status) for the revision that carries the merge result.
func (s *Store) SetConflict(ctx context.Context, tenant, user, entry string, rev int64, note string) error {
	k := s.tenantKeys(tenant)
	pipe := s.rdb.TxPipeline()
	pipe.HSet(ctx, k.entry(entry), warnField, strconv.FormatInt(rev, 10)+"|"+note)
	pipe.SAdd(ctx, k.conflicts(user), entry)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("write conflict note %s: %w", entry, err)
	}
	return nil
}

// ClearConflict removes an entry's conflict note when rev, pushed without conflict, is newer
// than the revision the note is about.
func (s *Store) ClearConflict(ctx context.Context, tenant, user, entry string, rev int64) error {
	k := s.tenantKeys(tenant)
	if err := clearConflictScript.Run(ctx, s.rdb, []string{k.entry(entry), k.conflicts(user)}, entry, rev).Err(); err != nil {
		return fmt.Errorf("clear conflict note %s: %w", entry, err)
	}
	return nil
}
