package redisx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/errs"
)

// maxCASAttempts bounds the retries of one read-modify-write under contention.
const maxCASAttempts = 16

// casScript replaces a string value if it is still the one the caller read.
// KEYS[1] the value; ARGV[1] the value read ("" when absent), ARGV[2] the new value.
// Returns 1, or 0 when another write came first (nothing written).
var casScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
`)

// GetJSON reads a JSON value into dst; found is false (and dst untouched) when the key does not
// exist. raw is the stored text, for UpdateJSON's compare-and-set.
func GetJSON(ctx context.Context, c redis.Cmdable, key string, dst any) (raw string, found bool, err error) {
	raw, err = c.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if err := json.Unmarshal([]byte(raw), dst); err != nil {
		return "", false, fmt.Errorf("decode %s: %w", key, err)
	}
	return raw, true, nil
}

// UpdateJSON changes a JSON value (settings, mostly) by read, mutate, compare-and-set, again while
// another writer came first; a missing key starts from T's zero value. A lost race waits a
// random while before the next try, growing with each loss (up to about 13 ms), so writers
// that keep colliding spread out instead of one starving while descheduled between its read
// and its write. After 16 lost races it gives up with ABORTED (CONCURRENT_UPDATE), which a
// caller may retry. mutate's error is returned as it is, with nothing written.
func UpdateJSON[T any](ctx context.Context, rdb redis.UniversalClient, key string, mutate func(*T) error) (T, error) {
	for attempt := range maxCASAttempts {
		if attempt > 0 {
			if err := casBackoff(ctx, attempt); err != nil {
				var zero T
				return zero, err
			}
		}
		var v T
		raw, _, err := GetJSON(ctx, rdb, key, &v)
		if err != nil {
			return v, err
		}
		if err := mutate(&v); err != nil {
			return v, err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return v, err
		}
		n, err := casScript.Run(ctx, rdb, []string{key}, raw, b).Int()
		if err != nil {
			return v, err
		}
		if n == 1 {
			return v, nil
		}
	}
	var zero T
	return zero, errs.Aborted("CONCURRENT_UPDATE", "too many concurrent changes to the same settings; retry")
}

// casBackoff waits a random duration in [0, 100µs·2^min(attempt,7)) before retry attempt, or
// until ctx ends.
func casBackoff(ctx context.Context, attempt int) error {
	d := time.Duration(rand.Int64N(int64(100*time.Microsecond) << min(attempt, 7))) //nolint:gosec // G404: backoff jitter, not a secret
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
