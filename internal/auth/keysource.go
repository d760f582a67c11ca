package auth

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rsa"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The timings of the key sources. A key rotation reaches a verifier within filePollInterval
// (file) or at the first token with the new kid (URL); an unknown kid forces a reload at most
// once per unknownKidInterval, so tokens with made-up kids cannot make a verifier hammer the
// identity provider or the disk.
const (
	// filePollInterval is how often AUTH_JWKS_FILE (and AUTH_SIGNING_KEY_FILE) is read again
	// and compared with what was loaded (a ConfigMap update swaps a symlink: the path reads the
	// new file).
	filePollInterval = 2 * time.Second
	// unknownKidInterval is the least time between two reloads forced by an unknown kid.
	unknownKidInterval = 10 * time.Second
	// fetchTimeout bounds one fetch of AUTH_JWKS_URL.
	fetchTimeout = 10 * time.Second
	// maxJWKSBytes bounds a fetched JWKS; real ones are a few KiB.
	maxJWKSBytes = 1 << 20
)

// keySet is one source's public keys, by kid.
type keySet struct {
	rsa map[string]*rsa.PublicKey
	ed  map[string]ed25519.PublicKey
}

// keySource keeps the keys of one JWKS (a file or a URL) current while the verifier runs, without
// a goroutine of its own: Verify calls poll, which reads a file at most every filePollInterval
// and starts a background fetch of a URL whose keys are older than the refresh interval; a token
// whose kid is unknown calls reload. A source whose reload fails keeps the keys it has.
type keySource struct {
	name    string // AUTH_JWKS_FILE or AUTH_JWKS_URL, for messages
	path    string
	url     string
	client  *http.Client
	refresh time.Duration
	now     func() time.Time
	log     *slog.Logger
	changed func() // called after the keys changed (the verifier drops its cache)

	keys      atomic.Pointer[keySet]
	nextPoll  atomic.Int64 // unix nanoseconds; poll does nothing before
	fetching  atomic.Bool
	mu        sync.Mutex // serialises loads
	content   []byte     // the file's content at the last load
	loadedAt  time.Time
	lastForce time.Time
}

// current returns the keys (an empty set before the first load succeeded).
func (s *keySource) current() *keySet {
	if k := s.keys.Load(); k != nil {
		return k
	}
	return &keySet{}
}

// poll is the cheap check on every Verify: an atomic load, and at most every filePollInterval a
// read of the file (a few KiB) or, for a URL whose keys are older than refresh, one background fetch.
func (s *keySource) poll() {
	now := s.now()
	next := s.nextPoll.Load()
	if now.UnixNano() < next || !s.nextPoll.CompareAndSwap(next, now.Add(filePollInterval).UnixNano()) {
		return
	}
	if s.path != "" {
		if _, err := s.loadFile(false); err != nil {
			s.log.Warn("auth: keeping the keys loaded before", "source", s.name, "error", err)
		}
		return
	}
	s.mu.Lock()
	stale := now.Sub(s.loadedAt) >= s.refresh
	s.mu.Unlock()
	if stale && s.fetching.CompareAndSwap(false, true) {
		go func() {
			defer s.fetching.Store(false)
			if _, err := s.fetch(); err != nil {
				s.log.Warn("auth: keeping the keys fetched before", "source", s.name, "url", s.url, "error", err)
			}
		}()
	}
}

// reload is called for a token whose kid no key has: it reloads the source at once unless it
// did so for that reason within unknownKidInterval, and reports whether the keys changed.
func (s *keySource) reload() bool {
	s.mu.Lock()
	now := s.now()
	if !s.lastForce.IsZero() && now.Sub(s.lastForce) < unknownKidInterval {
		s.mu.Unlock()
		return false
	}
	s.lastForce = now
	s.mu.Unlock()
	var changed bool
	var err error
	if s.path != "" {
		changed, err = s.loadFile(true)
	} else {
		changed, err = s.fetch()
	}
	if err != nil {
		s.log.Warn("auth: reload for an unknown kid failed; keeping the keys loaded before", "source", s.name, "error", err)
	}
	return changed
}

// loadFile reads the file and loads its keys when its content changed since the last load (or
// always, with force). The content is compared, not the file's time or size: an edit in place
// within the file system's timestamp granularity, with a key of the same length, is a change too.
func (s *keySource) loadFile(force bool) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := os.ReadFile(s.path)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", s.name, err)
	}
	if !force && s.content != nil && bytes.Equal(b, s.content) {
		return false, nil
	}
	set, err := ParseJWKS(b)
	if err != nil {
		return false, fmt.Errorf("%s %s: %w", s.name, s.path, err)
	}
	s.content = b
	return s.store(set), nil
}

// fetch gets the URL's JWKS, bounded by fetchTimeout.
//
//nolint:contextcheck // a fetch serves every later token, so no caller's context may end it; it has its own timeout
func (s *keySource) fetch() (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return false, fmt.Errorf("%s: %w", s.name, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return false, fmt.Errorf("fetch %s: %w", s.name, err)
	}
	defer resp.Body.Close() //nolint:errcheck // read to the end below; nothing to do about a close error
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("fetch %s: %s", s.name, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return false, fmt.Errorf("fetch %s: %w", s.name, err)
	}
	if len(b) > maxJWKSBytes {
		return false, fmt.Errorf("fetch %s: larger than %d bytes", s.name, maxJWKSBytes)
	}
	set, err := ParseJWKS(b)
	if err != nil {
		return false, fmt.Errorf("%s: %w", s.name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.store(set), nil
}

// store makes set the current keys (s.mu held) and reports whether they differ from before.
func (s *keySource) store(set JWKS) bool {
	s.loadedAt = s.now()
	next := &keySet{rsa: set.RSA, ed: set.Ed25519}
	prev := s.keys.Swap(next)
	if prev != nil && sameKeys(prev, next) {
		return false
	}
	if prev != nil {
		s.log.Info("auth: keys changed", "source", s.name, "rsa", len(next.rsa), "ed25519", len(next.ed))
	}
	if s.changed != nil {
		s.changed()
	}
	return true
}

func sameKeys(a, b *keySet) bool {
	if len(a.rsa) != len(b.rsa) || len(a.ed) != len(b.ed) {
		return false
	}
	for kid, k := range a.rsa {
		if o, ok := b.rsa[kid]; !ok || !k.Equal(o) {
			return false
		}
	}
	for kid, k := range a.ed {
		if o, ok := b.ed[kid]; !ok || !k.Equal(o) {
			return false
		}
	}
	return true
}
