package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
)

// sendGrant reads a send grant: three independent commands (the user, the address's mailbox
// summary, the user's grant on that address), carried with those of other concurrent callers
// in shared pipelines (redisx.Coalescer). Under load that one write and read per batch instead
// of per caller is most of what the send question costs.
func (s *Store) sendGrant(ctx context.Context, k keys, user, addr string) (mailbox.SendGrant, error) {
	var (
		u              *redis.SliceCmd
		summary, grant *redis.StringCmd
	)
	if err := s.grants.Do(ctx, func(p redis.Pipeliner) {
		u = p.HMGet(ctx, k.user(user), "id", "display_name", "email")
		summary = p.HGet(ctx, k.addrs(), addr)
		grant = p.HGet(ctx, k.userGrants(user), addr)
	}); err != nil {
		return mailbox.SendGrant{}, err
	}
	for _, c := range []redis.Cmder{u, summary, grant} {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return mailbox.SendGrant{}, fmt.Errorf("read send grant: %w", err)
		}
	}
	var g mailbox.SendGrant
	decodeGrant(u.Val(), summary.Val(), grant.Val(), &g)
	return g, nil
}

// The send-grant cache (Options.GrantTTL). Every send asks the send question, and under load the
// three Redis reads of sendGrant and the round trip they need are most of what an answer costs;
// the grants themselves change rarely (an admin's edit). So each replica keeps the grants it read,
// by tenant, and drops all of a tenant's grants:
//   - at once on its own writes to the tenant (txn), so the replica that made a change answers
//     from the new state on the next call;
//   - when any event of the tenant arrives from mailbox's JetStream stream (FollowGrants), which
//     is how every other replica learns of the change: milliseconds after the commit, the relay's
//     latency;
//   - in any case Options.GrantTTL after the read began (tenantcache.PutAtFrom), which bounds the
//     staleness when events are late (a relay that died holds its streams until
//     MAILBOX_RELAY_CLAIM_IDLE; a NATS connection that hangs without failing).
//
// While the subscription is not (yet, or no longer) standing, nothing is kept or served
// (tenantcache.NewFollowed), so events nobody received leave nothing stale behind. A value read
// while an event of its tenant arrived is not kept (tenantcache.PutAt). The staleness a caller
// can see is therefore: none on the replica that wrote; on another replica, the event's delay,
// never more than GrantTTL. A send racing a revocation may pass as it would have a moment
// earlier; the outbox's own cache of the answer (services/outbox/internal/directory) follows the
// same events with the same bound of its own.

// cachedGrant answers from the cache or reads and keeps the grant.
func (s *Store) cachedGrant(ctx context.Context, tenant, userID, address string) (mailbox.SendGrant, error) {
	key := userID + "\x00" + address
	if g, ok := s.cache.Get(tenant, key); ok {
		s.hits.Add(1)
		return g, nil
	}
	s.misses.Add(1)
	from, gen := s.now(), s.cache.Gen(tenant)
	g, err := s.sendGrant(ctx, s.tenantKeys(tenant), userID, address)
	if err != nil {
		return g, err
	}
	s.cache.PutAtFrom(tenant, key, g, gen, from)
	return g, nil
}

// dropGrants forgets a tenant's cached grants after a write to the tenant.
func (s *Store) dropGrants(tenant string) {
	if s.cache != nil {
		s.cache.Invalidate(tenant)
	}
}

// FollowGrants drops a tenant's cached grants whenever stream (mailbox's own event stream, fed by
// the relays of every replica) carries an event of the tenant, until ctx ends; without
// Options.GrantTTL it returns at once. Until it has subscribed, and after the subscription
// failed, grants are read from Redis every time.
func (s *Store) FollowGrants(ctx context.Context, js jetstream.JetStream, stream string, logger *slog.Logger) error {
	if s.cache == nil {
		return nil
	}
	if err := s.cache.Follow(ctx, js, stream, logger); err != nil {
		return fmt.Errorf("follow %s for the grant cache: %w", stream, err)
	}
	return nil
}

// GrantCacheStats returns how many send questions the cache answered and how many it passed to
// Redis since the start, for the service's metrics.
func (s *Store) GrantCacheStats() (hits, misses uint64) {
	return s.hits.Load(), s.misses.Load()
}

func decodeGrant(user []any, summary, grant string, g *mailbox.SendGrant) {
	if len(user) == 3 && user[0] != nil {
		g.UserFound = true
		g.UserDisplayName, _ = user[1].(string)
		g.UserEmail, _ = user[2].(string)
	}
	if summary != "" {
		decodeAddrSummary(summary, g)
	}
	if grant != "" {
		g.Explicit = parseRights(grant)
	}
}
