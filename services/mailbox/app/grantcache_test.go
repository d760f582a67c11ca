package app_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/mailbox/app"
	"github.com/postamt/postamt/services/mailbox/internal/redisstore"
)

// grantTTL is the replicas' MAILBOX_GRANT_CACHE_TTL in TestGrantCacheAcrossReplicas. Their
// clocks stand still unless the test moves them, so nothing expires by wall time.
const grantTTL = 5 * time.Second

// manualClock is a clock the test moves by hand.
type manualClock struct{ ns atomic.Int64 }

func (c *manualClock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *manualClock) add(d time.Duration) { c.ns.Add(int64(d)) }

// replica is one mailbox replica of the test: its client, its metrics and its clock.
type replica struct {
	c     mailboxv1.MailboxServiceClient
	reg   *prometheus.Registry
	clock *manualClock
}

func startReplica(t *testing.T, rdb redis.UniversalClient, js jetstream.JetStream, verifier *auth.Verifier) *replica {
	t.Helper()
	r := &replica{reg: prometheus.NewRegistry(), clock: &manualClock{}}
	r.clock.ns.Store(time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC).UnixNano())
	a, err := app.New(app.Config{RelayBatch: 64, RelayClaimIdle: time.Second, GrantCacheTTL: grantTTL}, app.Deps{
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Redis:    rdb,
		JS:       js,
		Verifier: verifier,
		Metrics:  r.reg,
		Now:      r.clock.now,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.c = mailboxv1.NewMailboxServiceClient(servetest.Dial(t, servetest.Run(t, a.Run)))
	return r
}

// hits is the replica's count of CheckSend answers served from its cache.
func (r *replica) hits(t *testing.T) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "postamt_mailbox_grant_cache_hits_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no postamt_mailbox_grant_cache_hits_total metric")
	return 0
}

// check asks the replica whether max may send from info@ and whether the cache answered.
func (r *replica) check(t *testing.T, ctx context.Context) (allowed, fromCache bool) {
	t.Helper()
	before := r.hits(t)
	resp, err := r.c.CheckSend(ctx, &mailboxv1.CheckSendRequest{UserId: "max", FromAddress: "info@kanzlei.example"})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetAllowed(), r.hits(t) > before
}

// cached waits until the replica answers allowed from its cache: its subscription to mailbox's
// events stands and the grant is held.
func (r *replica) cached(t *testing.T, ctx context.Context, name string, want bool) {
	t.Helper()
	poll.Eventually(t, fmt.Sprintf("%s to answer allowed=%v from its cache", name, want), func() bool {
		allowed, fromCache := r.check(t, ctx)
		return allowed == want && fromCache
	})
}

// TestGrantCacheAcrossReplicas: two mailbox replicas share one Redis and one JetStream, and each
// caches the answers to the send question. A membership removed through replica A is refused by
// A at once (its own write drops its cache), and by B when the event arrives (B's clock stands
// still, so only the event can have dropped the answer). While the events are held back (a relay
// that hangs holding every stream's lease), B keeps answering from the grant it read, and refuses
// once MAILBOX_GRANT_CACHE_TTL has passed on its clock: the documented staleness bound.
func TestGrantCacheAcrossReplicas(t *testing.T) {
	rdb := redistest.Suite(t)
	ns := natstest.Start(t)
	verifier, signer := authtest.Keys(t)
	a := startReplica(t, rdb, ns.JetStream(t), verifier)
	b := startReplica(t, rdb, ns.JetStream(t), verifier)
	ctx := authtest.Outgoing(t, signer, auth.Principal{Tenant: "kanzlei", User: "admin", Roles: []string{"admin", "operator"}})

	if _, err := a.c.CreateTenant(ctx, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "kanzlei"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: "max", DisplayName: "Max Mustermann", Email: "max@kanzlei.example"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
		MailboxId: "info", Address: "info@kanzlei.example", DisplayName: "Kanzlei Muster", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED,
	}}); err != nil {
		t.Fatal(err)
	}
	addMax := func() {
		t.Helper()
		if _, err := a.c.AddMember(ctx, &mailboxv1.AddMemberRequest{MailboxId: "info", UserId: "max", Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_SEND_AS}}); err != nil {
			t.Fatal(err)
		}
	}
	removeMax := func() {
		t.Helper()
		if _, err := a.c.RemoveMember(ctx, &mailboxv1.RemoveMemberRequest{MailboxId: "info", UserId: "max"}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("events", func(t *testing.T) {
		addMax()
		a.cached(t, ctx, "replica A", true)
		b.cached(t, ctx, "replica B", true)
		removeMax()
		if allowed, _ := a.check(t, ctx); allowed {
			t.Error("replica A, which removed the membership, still allowed the send")
		}
		poll.Eventually(t, "replica B to refuse once the event arrived", func() bool {
			allowed, _ := b.check(t, ctx)
			return !allowed
		})
	})

	t.Run("events held back: the TTL bounds", func(t *testing.T) {
		addMax()
		b.cached(t, ctx, "replica B", true)
		// A relay that hangs while holding every stream's lease: no relay publishes, the events
		// wait in Redis (eventbus.Relay fences its reads by the lease).
		streams := redisstore.New(rdb, redisstore.Options{}).EventStreams()
		for _, s := range streams {
			if err := rdb.Set(context.Background(), eventbus.LeaseKey(s), "hung-relay", time.Hour).Err(); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() {
			for _, s := range streams {
				rdb.Del(context.Background(), eventbus.LeaseKey(s))
			}
		})
		removeMax()
		if allowed, _ := a.check(t, ctx); allowed {
			t.Error("replica A, which removed the membership, still allowed the send")
		}
		allowed, fromCache := b.check(t, ctx)
		if !allowed || !fromCache {
			t.Fatalf("replica B answered allowed=%v from cache=%v with the event held back; want its cached grant", allowed, fromCache)
		}
		b.clock.add(grantTTL - time.Millisecond)
		if allowed, _ := b.check(t, ctx); !allowed {
			t.Fatalf("replica B refused before the TTL passed, with the event held back")
		}
		b.clock.add(time.Millisecond)
		if allowed, _ := b.check(t, ctx); allowed {
			t.Errorf("replica B still allowed the send MAILBOX_GRANT_CACHE_TTL (%s) after reading the grant", grantTTL)
		}
	})
}
