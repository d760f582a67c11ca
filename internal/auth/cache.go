package auth

import (
	"sync"
	"time"
)

// verifiedCacheSize bounds the verified-token cache. Callers reuse a token for its whole life
// (service credentials for ten minutes, users for their session), so a few thousand entries
// cover a busy replica.
const verifiedCacheSize = 4096

// verifiedCache remembers tokens that passed verification until they expire, so the hot path
// (every call of a busy service reuses the same few tokens) skips the signature check and the
// JSON decoding, which cost more than the rest of a CheckSend call. Verification does not depend
// on anything but the token and the keys, and the cache is emptied whenever the keys change (a
// rotation removed a key: its tokens must fail at once), so a cached answer is the answer
// verification would give until exp. Failures are never cached.
type verifiedCache struct {
	mu      sync.RWMutex
	entries map[string]verifiedEntry
	now     func() time.Time
}

type verifiedEntry struct {
	p   Principal
	exp time.Time
}

func newVerifiedCache(now func() time.Time) *verifiedCache {
	return &verifiedCache{entries: make(map[string]verifiedEntry, verifiedCacheSize), now: now}
}

func (c *verifiedCache) get(token string) (Principal, bool) {
	c.mu.RLock()
	e, ok := c.entries[token]
	c.mu.RUnlock()
	if !ok || !c.now().Before(e.exp) {
		return Principal{}, false
	}
	return e.p, true
}

// put adds a verified token; when full, an arbitrary entry (map order is random) makes room.
func (c *verifiedCache) put(token string, p Principal, exp time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= verifiedCacheSize {
		now := c.now()
		evicted := 0
		for k, e := range c.entries {
			if evicted > 0 && now.Before(e.exp) {
				break
			}
			delete(c.entries, k)
			evicted++
		}
	}
	c.entries[token] = verifiedEntry{p: p, exp: exp}
}

// reset forgets every entry: the keys changed.
func (c *verifiedCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.entries)
}
