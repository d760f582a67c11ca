package console

import (
	"crypto/rand"
	"encoding/base64"
	"sync"
	"time"
)

// Codes are one-time sign-in codes for development: `postamt up` issues one for its dev user and
// prints the console URL with it. A code stands for a token without being it: the URL (kept in
// the browser's history and the terminal's scrollback) signs in once, within its lifetime, and
// is worthless afterwards. Safe for concurrent use.
type Codes struct {
	mu    sync.Mutex
	now   func() time.Time
	codes map[string]issued
}

type issued struct {
	token   string
	expires time.Time
}

// maxCodes bounds how many unused codes are kept; issuing beyond it drops the expired ones and
// then refuses, so a loop cannot grow the map.
const maxCodes = 1000

// NewCodes returns an empty set of codes; now is its clock (nil: time.Now).
func NewCodes(now func() time.Time) *Codes {
	if now == nil {
		now = time.Now
	}
	return &Codes{now: now, codes: map[string]issued{}}
}

// Issue returns a new code for token, valid once until ttl has passed; "" when too many unused
// codes are outstanding.
func (c *Codes) Issue(token string, ttl time.Duration) string {
	var b [24]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	code := base64.RawURLEncoding.EncodeToString(b[:])
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if len(c.codes) >= maxCodes {
		for k, v := range c.codes {
			if !now.Before(v.expires) {
				delete(c.codes, k)
			}
		}
		if len(c.codes) >= maxCodes {
			return ""
		}
	}
	c.codes[code] = issued{token: token, expires: now.Add(ttl)}
	return code
}

// Take returns the token of a valid code and spends it; a nil Codes has none.
func (c *Codes) Take(code string) (string, bool) {
	if c == nil {
		return "", false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.codes[code]
	if !ok {
		return "", false
	}
	delete(c.codes, code)
	if !c.now().Before(v.expires) {
		return "", false
	}
	return v.token, true
}
