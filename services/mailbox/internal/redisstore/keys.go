// Package redisstore keeps the mailbox service's state in Redis. All of the service's Redis access
// is here: key builders, the transactions that keep the Store invariants, and the encoding.
//
// Layout. Tenants are spread over a fixed number of partitions; every key of a tenant carries the
// partition's hash tag ({mbN}), so a transaction over any keys of one tenant stays in one Redis
// Cluster slot, and each partition has one event stream that the relay publishes to JetStream.
// The partition count (REDIS_PARTITIONS) is part of the data layout: chosen when a deployment is
// created, recorded under pm:mb:{mb0}:partitions, and checked at every start.
//
//	pm:mb:{mbN}:tenants               zset (lex)  tenant ids of the partition
//	pm:mb:{mbN}:events                stream      events waiting for the relay
//	pm:mb:{mbN}:t:T                   hash        tenant T
//	pm:mb:{mbN}:t:T:users             zset (lex)  user ids
//	pm:mb:{mbN}:t:T:emails            hash        user email -> user id
//	pm:mb:{mbN}:t:T:u:U               hash        user U
//	pm:mb:{mbN}:t:T:u:U:mbs           hash        mailbox id -> explicit rights of U
//	pm:mb:{mbN}:t:T:u:U:grants        hash        mailbox address -> explicit rights of U (send check)
//	pm:mb:{mbN}:t:T:u:U:teams         set         team ids of U
//	pm:mb:{mbN}:t:T:u:U:sent          zset (lex)  U's own Sent folder (SentCursor members)
//	pm:mb:{mbN}:t:T:teams             zset (lex)  team ids
//	pm:mb:{mbN}:t:T:team:X            hash        team X
//	pm:mb:{mbN}:t:T:mbs               zset (lex)  mailbox ids
//	pm:mb:{mbN}:t:T:mb:M              hash        mailbox M
//	pm:mb:{mbN}:t:T:mb:M:members      hash        user id -> explicit rights
//	pm:mb:{mbN}:t:T:mb:M:defaults     set         users whose default sender is M
//	pm:mb:{mbN}:t:T:mb:M:sent         zset (lex)  mail sent from M (SentCursor members)
//	pm:mb:{mbN}:t:T:addrs             hash        address -> mailbox summary (send check)
//	pm:mb:{mbN}:t:T:allusers          set         ids of all-users mailboxes
//	pm:mb:{mbN}:t:T:sent:E            hash        sent item E
package redisstore

import (
	"context"
	"strconv"

	"github.com/postamt/postamt/internal/redisx"
)

const prefix = "pm:mb:"

// Partitions is the number of tenant partitions and event streams (REDIS_PARTITIONS). Part of
// the data layout: chosen when a deployment is created and recorded in Redis (CheckPartitions).
func (s *Store) Partitions() int { return s.parts }

// partitionsKey records the partition count the data was written with, in partition 0's slot
// beside its event stream, which every mailbox start has created.
const partitionsKey = prefix + "{mb0}:partitions"

// CheckPartitions refuses data written with another partition count than the store's (a
// *redisx.PartitionsError), and records the count on a fresh Redis. The service calls it at start.
func (s *Store) CheckPartitions(ctx context.Context) error {
	return redisx.CheckPartitions(ctx, s.rdb, partitionsKey, prefix+"{mb0}:events", s.parts)
}

// partitionTag returns the hash tag of a tenant's partition.
func (s *Store) partitionTag(tenant string) string {
	return "{mb" + strconv.Itoa(redisx.Partition(tenant, s.parts)) + "}"
}

// EventStreams returns every partition's event stream key, for the relay.
func (s *Store) EventStreams() []string {
	out := make([]string, s.parts)
	for i := range out {
		out[i] = prefix + "{mb" + strconv.Itoa(i) + "}:events"
	}
	return out
}

// keys builds the keys of one tenant.
type keys struct {
	part string // pm:mb:{mbN}
	base string // pm:mb:{mbN}:t:T
}

func (s *Store) tenantKeys(tenant string) keys {
	part := prefix + s.partitionTag(tenant)
	return keys{part: part, base: part + ":t:" + tenant}
}

func (k keys) tenantIndex() string { return k.part + ":tenants" }
func (k keys) events() string      { return k.part + ":events" }
func (k keys) tenant() string      { return k.base }
func (k keys) users() string       { return k.base + ":users" }
func (k keys) emails() string      { return k.base + ":emails" }
func (k keys) user(u string) string {
	return k.base + ":u:" + u
}
func (k keys) userMbs(u string) string    { return k.user(u) + ":mbs" }
func (k keys) userGrants(u string) string { return k.user(u) + ":grants" }
func (k keys) userTeams(u string) string  { return k.user(u) + ":teams" }
func (k keys) userSent(u string) string   { return k.user(u) + ":sent" }
func (k keys) teams() string              { return k.base + ":teams" }
func (k keys) team(t string) string       { return k.base + ":team:" + t }
func (k keys) mailboxes() string          { return k.base + ":mbs" }
func (k keys) mailbox(m string) string    { return k.base + ":mb:" + m }
func (k keys) mbMembers(m string) string  { return k.mailbox(m) + ":members" }
func (k keys) mbDefaults(m string) string { return k.mailbox(m) + ":defaults" }
func (k keys) mbSent(m string) string     { return k.mailbox(m) + ":sent" }
func (k keys) addrs() string              { return k.base + ":addrs" }
func (k keys) allUsers() string           { return k.base + ":allusers" }
func (k keys) sentItem(e string) string   { return k.base + ":sent:" + e }

// partitionKeys returns the tenant index of every partition, for listing tenants.
func (s *Store) partitionTenantIndexes() []string {
	out := make([]string, s.parts)
	for i := range out {
		out[i] = prefix + "{mb" + strconv.Itoa(i) + "}:tenants"
	}
	return out
}
