package redisstore_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// TestGatherManyReadsWhatGatherReads: GatherMany reads the string values of a batch with one
// MGET per partition, each key once, and shares decoded values between messages; every
// message's evidence must be what Gather reads for it alone, with queries of three tenants
// (two of one partition) taking turns and sharing keys.
func TestGatherManyReadsWhatGatherReads(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	var same []string // two tenants of partition 3
	other := ""
	for i := 0; len(same) < 2 || other == ""; i++ {
		name := fmt.Sprintf("g%d", i)
		switch p := redisx.Partition(name, s.Partitions()); {
		case p == 3 && len(same) < 2:
			same = append(same, name)
		case p != 3 && other == "":
			other = name
		}
	}
	tenants := append(same, other) //nolint:gocritic // appendAssign: same is not used again
	erika := tracker.RecordRef{ID: "c-1", Kind: tracker.KindContact}
	opt := tracker.Option(3)
	for n, tenant := range tenants {
		if _, err := s.UpdateOrgSettings(ctx, tenant, func(o *tracker.OrgSettings) error {
			o.AutoTrackSentFolderItems, o.TokenDigits, o.Version = n != 1, 5+n, o.Version+1
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			if _, err := s.UpdateUserSettings(ctx, tenant, "max", func(u *tracker.UserSettings) error {
				u.Option, u.Version = &opt, u.Version+1
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.UpsertRecord(ctx, tenant, &tracker.Record{ID: "c-1", Kind: tracker.KindContact, Addresses: []string{"erika@kunde.example"}}); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			e := tracked(fmt.Sprintf("m%d@x", i), t0.Add(time.Duration(i+n)*time.Minute), &erika)
			e.ThreadID = fmt.Sprintf("conv-%d", n)
			if _, _, err := s.Track(ctx, tenant, e, "k"); err != nil {
				t.Fatal(err)
			}
		}
	}
	tok, err := s.IssueToken(ctx, tenants[1], "CRM", 7, erika, t0)
	if err != nil {
		t.Fatal(err)
	}
	var qs []tracker.TenantQuery
	for i := range 12 {
		qs = append(qs, tracker.TenantQuery{Tenant: tenants[i%3], PresenceOnly: i%4 != 0, Query: tracker.Query{
			User: []string{"max", "", "erika"}[i%3], MessageID: fmt.Sprintf("m%d@x", i%5), InReplyTo: fmt.Sprintf("m%d@x", i%2),
			Tokens: []string{tok.Token, "CRM:0000001"}[:i%3], References: []string{"m2@x", "nope@x", "m0@x"}[:i%4],
			ThreadID: []string{"conv-0", "conv-1", "conv-2", ""}[i%4], SmartKey: []string{"k", "", "q"}[i%3],
			Addresses: []string{"erika@kunde.example", "max@kanzlei.example"}[:i%3],
		}})
	}
	many, err := s.GatherMany(ctx, qs)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for i, q := range qs {
		one, err := s.GatherMany(ctx, []tracker.TenantQuery{q})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(many[i], one[0]) {
			t.Errorf("query %d (%s):\n many: %+v\n one:  %+v", i, q.Tenant, many[i], one[0])
		}
		ev := many[i].Evidence
		found["existing"] = found["existing"] || many[i].Existing != nil
		found["present"] = found["present"] || (q.PresenceOnly && many[i].AlreadyTracked)
		found["absent"] = found["absent"] || !many[i].AlreadyTracked
		found["user"] = found["user"] || ev.User.Option != nil
		found["token"] = found["token"] || len(ev.Tokens) > 0
		found["refs"] = found["refs"] || len(ev.References) > 0
		found["thread"] = found["thread"] || ev.Thread != nil
		found["smart"] = found["smart"] || ev.Smart != nil
		found["irt"] = found["irt"] || ev.InReplyTo != nil
		found["records"] = found["records"] || len(ev.Records) > 0
		found["org"] = found["org"] || ev.Org.TokenDigits == 7
	}
	if len(found) != 11 {
		t.Fatal("missing case")
	}
	for k, v := range found {
		if !v {
			t.Errorf("no query found %s", k)
		}
	}
	// One message's evidence does not alias another's.
	if many[0].Evidence.InReplyTo != nil && many[6].Evidence.InReplyTo == many[0].Evidence.InReplyTo {
		t.Error("two messages share a candidate")
	}
}
