package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/poll"
)

// fakeClock is a clock a test moves by hand, so the poll and rate-limit intervals pass without
// waiting for them.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func withClock(c *fakeClock) VerifierOption {
	return func(o *verifierOptions) { o.now = c.now }
}

// newKeySigner returns a signer with a new Ed25519 key (its kid the key's thumbprint).
func newKeySigner(t *testing.T) *Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := NewSigner(Config{SigningKeyFile: path})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func jwksOf(t *testing.T, signers ...*Signer) []byte {
	t.Helper()
	b, err := MarshalJWKS(signers...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mint(t *testing.T, s *Signer) string {
	t.Helper()
	tok, err := s.Mint(Principal{Tenant: "t1", User: "u1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestSigningKeyRotation: a service's signer picks up a new AUTH_SIGNING_KEY_FILE (a Secret
// volume, which is updated like a ConfigMap) without a restart, and mints under the new kid.
func TestSigningKeyRotation(t *testing.T) {
	clock := &fakeClock{t: time.Now()}
	pemOf := func() []byte {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(priv)
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	secret := &configMap{dir: t.TempDir()}
	secret.write(t, pemOf())
	s, err := NewSigner(Config{SigningKeyFile: filepath.Join(secret.dir, "jwks.json")})
	if err != nil {
		t.Fatal(err)
	}
	s.now = clock.now
	oldKid := s.KeyID()
	oldJWKS := jwksOf(t, s)

	secret.write(t, pemOf())
	if got := s.KeyID(); got != oldKid {
		t.Fatalf("kid changed before the poll interval passed")
	}
	clock.advance(filePollInterval)
	newKid := s.KeyID()
	if newKid == oldKid {
		t.Fatal("the signer still signs with the old key after the file changed")
	}
	tok := mint(t, s)
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwks, oldJWKS, 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(Config{JWKSFile: jwks, Leeway: time.Minute}, withClock(clock)) // the signer's clock runs ahead
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok); err == nil {
		t.Fatal("a token of the new key verified against the old key's JWKS")
	}
	// Written in place: same file, same length, maybe the same time stamp.
	if err := os.WriteFile(jwks, jwksOf(t, s), 0o600); err != nil {
		t.Fatal(err)
	}
	clock.advance(filePollInterval)
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("a token of the new key against a JWKS with it: %v", err)
	}
}

// configMap writes doc as a Kubernetes ConfigMap volume does: the file is a symlink through
// ..data to a timestamped directory, and an update swaps ..data atomically.
type configMap struct {
	dir string
	n   int
}

func (c *configMap) write(t *testing.T, doc []byte) {
	t.Helper()
	c.n++
	ts := filepath.Join(c.dir, "..ts"+string(rune('0'+c.n)))
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "jwks.json"), doc, 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(c.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if c.n == 1 {
		if err := os.Symlink(filepath.Join("..data", "jwks.json"), filepath.Join(c.dir, "jwks.json")); err != nil {
			t.Fatal(err)
		}
	}
}

// TestKeyRotationFromFile rotates the keys of AUTH_JWKS_FILE (a ConfigMap) under a running
// verifier: a token of a new key is accepted as soon as the file has it, and once the old key
// is removed its tokens are refused, cached or not, with no restart.
func TestKeyRotationFromFile(t *testing.T) {
	clock := &fakeClock{t: time.Now()}
	oldKey, newKey := newKeySigner(t), newKeySigner(t)
	cm := &configMap{dir: t.TempDir()}
	cm.write(t, jwksOf(t, oldKey))
	v, err := NewVerifier(Config{JWKSFile: filepath.Join(cm.dir, "jwks.json")}, withClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	oldTok, newTok := mint(t, oldKey), mint(t, newKey)
	if _, err := v.Verify(oldTok); err != nil {
		t.Fatalf("old key before the rotation: %v", err)
	}
	if _, err := v.Verify(newTok); err == nil {
		t.Fatal("a token of a key not in the file was accepted")
	}

	cm.write(t, jwksOf(t, oldKey, newKey)) // the new key is published first
	clock.advance(unknownKidInterval)      // past the refusal's reload
	if _, err := v.Verify(newTok); err != nil {
		t.Fatalf("new key after it was added to the file: %v", err)
	}
	if _, err := v.Verify(oldTok); err != nil {
		t.Fatalf("old key while both are in the file: %v", err)
	}

	cm.write(t, jwksOf(t, newKey)) // then the old one is removed
	clock.advance(filePollInterval)
	if _, err := v.Verify(oldTok); err == nil {
		t.Fatal("a token of the removed key is still accepted")
	}
	if _, err := v.Verify(newTok); err != nil {
		t.Fatalf("new key after the old one was removed: %v", err)
	}
}

// TestKeysFromURL: the identity provider's JWKS is fetched at start; a token with an unknown
// kid fetches it again at once, at most once per unknownKidInterval; a removed key is refused
// after the refresh interval.
func TestKeysFromURL(t *testing.T) {
	clock := &fakeClock{t: time.Now()}
	oldKey, newKey := newKeySigner(t), newKeySigner(t)
	var doc atomic.Pointer[[]byte]
	var fetches atomic.Int32
	set := func(b []byte) { doc.Store(&b) }
	set(jwksOf(t, oldKey))
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(*doc.Load())
	}))
	defer idp.Close()
	v, err := NewVerifier(Config{JWKSURL: idp.URL, JWKSRefresh: time.Minute}, withClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	if got := fetches.Load(); got != 1 {
		t.Fatalf("fetches at start = %d, want 1", got)
	}
	oldTok, newTok := mint(t, oldKey), mint(t, newKey)
	if _, err := v.Verify(oldTok); err != nil {
		t.Fatal(err)
	}

	set(jwksOf(t, oldKey, newKey))
	if _, err := v.Verify(newTok); err != nil {
		t.Fatalf("a token of the provider's new key: %v", err)
	}
	if got := fetches.Load(); got != 2 {
		t.Fatalf("fetches after an unknown kid = %d, want 2", got)
	}
	stranger := mint(t, newKeySigner(t))
	clock.advance(unknownKidInterval) // past the last reload for an unknown kid
	for range 3 {
		if _, err := v.Verify(stranger); err == nil {
			t.Fatal("a token of an unknown key was accepted")
		}
	}
	if got := fetches.Load(); got != 3 {
		t.Fatalf("fetches after three tokens with another unknown kid = %d, want 3 (one, rate-limited)", got)
	}

	set(jwksOf(t, newKey))
	clock.advance(time.Minute) // the keys are stale: the next Verify fetches them in the background
	poll.Eventually(t, "the removed key's token refused", func() bool {
		_, err := v.Verify(oldTok)
		clock.advance(filePollInterval)
		return err != nil
	})
	if _, err := v.Verify(newTok); err != nil {
		t.Fatalf("new key after the refresh: %v", err)
	}
}

// TestJWKSURLMustBeHTTP: a typo'd URL stops the start.
func TestJWKSURLMustBeHTTP(t *testing.T) {
	if _, err := NewVerifier(Config{JWKSURL: "idp.example/jwks"}); err == nil {
		t.Fatal("a URL without a scheme was accepted")
	}
}
