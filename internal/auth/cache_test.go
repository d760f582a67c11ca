package auth

import (
	"fmt"
	"testing"
	"time"
)

func TestVerifiedCache(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	c := newVerifiedCache(func() time.Time { return now })
	p := Principal{Tenant: "t", User: "u"}
	c.put("tok", p, now.Add(time.Minute))

	t.Run("hit before expiry", func(t *testing.T) {
		got, ok := c.get("tok")
		if !ok || got.User != "u" {
			t.Errorf("get = %+v, %v", got, ok)
		}
	})
	t.Run("miss for an unknown token", func(t *testing.T) {
		if _, ok := c.get("other"); ok {
			t.Error("unknown token hit")
		}
	})
	t.Run("miss at expiry", func(t *testing.T) {
		now = now.Add(time.Minute)
		if _, ok := c.get("tok"); ok {
			t.Error("expired token still cached")
		}
	})
	t.Run("bounded", func(t *testing.T) {
		for i := range verifiedCacheSize + 100 {
			c.put(fmt.Sprint(i), p, now.Add(time.Hour))
		}
		if n := len(c.entries); n > verifiedCacheSize {
			t.Errorf("cache holds %d entries, bound %d", n, verifiedCacheSize)
		}
	})
}

func TestVerifyUsesCacheOnlyForValidTokens(t *testing.T) {
	cfg := Config{HS256Secret: "cache-test-secret-cache-test-secret!", Audience: "postamt"}
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSigner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	good, err := s.Mint(Principal{Tenant: "t", User: "u"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := v.Verify(good); err != nil {
			t.Fatalf("Verify(good) = %v", err)
		}
	}
	if _, ok := v.cache.get(good); !ok {
		t.Error("a verified token is not cached")
	}
	bad := good[:len(good)-2] + "xx"
	for range 2 {
		if _, err := v.Verify(bad); err == nil {
			t.Fatal("tampered token accepted")
		}
	}
	if _, ok := v.cache.get(bad); ok {
		t.Error("a rejected token was cached")
	}
}
