// Package redisx opens the suite's Redis connections and probes them for readiness.
package redisx

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Open connects to url (redis://, rediss:// or unix://) and checks the connection with a PING,
// so a wrong URL fails at start-up, not at the first request. Errors never echo the URL, which
// may hold a password.
func Open(ctx context.Context, url string) (*redis.Client, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL is not a valid Redis URL: %w", redactErr(err))
	}
	c := redis.NewClient(opts)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("connect to Redis at %s: %w", opts.Addr, err)
	}
	return c, nil
}

// redactErr drops the parse error's text, which may quote the URL with its password.
func redactErr(error) error { return fmt.Errorf("malformed URL") }

// Probe reports whether Redis answers, for readiness checks.
func Probe(c redis.UniversalClient) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := c.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis ping: %w", err)
		}
		return nil
	}
}
