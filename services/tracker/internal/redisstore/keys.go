// Package redisstore keeps the tracker's state in Redis. All of the service's Redis access is
// here: key builders, the scripts that keep the Store invariants, and the encoding (JSON, so it
// stays readable in redis-cli; what every evaluated message writes — tracked emails,
// explanations, index entries — is appended by hand in codec.go rather than by reflection, and
// explanations are stored as rule outcomes with reason codes, rendered to sentences only when
// read).
//
// Layout. Tenants are spread over a fixed number of partitions; every key of a tenant carries
// the partition's hash tag ({trN}), so a script over any keys of one tenant stays in one Redis
// Cluster slot, and each partition has one event stream that the relay publishes to JetStream.
// The partition count (REDIS_PARTITIONS) is part of the data layout: chosen when a deployment is
// created, recorded under pm:tr:{tr0}:partitions, and checked at every start.
//
//	pm:tr:{trN}:events              stream      EmailTracked events waiting for the relay
//	pm:tr:{trN}:t:T:org             string      org settings (JSON)
//	pm:tr:{trN}:t:T:u:U             string      user U's options (JSON)
//	pm:tr:{trN}:t:T:recs            zset (lex)  record ids
//	pm:tr:{trN}:t:T:r:R             hash        record R: v (version), j (JSON)
//	pm:tr:{trN}:t:T:r:R:mails       zset (lex)  tracked emails linked to R or regarding it (cursor members)
//	pm:tr:{trN}:t:T:a:A             hash        address A -> record id -> RecordRef (JSON): the address index
//	pm:tr:{trN}:t:T:tok:K           string      issued tracking token K (JSON)
//	pm:tr:{trN}:t:T:m:M             string      tracked email with Message-ID M (JSON; its explanation compact: "x":{"opt":N,"r":[[rule,outcome,reason,values...],...]})
//	pm:tr:{trN}:t:T:th:X            string      latest tracked email of thread X (stamped candidate)
//	pm:tr:{trN}:t:T:sm:K            string      latest tracked email with smart key K (stamped candidate)
//	pm:tr:{trN}:t:T:d:M             string      explanation of untracked Message-ID M (compact JSON as above, with mid, t, m, at; a TTL)
//	pm:tr:{trtok}:seq               string      the token number counter, shared by all tenants
package redisstore

import (
	"context"
	"strconv"

	"github.com/postamt/postamt/internal/redisx"
)

const prefix = "pm:tr:"

// Partitions is the number of tenant partitions and event streams (REDIS_PARTITIONS). Part of
// the data layout: chosen when a deployment is created and recorded in Redis (CheckPartitions).
func (s *Store) Partitions() int { return s.parts }

// partitionsKey records the partition count the data was written with, in partition 0's slot
// beside its event stream, which every tracker start has created.
const partitionsKey = prefix + "{tr0}:partitions"

// CheckPartitions refuses data written with another partition count than the store's (a
// *redisx.PartitionsError), and records the count on a fresh Redis. The service calls it at start.
func (s *Store) CheckPartitions(ctx context.Context) error {
	return redisx.CheckPartitions(ctx, s.rdb, partitionsKey, prefix+"{tr0}:events", s.parts)
}

// tokenSeqKey counts token numbers across tenants, so a number is issued once and a token
// correlates only in the tenant that issued it. It has a slot of its own.
const tokenSeqKey = prefix + "{trtok}:seq"

func (s *Store) partitionTag(tenant string) string {
	return "{tr" + strconv.Itoa(redisx.Partition(tenant, s.parts)) + "}"
}

// EventStreams returns every partition's event stream key, for the relay.
func (s *Store) EventStreams() []string {
	out := make([]string, s.parts)
	for i := range out {
		out[i] = prefix + "{tr" + strconv.Itoa(i) + "}:events"
	}
	return out
}

// keys builds the keys of one tenant.
type keys struct {
	part string // pm:tr:{trN}
	base string // pm:tr:{trN}:t:T
}

func (s *Store) tenantKeys(tenant string) keys {
	part := prefix + s.partitionTag(tenant)
	return keys{part: part, base: part + ":t:" + tenant}
}

func (k keys) events() string                   { return k.part + ":events" }
func (k keys) org() string                      { return k.base + ":org" }
func (k keys) user(u string) string             { return k.base + ":u:" + u }
func (k keys) records() string                  { return k.base + ":recs" }
func (k keys) record(id string) string          { return k.base + ":r:" + id }
func (k keys) recordMails(id string) string     { return k.record(id) + ":mails" }
func (k keys) address(a string) string          { return k.base + ":a:" + a }
func (k keys) token(t string) string            { return k.base + ":tok:" + t }
func (k keys) email(messageID string) string    { return k.base + ":m:" + messageID }
func (k keys) thread(id string) string          { return k.base + ":th:" + id }
func (k keys) smart(key string) string          { return k.base + ":sm:" + key }
func (k keys) decision(messageID string) string { return k.base + ":d:" + messageID }
