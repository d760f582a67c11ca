package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
	"github.com/postamt/postamt/services/mailbox/internal/redisstore"
)

var t0 = time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)

func seed(t *testing.T, s *redisstore.Store) {
	t.Helper()
	ctx := context.Background()
	if err := s.CreateTenant(ctx, &mailbox.Tenant{ID: "kanzlei", Version: 1, Created: t0, Updated: t0}); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"martina", "max"} {
		if err := s.CreateUser(ctx, "kanzlei", &mailbox.User{ID: u, DisplayName: u, Email: u + "@kanzlei.example", Version: 1}); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateMailbox(ctx, "kanzlei", &mailbox.Mailbox{ID: u + "-pm", Address: u + "@pm.example", Kind: mailbox.KindPersonal, Owner: u, Sync: mailbox.SyncNone, Version: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateMailbox(ctx, "kanzlei", &mailbox.Mailbox{ID: "info", Address: "info@kanzlei.example", Kind: mailbox.KindShared, Sync: mailbox.SyncNone, Version: 1}); err != nil {
		t.Fatal(err)
	}
}

// TestDefaultSenderInvariantUnderConcurrency races admins adding and removing a membership
// against the user choosing the mailbox as default. Whatever the interleaving, a user's default
// sender never names a mailbox they may not send from, and every change is announced.
func TestDefaultSenderInvariantUnderConcurrency(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	s := redisstore.New(rdb, redisstore.Options{})
	seed(t, s)
	ctx := context.Background()

	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 50 {
				switch (w + i) % 3 {
				case 0:
					_ = s.AddMember(ctx, "kanzlei", "info", "martina", mailbox.RightSendAs, t0)
				case 1:
					_ = s.RemoveMember(ctx, "kanzlei", "info", "martina", t0)
				case 2:
					_, _ = s.SetDefaultSender(ctx, "kanzlei", "martina", "info", t0)
				}
			}
		})
	}
	wg.Wait()

	u, err := s.GetUser(ctx, "kanzlei", "martina")
	if err != nil {
		t.Fatal(err)
	}
	g, err := s.SendGrant(ctx, "kanzlei", "martina", "info@kanzlei.example")
	if err != nil {
		t.Fatal(err)
	}
	canSendInfo := mailbox.Decide("martina", &g).Allowed
	switch u.DefaultSender {
	case "info":
		if !canSendInfo {
			t.Errorf("default sender is info, but martina may not send from it")
		}
	case "martina-pm":
	default:
		t.Errorf("default sender = %q", u.DefaultSender)
	}
	// The reverse index agrees with the user record.
	for _, m := range []string{"info", "martina-pm"} {
		in, err := rdb.SIsMember(ctx, s.DefaultsKeyForTest("kanzlei", m), "martina").Result()
		if err != nil {
			t.Fatal(err)
		}
		if in != (u.DefaultSender == m) {
			t.Errorf("reverse index of %s says %v, user says default %q", m, in, u.DefaultSender)
		}
	}
}

// TestEveryWriteIsAnnounced checks that writes and their events commit together: every change
// adds exactly its events to the tenant partition's stream, and a failed write adds none.
func TestEveryWriteIsAnnounced(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	s := redisstore.New(rdb, redisstore.Options{})
	ctx := context.Background()
	seed(t, s)
	stream := streamOf(t, rdb, s)
	subjects := func() []string {
		msgs, err := rdb.XRange(ctx, stream, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range msgs {
			out = append(out, fmt.Sprint(m.Values[eventbus.FieldSubject]))
		}
		return out
	}
	before := len(subjects())
	if err := s.AddMember(ctx, "kanzlei", "info", "max", mailbox.RightSendAs, t0); err != nil {
		t.Fatal(err)
	}
	if err := s.AddMember(ctx, "kanzlei", "info", "max", mailbox.RightSendAs, t0); err == nil {
		t.Fatal("duplicate AddMember succeeded")
	}
	after := subjects()
	if got := after[before:]; fmt.Sprint(got) != "[postamt.mailbox.v1.MembershipChanged]" {
		t.Errorf("events of one AddMember and one failed duplicate = %v", got)
	}
}

func streamOf(t *testing.T, rdb *redis.Client, store *redisstore.Store) string {
	t.Helper()
	for _, s := range store.EventStreams() {
		if n, _ := rdb.XLen(context.Background(), s).Result(); n > 0 {
			return s
		}
	}
	t.Fatal("no event stream has entries")
	return ""
}

// TestConcurrentSendGrantsGetTheirOwnAnswers drives the coalescing of send-grant reads: many
// callers at once, each asking about a different user and address, each gets its own answer.
func TestConcurrentSendGrantsGetTheirOwnAnswers(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	s := redisstore.New(rdb, redisstore.Options{})
	seed(t, s)
	ctx := context.Background()
	if err := s.AddMember(ctx, "kanzlei", "info", "max", mailbox.RightSendOnBehalf, t0); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		user, addr string
		want       mailbox.SendMode
	}{
		{"max", "info@kanzlei.example", mailbox.SendOnBehalf},
		{"martina", "info@kanzlei.example", mailbox.SendDenied},
		{"martina", "martina@pm.example", mailbox.SendOwner},
		{"max", "martina@pm.example", mailbox.SendDenied},
		{"max", "max@pm.example", mailbox.SendOwner},
	}
	var wg sync.WaitGroup
	errc := make(chan error, 500)
	for i := range 500 {
		c := cases[i%len(cases)]
		wg.Go(func() {
			g, err := s.SendGrant(ctx, "kanzlei", c.user, c.addr)
			if err != nil {
				errc <- err
				return
			}
			if got := mailbox.Decide(c.user, &g).Mode; got != c.want {
				errc <- fmt.Errorf("%s from %s: mode %d, want %d", c.user, c.addr, got, c.want)
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

// TestPartitionCount runs the store with a count other than the default: a tenant's keys and
// events land in its partition of 64, tenants are listed across all of them, and the count is
// recorded so that a store of another count refuses the data.
func TestPartitionCount(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	s := redisstore.New(rdb, redisstore.Options{Partitions: 64})
	if err := s.CheckPartitions(ctx); err != nil {
		t.Fatalf("fresh Redis with 64: %v", err)
	}
	if got := len(s.EventStreams()); got != 64 {
		t.Fatalf("event streams = %d, want 64", got)
	}
	seed(t, s)
	var tenants []string
	for i := range 40 { // enough tenants to land in partitions beyond 16
		id := fmt.Sprintf("t%02d", i)
		tenants = append(tenants, id)
		if err := s.CreateTenant(ctx, &mailbox.Tenant{ID: id, Version: 1, Created: t0, Updated: t0}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.ListTenants(ctx, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(tenants)+1 {
		t.Errorf("ListTenants = %d tenants, want %d", len(got), len(tenants)+1)
	}
	beyond := 0
	for p, stream := range s.EventStreams() {
		if n := rdb.XLen(ctx, stream).Val(); n > 0 && p >= 16 {
			beyond++
		}
	}
	if beyond == 0 {
		t.Error("no events in partitions 16..63: the store does not use its count")
	}
	if g, err := s.SendGrant(ctx, "kanzlei", "martina", "martina@pm.example"); err != nil || mailbox.Decide("martina", &g).Mode != mailbox.SendOwner {
		t.Errorf("send check with 64 partitions: %v %v", mailbox.Decide("martina", &g).Mode, err)
	}
	var pe *redisx.PartitionsError
	if err := redisstore.New(rdb, redisstore.Options{Partitions: 16}).CheckPartitions(ctx); !errors.As(err, &pe) || pe.Recorded != 64 || pe.Configured != 16 {
		t.Errorf("a store of 16 on data of 64: %v, want a PartitionsError", err)
	}
}
