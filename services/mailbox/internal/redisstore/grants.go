package redisstore

import (
	"context"
	"errors"
	"fmt"

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
