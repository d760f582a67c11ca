package redisx

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// ScanKeys calls fn with the keys matching the glob pattern match, a batch (about count keys,
// fewer once filtered by match) at a time, on every master of a Redis Cluster or on the one
// server otherwise. It is for rare whole-keyspace work — a recovery, a migration — never a
// request's path: SCAN walks every key of each node, matching or not. A key may be reported
// twice (SCAN's guarantee in a resize), so fn must be idempotent; keys created or deleted during
// the scan may or may not be seen. On a Cluster fn runs concurrently, once per master at a time.
func ScanKeys(ctx context.Context, c redis.UniversalClient, match string, count int64, fn func(ctx context.Context, keys []string) error) error {
	scan := func(ctx context.Context, node redis.Cmdable) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, match, count).Result()
			if err != nil {
				return fmt.Errorf("scan %q: %w", match, err)
			}
			if len(keys) > 0 {
				if err := fn(ctx, keys); err != nil {
					return err
				}
			}
			if next == 0 {
				return nil
			}
			cursor = next
		}
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return scan(ctx, node) })
	}
	return scan(ctx, c)
}
