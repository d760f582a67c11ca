// Package redisstore keeps the calendar's state in Redis. All of the service's Redis access is
// here: key builders, the scripts that keep the Store invariants, and the encoding (JSON of the
// domain types, readable in redis-cli).
//
// Layout. Tenants are spread over a fixed number of partitions; every key of a tenant carries
// the partition's hash tag ({calN}), so a script over any keys of one tenant stays in one Redis
// Cluster slot, and each partition has one event stream and one push due index. The partition
// count (REDIS_PARTITIONS) is part of the data layout: chosen when a deployment is created,
// recorded under pm:cal:{cal0}:partitions, and checked at every start.
//
//	pm:cal:{calN}:events              stream  events waiting for the relay
//	pm:cal:{calN}:pushdue             zset    CalDAV deliveries by due time (ms); member T|U|E
//	pm:cal:{calN}:dead:G              zset    the partition's dead items of target G by when they died (ms); member T|U|E
//	pm:cal:{calN}:pending:G           zset    the partition's queue items of target G by when they were queued (ms); member T|U|E
//	pm:cal:{calN}:t:T:set             string  tenant settings (JSON)
//	pm:cal:{calN}:t:T:e:E             hash    entry E: rev (latest revision), cur (its JSON), warn (open CalDAV conflict "rev|note")
//	pm:cal:{calN}:t:T:e:E:revs        hash    revision number -> the entry as JSON, a line break, the iCalendar text
//	pm:cal:{calN}:t:T:o:U             zset    owner U's entries by start (ms)
//	pm:cal:{calN}:t:T:os:U            zset    owner U's recurring entries by the start of their last occurrence (ms, +inf: no end)
//	pm:cal:{calN}:t:T:u:U:set         string  user U's options (JSON)
//	pm:cal:{calN}:t:T:u:U:pos         string  U's last queue position (all targets)
//	pm:cal:{calN}:t:T:u:U:q:G         zset    U's queue for target G: entry id by position (each also in pm:cal:{calN}:pending:G)
//	pm:cal:{calN}:t:T:u:U:q:G:items   hash    entry id -> "pos|rev|state|attempts|last error"
//	pm:cal:{calN}:t:T:u:U:q:G:dead    hash    entry id -> the dead item (each also in pm:cal:{calN}:dead:G)
//	pm:cal:{calN}:t:T:u:U:q:G:errs    hash    entry id -> the agent's ERROR answers to its queued revision
//	pm:cal:{calN}:t:T:u:U:remote:G    hash    entry id -> "remote id\nremote version" (CalDAV: name, ETag; agent: "\n" once handed out)
//	pm:cal:{calN}:t:T:u:U:pushbase    hash    entry id -> the iCalendar object last pushed to or adopted from U's CalDAV calendar (merge base)
//	pm:cal:{calN}:t:T:u:U:conflicts   set     entry ids of U with an open CalDAV conflict note
//	pm:cal:{calN}:t:T:u:U:acked       string  highest position U's agent acknowledged
//	pm:cal:{calN}:t:T:u:U:agent       hash    U's agent: s (session, "" when gone), a, since, seen (ms)
//	pm:cal:{calN}:t:T:u:U:log         stream  U's sync log (MAXLEN ~ bounded)
//	pm:cal:{cal0}:queuesindexed       string  set once the dead items and queues written before their indexes existed were indexed
//
// Notifications go out on the Pub/Sub channel NotifyChannel from the scripts that cause them:
// "w|T|U" (deliveries for U's agent), "k|T|U|S" (session S is now U's agent), "p|N" (CalDAV
// deliveries due in partition N).
package redisstore

import (
	"context"
	"strconv"
	"strings"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
)

const prefix = "pm:cal:"

// NotifyChannel carries wake-ups and replacements to every replica.
const NotifyChannel = prefix + "notify"

// Partitions is the number of tenant partitions, push due indexes and event streams
// (REDIS_PARTITIONS). Part of the data layout: chosen when a deployment is created and recorded
// in Redis (CheckPartitions).
func (s *Store) Partitions() int { return s.parts }

// PartitionOf is the partition of a tenant.
func (s *Store) PartitionOf(tenant string) int { return redisx.Partition(tenant, s.parts) }

func partKey(n int) string { return prefix + "{cal" + strconv.Itoa(n) + "}" }

// partitionsKey records the partition count the data was written with, in partition 0's slot
// beside its event stream, which every calendar start has created.
var partitionsKey = partKey(0) + ":partitions"

// CheckPartitions refuses data written with another partition count than the store's (a
// *redisx.PartitionsError), and records the count on a fresh Redis. The service calls it at start.
func (s *Store) CheckPartitions(ctx context.Context) error {
	return redisx.CheckPartitions(ctx, s.rdb, partitionsKey, partKey(0)+":events", s.parts)
}

// EventStreams returns every partition's event stream key, for the relay.
func (s *Store) EventStreams() []string {
	out := make([]string, s.parts)
	for i := range out {
		out[i] = partKey(i) + ":events"
	}
	return out
}

func pushDueKey(n int) string { return partKey(n) + ":pushdue" }

// deadIndexKey is partition n's index of the dead items of target g: the dead hashes of all its
// users in one sorted set, so the metrics read a count per partition instead of scanning users.
func deadIndexKey(n int, g calendar.Target) string { return partKey(n) + ":dead:" + string(g) }

// pendingIndexKey is partition n's index of the queue items of target g: every user's queue in
// one sorted set, scored by when the item was queued, for the pending gauges.
func pendingIndexKey(n int, g calendar.Target) string { return partKey(n) + ":pending:" + string(g) }

// queuesIndexedKey marks that the dead items and queue items written before their indexes
// existed have been indexed (Store.IndexQueues).
var queuesIndexedKey = partKey(0) + ":queuesindexed"

// keys builds the keys of one tenant.
type keys struct {
	part string
	base string
	n    int
}

func (s *Store) tenantKeys(tenant string) keys {
	n := s.PartitionOf(tenant)
	part := partKey(n)
	return keys{part: part, base: part + ":t:" + tenant, n: n}
}

func (k keys) events() string                            { return k.part + ":events" }
func (k keys) pushDue() string                           { return k.part + ":pushdue" }
func (k keys) deadIndex(g calendar.Target) string        { return deadIndexKey(k.n, g) }
func (k keys) pendingIndex(g calendar.Target) string     { return pendingIndexKey(k.n, g) }
func (k keys) settings() string                          { return k.base + ":set" }
func (k keys) entry(id string) string                    { return k.base + ":e:" + id }
func (k keys) revs(id string) string                     { return k.entry(id) + ":revs" }
func (k keys) owner(u string) string                     { return k.base + ":o:" + u }
func (k keys) series(u string) string                    { return k.base + ":os:" + u }
func (k keys) user(u string) string                      { return k.base + ":u:" + u }
func (k keys) userSettings(u string) string              { return k.user(u) + ":set" }
func (k keys) pos(u string) string                       { return k.user(u) + ":pos" }
func (k keys) acked(u string) string                     { return k.user(u) + ":acked" }
func (k keys) agent(u string) string                     { return k.user(u) + ":agent" }
func (k keys) log(u string) string                       { return k.user(u) + ":log" }
func (k keys) queue(u string, g calendar.Target) string  { return k.user(u) + ":q:" + string(g) }
func (k keys) items(u string, g calendar.Target) string  { return k.queue(u, g) + ":items" }
func (k keys) dead(u string, g calendar.Target) string   { return k.queue(u, g) + ":dead" }
func (k keys) errs(u string, g calendar.Target) string   { return k.queue(u, g) + ":errs" }
func (k keys) remote(u string, g calendar.Target) string { return k.user(u) + ":remote:" + string(g) }

// dueMember names a CalDAV delivery in the push due index.
func dueMember(tenant, user, entry string) string { return tenant + "|" + user + "|" + entry }

// parseDueMember splits a due member.
func parseDueMember(m string) (tenant, user, entry string, ok bool) {
	parts := strings.Split(m, "|")
	if len(parts) != 3 {
		return "", "", "", false
	}
	return parts[0], parts[1], parts[2], true
}

// Notification is a decoded message of NotifyChannel.
type Notification struct {
	// Kind is 'w' (agent deliveries), 'k' (agent replaced) or 'p' (push due).
	Kind   byte
	Tenant string
	User   string
	// Session is, for 'k', the session that was replaced and must stop.
	Session   string
	Partition int
}

// ParseNotification decodes a NotifyChannel payload; false for anything else.
func ParseNotification(payload string) (Notification, bool) {
	parts := strings.Split(payload, "|")
	switch {
	case len(parts) == 3 && parts[0] == "w":
		return Notification{Kind: 'w', Tenant: parts[1], User: parts[2]}, true
	case len(parts) == 4 && parts[0] == "k":
		return Notification{Kind: 'k', Tenant: parts[1], User: parts[2], Session: parts[3]}, true
	case len(parts) == 2 && parts[0] == "p":
		n, err := strconv.Atoi(parts[1])
		if err != nil || n < 0 { // Worker.Wake ignores a partition it does not have

			return Notification{}, false
		}
		return Notification{Kind: 'p', Partition: n}, true
	}
	return Notification{}, false
}

func wakePayload(tenant, user string) string { return "w|" + tenant + "|" + user }

// kickPrefix is a kick's payload without the replaced session, which claimAgentScript appends.
func kickPrefix(tenant, user string) string { return "k|" + tenant + "|" + user + "|" }

func pushPayload(n int) string { return "p|" + strconv.Itoa(n) }
