// Package redisx opens the suite's Redis connections and probes them for readiness, in one place,
// so every service fails the same clear way on a bad REDIS_URL and never logs its password.
package redisx

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrInvalidURL reports a Redis URL that does not parse. Its message never contains the URL,
// which may hold a password.
var ErrInvalidURL = errors.New("invalid Redis URL")

// Option adjusts how Open connects.
type Option func(*settings)

type settings struct {
	pingTimeout time.Duration
	adjust      []func(*redis.Options)
}

// WithPingTimeout bounds the start-up PING; the default is 5s, enough for a Redis that is still
// loading its AOF to answer, short enough to fail a wrong address quickly.
func WithPingTimeout(d time.Duration) Option { return func(s *settings) { s.pingTimeout = d } }

// WithOptions changes the client options parsed from the URL (pool size, client name, timeouts)
// before the client is built, for settings a URL cannot carry.
func WithOptions(f func(*redis.Options)) Option {
	return func(s *settings) { s.adjust = append(s.adjust, f) }
}

// Open connects to rawURL (redis://, rediss:// or unix://, with the query options go-redis
// understands) and checks the connection with a PING, so a wrong URL fails at start-up and not
// at the first request. Errors name the address, never the password.
func Open(ctx context.Context, rawURL string, opts ...Option) (*redis.Client, error) {
	st := settings{pingTimeout: 5 * time.Second}
	for _, o := range opts {
		o(&st)
	}
	ro, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %s", ErrInvalidURL, Redact(rawURL), redactText(err.Error(), rawURL))
	}
	for _, f := range st.adjust {
		f(ro)
	}
	c := redis.NewClient(ro)
	pctx, cancel := context.WithTimeout(ctx, st.pingTimeout)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("connect to Redis at %s: %w", ro.Addr, err)
	}
	return c, nil
}

// Redact returns rawURL with its password replaced by "xxxxx", for logs and error messages.
// A URL that does not parse is replaced entirely.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// redactText removes rawURL and its password from a parser's message, which may quote them.
func redactText(msg, rawURL string) string {
	if rawURL != "" {
		msg = strings.ReplaceAll(msg, rawURL, "(the URL)")
	}
	if u, err := url.Parse(rawURL); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
	}
	return msg
}

// Probe returns a readiness check that PINGs Redis within the caller's deadline.
func Probe(c redis.UniversalClient) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := c.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis ping: %w", err)
		}
		return nil
	}
}

// Partition maps key to one of n partitions with 32-bit FNV-1a. Services spread their keys over
// a fixed set of Redis Cluster hash tags with it; the mapping is part of their data layout, so it
// must never change.
func Partition(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}
