package tenantcache_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/tenantcache"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestTTLAndBound(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	cache := tenantcache.New[int](time.Minute, 3, c.now)
	cache.Put("kanzlei", "max", 1)
	if v, ok := cache.Get("kanzlei", "max"); !ok || v != 1 {
		t.Fatalf("Get = %v, %v", v, ok)
	}
	if _, ok := cache.Get("andere", "max"); ok {
		t.Error("another tenant's key answered")
	}
	c.t = c.t.Add(time.Minute)
	if _, ok := cache.Get("kanzlei", "max"); ok {
		t.Error("expired value answered")
	}
	for i, k := range []string{"a", "b", "c", "d"} {
		cache.Put("kanzlei", k, i)
	}
	if n := cache.Len(); n > 3 {
		t.Errorf("%d values held, bound is 3", n)
	}
	off := tenantcache.New[int](0, 0, nil)
	off.Put("kanzlei", "max", 1)
	if _, ok := off.Get("kanzlei", "max"); ok {
		t.Error("a cache with TTL 0 answered")
	}
}

// TestPutAtFromCountsTTLFromTheFetch: a value kept with PutAtFrom lives the TTL from the moment
// its fetch began, not from when it was kept, so a slow fetch of a value read before a change
// cannot outlive the TTL after that change.
func TestPutAtFromCountsTTLFromTheFetch(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	cache := tenantcache.New[int](time.Minute, 0, c.now)
	from, g := c.now(), cache.Gen("kanzlei")
	c.t = c.t.Add(50 * time.Second) // the fetch took this long
	cache.PutAtFrom("kanzlei", "max", 1, g, from)
	if _, ok := cache.Get("kanzlei", "max"); !ok {
		t.Fatal("a value within its TTL missed")
	}
	c.t = c.t.Add(10 * time.Second) // a TTL after the fetch began, 10 s after it was kept
	if v, ok := cache.Get("kanzlei", "max"); ok {
		t.Errorf("Get = %d a TTL after the fetch began", v)
	}
}

// TestFollow: an event of a tenant on the stream drops that tenant's values, not others'.
func TestFollow(t *testing.T) {
	ns := natstest.Start(t)
	js := ns.JetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "POSTAMT_MAILBOX", Subjects: []string{"postamt.mailbox.v1.>"}}); err != nil {
		t.Fatal(err)
	}
	cache := tenantcache.New[string](time.Hour, 0, nil)
	done := make(chan error, 1)
	go func() {
		done <- cache.Follow(ctx, js, "POSTAMT_MAILBOX", slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	poll.Eventually(t, "the follower's consumer", func() bool {
		s, err := js.Stream(ctx, "POSTAMT_MAILBOX")
		return err == nil && s.CachedInfo().State.Consumers == 1
	})
	cache.Put("kanzlei", "max", "p-max")
	cache.Put("andere", "max", "p-other")
	msg := nats.NewMsg("postamt.mailbox.v1.MembershipChanged")
	msg.Header.Set(eventbus.HeaderTenant, "kanzlei")
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, "kanzlei's values dropped", func() bool {
		_, ok := cache.Get("kanzlei", "max")
		return !ok
	})
	if _, ok := cache.Get("andere", "max"); !ok {
		t.Error("another tenant's value dropped")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Follow = %v after its context ended", err)
	}
}

// TestFollowedCacheServesOnlyWhileSubscribed: a cache of NewFollowed keeps and serves nothing
// until Follow has subscribed (an event published before would be missed and leave a stale
// answer for the TTL), and a value fetched across an event of its tenant is not kept (PutAt).
func TestFollowedCacheServesOnlyWhileSubscribed(t *testing.T) {
	ns := natstest.Start(t)
	js := ns.JetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "POSTAMT_MAILBOX", Subjects: []string{"postamt.mailbox.v1.>"}}); err != nil {
		t.Fatal(err)
	}
	cache := tenantcache.NewFollowed[string](time.Hour, 0, nil)
	cache.Put("kanzlei", "max", "p-max")
	if _, ok := cache.Get("kanzlei", "max"); ok {
		t.Fatal("a followed cache served a value before it followed the events")
	}
	done := make(chan error, 1)
	go func() {
		done <- cache.Follow(ctx, js, "POSTAMT_MAILBOX", slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	poll.Eventually(t, "the cache to serve once subscribed", func() bool {
		cache.PutAt("kanzlei", "max", "p-max", cache.Gen("kanzlei"))
		_, ok := cache.Get("kanzlei", "max")
		return ok
	})

	before := cache.Gen("kanzlei") // a fetch starts
	msg := nats.NewMsg("postamt.mailbox.v1.MembershipChanged")
	msg.Header.Set(eventbus.HeaderTenant, "kanzlei")
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, "the event to arrive", func() bool { return cache.Gen("kanzlei") != before })
	cache.PutAt("kanzlei", "max", "stale", before) // the fetch ends after the event
	if v, ok := cache.Get("kanzlei", "max"); ok {
		t.Errorf("a value fetched across an event was kept: %q", v)
	}
	cache.PutAt("kanzlei", "max", "fresh", cache.Gen("kanzlei"))
	if v, ok := cache.Get("kanzlei", "max"); !ok || v != "fresh" {
		t.Errorf("Get = %q, %v after a fresh PutAt", v, ok)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Follow = %v after its context ended", err)
	}
	if _, ok := cache.Get("kanzlei", "max"); ok {
		t.Error("the cache served after Follow stopped")
	}
}
