package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/testkit/redistest"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	"github.com/postamt/postamt/services/tracker/internal/redisstore"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

var t0 = time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)

func newStore(t testing.TB) (*redisstore.Store, *redis.Client) {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	return redisstore.New(rdb, 0), rdb
}

func TestSettings(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	o, err := s.OrgSettings(ctx, "kanzlei")
	if err != nil || o.AutoTrackSentFolderItems || o.Version != 0 {
		t.Fatalf("fresh org settings = %+v, %v; want zero (tracking off)", o, err)
	}
	_, err = s.UpdateOrgSettings(ctx, "kanzlei", func(o *tracker.OrgSettings) error {
		o.AutoTrackSentFolderItems, o.TokenPrefix, o.Smart.Window, o.Version = true, "AKTE", time.Hour, o.Version+1
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.OrgSettings(ctx, "kanzlei")
	if !got.AutoTrackSentFolderItems || got.TokenPrefix != "AKTE" || got.Smart.Window != time.Hour || got.Version != 1 {
		t.Errorf("stored %+v", got)
	}
	if other, _ := s.OrgSettings(ctx, "andere"); other.AutoTrackSentFolderItems {
		t.Error("settings leaked into another tenant")
	}
	boom := errors.New("boom")
	if _, err := s.UpdateOrgSettings(ctx, "kanzlei", func(*tracker.OrgSettings) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("mutate error = %v", err)
	}

	u, _ := s.UserSettings(ctx, "kanzlei", "max")
	if u.Option != nil || u.Effective() != tracker.OptionReplies {
		t.Errorf("fresh user settings = %+v", u)
	}
	// Concurrent increments all land (compare-and-set retries).
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := s.UpdateUserSettings(ctx, "kanzlei", "max", func(u *tracker.UserSettings) error { u.Version++; return nil }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if u, _ := s.UserSettings(ctx, "kanzlei", "max"); u.Version != 8 {
		t.Errorf("version after 8 concurrent updates = %d", u.Version)
	}
}

func TestRecordsAndAddressIndex(t *testing.T) {
	s, rdb := newStore(t)
	ctx := context.Background()
	up := func(r tracker.Record) {
		t.Helper()
		if err := s.UpsertRecord(ctx, "kanzlei", &r); err != nil {
			t.Fatal(err)
		}
	}
	up(tracker.Record{ID: "c-1", Kind: tracker.KindContact, DisplayName: "Erika", Addresses: []string{"erika@kunde.example", "e.m@privat.example"}})
	up(tracker.Record{ID: "c-2", Kind: tracker.KindContact, DisplayName: "Erika privat", Addresses: []string{"e.m@privat.example"}})
	up(tracker.Record{ID: "a-1", Kind: tracker.KindAccount, DisplayName: "Muster AG", Addresses: []string{"office@muster.example"}})

	ids := func(rs []tracker.Record) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	byAddr := func(a string) []string {
		t.Helper()
		rs, err := s.RecordsByAddress(ctx, "kanzlei", a)
		if err != nil {
			t.Fatal(err)
		}
		return ids(rs)
	}
	if got := byAddr("e.m@privat.example"); !slices.Equal(got, []string{"c-1", "c-2"}) {
		t.Errorf("shared address -> %v", got)
	}
	// Changing a record's addresses moves it in the index.
	up(tracker.Record{ID: "c-1", Kind: tracker.KindContact, DisplayName: "Erika", Addresses: []string{"erika@kunde.example"}})
	if got := byAddr("e.m@privat.example"); !slices.Equal(got, []string{"c-2"}) {
		t.Errorf("after moving c-1 -> %v", got)
	}
	r, err := s.GetRecord(ctx, "kanzlei", "c-1")
	if err != nil || r.Version != 2 {
		t.Errorf("GetRecord = %+v, %v; want version 2", r, err)
	}
	if err := s.DeleteRecord(ctx, "kanzlei", "c-2"); err != nil {
		t.Fatal(err)
	}
	if n, _ := rdb.Exists(ctx, s.AddressKeyForTest("kanzlei", "e.m@privat.example")).Result(); n != 0 {
		t.Error("deleting the last record of an address leaves its index key")
	}
	if err := s.DeleteRecord(ctx, "kanzlei", "c-2"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("second delete = %v, want not found", err)
	}
	if _, err := s.GetRecord(ctx, "andere", "c-1"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("record of another tenant = %v, want not found", err)
	}
	first, _ := s.ListRecords(ctx, "kanzlei", "", 1)
	rest, _ := s.ListRecords(ctx, "kanzlei", first[0].ID, 10)
	if got := append(ids(first), ids(rest)...); !slices.Equal(got, []string{"a-1", "c-1"}) {
		t.Errorf("paged list = %v", got)
	}
}

func TestTokensAreUniqueAcrossTenants(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	a, err := s.IssueToken(ctx, "kanzlei", "CRM", 7, tracker.RecordRef{ID: "c-1", Kind: tracker.KindContact}, t0)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.IssueToken(ctx, "andere", "CRM", 7, tracker.RecordRef{ID: "x", Kind: tracker.KindContact}, t0)
	if a.Token == b.Token || a.Token != "CRM:0000001" {
		t.Fatalf("tokens %q and %q", a.Token, b.Token)
	}
	g, err := s.Gather(ctx, "andere", tracker.Query{MessageID: "m@x", Tokens: []string{a.Token, b.Token}})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Evidence.Tokens[a.Token]; ok {
		t.Error("a token of kanzlei was found in andere")
	}
	if got := g.Evidence.Tokens[b.Token].Regarding.ID; got != "x" {
		t.Errorf("own token regarding = %q", got)
	}
}

func tracked(id string, sent time.Time, regarding *tracker.RecordRef, links ...tracker.Link) *tracker.TrackedEmail {
	return &tracker.TrackedEmail{
		MessageID: id, MailboxID: "p-max", SenderUser: "max", From: "max@kanzlei.example", To: []string{"erika@kunde.example"},
		Subject: "Angebot", SentAt: sent, ThreadID: "conv-1", Method: tracker.MethodNone, Regarding: regarding, Links: links,
		Source: tracker.SourceSentFolder, Tracked: sent, Explanation: tracker.Explanation{MessageID: id, Tracked: true},
	}
}

func TestTrackOncePerMessageID(t *testing.T) {
	s, rdb := newStore(t)
	ctx := context.Background()
	erika := tracker.RecordRef{ID: "c-1", Kind: tracker.KindContact}
	e := tracked("m1@kanzlei.example", t0, nil, tracker.Link{Address: "erika@kunde.example", Role: tracker.RoleTo, Record: erika})

	var wg sync.WaitGroup
	var mu sync.Mutex
	created := 0
	for range 8 {
		wg.Go(func() {
			ok, got, err := s.Track(ctx, "kanzlei", e, "smartkey")
			if err != nil {
				t.Error(err)
				return
			}
			if got.MessageID != e.MessageID {
				t.Errorf("returned %q", got.MessageID)
			}
			if ok {
				mu.Lock()
				created++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if created != 1 {
		t.Fatalf("%d of 8 concurrent Track calls created the email, want 1", created)
	}
	entries, err := rdb.XRange(ctx, s.EventsKeyForTest("kanzlei"), "-", "+").Result()
	if err != nil || len(entries) != 1 {
		t.Fatalf("events = %d, %v; want exactly 1", len(entries), err)
	}
	f := entries[0].Values
	if f[eventbus.FieldID] != "kanzlei:tracked:m1@kanzlei.example:1" || f[eventbus.FieldSubject] != "postamt.tracker.v1.EmailTracked" || f[eventbus.FieldTenant] != "kanzlei" {
		t.Errorf("event fields %v", f)
	}
	var ev trackerv1.EmailTracked
	if err := proto.Unmarshal([]byte(f[eventbus.FieldData].(string)), &ev); err != nil || ev.GetTrackedEmail().GetMessageId() != e.MessageID {
		t.Errorf("event payload %v, %v", &ev, err)
	}

	// The indexes: by Message-ID, thread, smart key, record.
	g, err := s.Gather(ctx, "kanzlei", tracker.Query{
		MessageID: "m1@kanzlei.example", InReplyTo: "m1@kanzlei.example", References: []string{"nope@x", "m1@kanzlei.example"},
		ThreadID: "conv-1", SmartKey: "smartkey", Addresses: []string{"erika@kunde.example"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if g.Existing == nil || g.Evidence.InReplyTo == nil || g.Evidence.Thread == nil || g.Evidence.Smart == nil ||
		len(g.Evidence.References) != 1 || g.Evidence.Thread.MessageID != e.MessageID {
		t.Errorf("gathered %+v", g)
	}
	if _, err := s.GetTracked(ctx, "andere", e.MessageID); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("tracked email of another tenant = %v", err)
	}
}

func TestIndexesKeepTheLatest(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	if _, _, err := s.Track(ctx, "kanzlei", tracked("new@x", t0.Add(time.Hour), nil), "k"); err != nil {
		t.Fatal(err)
	}
	// An older message arriving later does not take the thread over.
	if _, _, err := s.Track(ctx, "kanzlei", tracked("old@x", t0, nil), "k"); err != nil {
		t.Fatal(err)
	}
	g, _ := s.Gather(ctx, "kanzlei", tracker.Query{MessageID: "q@x", ThreadID: "conv-1", SmartKey: "k"})
	if g.Evidence.Thread.MessageID != "new@x" || g.Evidence.Smart.MessageID != "new@x" {
		t.Errorf("thread -> %q, smart -> %q; want new@x", g.Evidence.Thread.MessageID, g.Evidence.Smart.MessageID)
	}
}

func TestListTrackedPages(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	rec := tracker.RecordRef{ID: "case-7", Kind: tracker.KindOther, EntityType: "case"}
	var want []string
	for i := range 7 {
		id := fmt.Sprintf("m%d@x", i)
		// Two emails share each sent time: the Message-ID breaks the tie.
		if _, _, err := s.Track(ctx, "kanzlei", tracked(id, t0.Add(time.Duration(i/2)*time.Minute), &rec), ""); err != nil {
			t.Fatal(err)
		}
	}
	want = []string{"m6@x", "m4@x", "m5@x", "m2@x", "m3@x", "m0@x", "m1@x"}
	var got []string
	after := ""
	for range 10 {
		page, next, err := s.ListTracked(ctx, "kanzlei", "case-7", after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page {
			got = append(got, e.MessageID)
		}
		if next == "" {
			break
		}
		after = next
	}
	if !slices.Equal(got, want) {
		t.Errorf("pages = %v, want %v", got, want)
	}
}

func TestDecisions(t *testing.T) {
	s, rdb := newStore(t)
	ctx := context.Background()
	x := &tracker.Explanation{MessageID: "m@x", Rules: []tracker.RuleOutcome{{Rule: tracker.RuleOrgSetting, Outcome: tracker.Failed, Reason: tracker.ReasonOrgOff}}}
	if err := s.SaveDecision(ctx, "kanzlei", x, time.Hour); err != nil {
		t.Fatal(err)
	}
	got, err := s.Decision(ctx, "kanzlei", "m@x")
	if err != nil || len(got.Rules) != 1 || got.Rules[0].Detail() != "auto_track_sent_folder_items is off for the tenant" {
		t.Fatalf("Decision = %+v, %v", got, err)
	}
	keys, _ := rdb.Keys(ctx, "*:d:m@x").Result()
	if ttl, _ := rdb.PTTL(ctx, keys[0]).Result(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("decision TTL = %s", ttl)
	}
	if _, err := s.Decision(ctx, "andere", "m@x"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("decision of another tenant = %v", err)
	}
}
