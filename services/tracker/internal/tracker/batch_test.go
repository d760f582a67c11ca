package tracker_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/tracker/internal/redisstore"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// batchService is a service with tracking on, both mailboxes on Exchange, option 0 for max and
// the default (replies only) for eva.
func batchService(t *testing.T) (*tracker.Service, *syncKinds) {
	return batchServiceWith(t, func(s *syncKinds) tracker.SyncKinds { return s })
}

func batchServiceWith(t *testing.T, wrap func(*syncKinds) tracker.SyncKinds) (*tracker.Service, *syncKinds) {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	mbs := &syncKinds{kinds: map[string]tracker.SyncKind{"p-max": tracker.SyncExchange, "p-eva": tracker.SyncExchange}}
	svc := tracker.New(redisstore.New(rdb, 0), wrap(mbs), tracker.Options{Now: func() time.Time { return now }})
	ctx := context.Background()
	if _, err := svc.UpdateOrgSettings(ctx, admin, tracker.OrgSettings{AutoTrackSentFolderItems: true}, []string{"auto_track_sent_folder_items"}); err != nil {
		t.Fatal(err)
	}
	all := tracker.OptionAll
	if _, err := svc.UpdateUserSettings(ctx, admin, tracker.UserSettings{UserID: "max", Option: &all}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.UpsertRecord(ctx, crm, tracker.Record{ID: "c-1", Kind: tracker.KindContact, Addresses: []string{"erika@kunde.example"}}); err != nil {
		t.Fatal(err)
	}
	return svc, mbs
}

func sentMsg(id, user, thread string, sent time.Time, inReplyTo string) tracker.Sent {
	m := &tracker.Message{
		MessageID: id, MailboxID: "p-" + user, SenderUser: user, From: user + "@kanzlei.example", To: []string{"erika@kunde.example"},
		Subject: "Angebot " + id, InReplyTo: inReplyTo, ThreadID: thread, SentAt: sent, Source: tracker.SourceOutbox,
	}
	if inReplyTo != "" {
		m.References = []string{inReplyTo}
	}
	return tracker.Sent{Tenant: "kanzlei", Message: m}
}

// TestIngestBatchIsInOrder: a batch has the outcome of ingesting its messages one at a time in
// order, although its evidence is read before any of its writes.
func TestIngestBatchIsInOrder(t *testing.T) {
	svc, _ := batchService(t)
	ctx := context.Background()
	errList := svc.IngestBatch(ctx, []tracker.Sent{
		sentMsg("a@x", "max", "conv-1", now, ""),                    // tracked (option 0)
		sentMsg("b@x", "eva", "", now.Add(time.Minute), "a@x"),      // default option: tracked because it answers a@x
		sentMsg("a@x", "max", "conv-1", now, ""),                    // the same Message-ID again: nothing
		sentMsg("c@x", "eva", "conv-1", now.Add(2*time.Minute), ""), // tracked through the thread a@x started
		sentMsg("d@x", "eva", "conv-2", now, ""),                    // correlates with nothing: not tracked
		sentMsg("e@x", "eva", "conv-1", now.Add(time.Hour), ""),     // the thread's latest is c@x now
	})
	for i, err := range errList {
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	want := map[string]struct {
		method     tracker.Method
		correlated string
	}{
		"a@x": {tracker.MethodNone, ""}, "b@x": {tracker.MethodInReplyTo, "a@x"},
		"c@x": {tracker.MethodThread, "a@x"}, "e@x": {tracker.MethodThread, "c@x"},
	}
	for id, w := range want {
		e, err := svc.GetTracking(ctx, admin, id)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if e.Method != w.method || e.CorrelatedID != w.correlated {
			t.Errorf("%s: method %v correlated %q, want %v %q", id, e.Method, e.CorrelatedID, w.method, w.correlated)
		}
	}
	x, tracked, err := svc.ExplainMessage(ctx, admin, "d@x")
	if err != nil || tracked != nil || x.Tracked {
		t.Errorf("d@x: %+v, %+v, %v; want an untracked decision", x, tracked, err)
	}
	// Redelivery of the whole batch writes nothing new.
	if errList := svc.IngestBatch(ctx, []tracker.Sent{sentMsg("a@x", "max", "conv-1", now, "")}); errList[0] != nil {
		t.Fatal(errList[0])
	}
}

// TestPipelinedBatches: the consumer gathers a batch before the previous batch is written;
// Pending carries what that batch tracks, until a gather sees its writes.
func TestPipelinedBatches(t *testing.T) {
	svc, _ := batchService(t)
	ctx := context.Background()
	p := tracker.NewPending()
	g1 := svc.GatherBatch(ctx, []tracker.Sent{sentMsg("a@x", "max", "conv-1", now, "")}, 0)
	d1 := svc.DecideBatch(ctx, g1, p, 1)
	// Batch 2 is gathered before batch 1 is written.
	g2 := svc.GatherBatch(ctx, []tracker.Sent{sentMsg("b@x", "eva", "", now, "a@x"), sentMsg("a@x", "max", "conv-1", now, "")}, 0)
	if errList, failed := svc.WriteBatch(ctx, d1); failed || errList[0] != nil {
		t.Fatalf("write batch 1: %v", errList)
	}
	d2 := svc.DecideBatch(ctx, g2, p, 2)
	if errList, failed := svc.WriteBatch(ctx, d2); failed || errList[0] != nil || errList[1] != nil {
		t.Fatalf("write batch 2: %v", errList)
	}
	if e, err := svc.GetTracking(ctx, admin, "b@x"); err != nil || e.Method != tracker.MethodInReplyTo {
		t.Fatalf("b@x = %+v, %v; want correlated with a@x of the batch before", e, err)
	}
	// Batch 3 is gathered after both writes (visible 2): Pending has nothing to add.
	g3 := svc.GatherBatch(ctx, []tracker.Sent{sentMsg("c@x", "eva", "", now, "b@x")}, 2)
	d3 := svc.DecideBatch(ctx, g3, p, 3)
	if errList, _ := svc.WriteBatch(ctx, d3); errList[0] != nil {
		t.Fatal(errList[0])
	}
	if e, err := svc.GetTracking(ctx, admin, "c@x"); err != nil || e.CorrelatedID != "b@x" {
		t.Fatalf("c@x = %+v, %v", e, err)
	}
}

// TestIngestBatchFailures: a mailbox that cannot be asked fails its message alone; the others
// are written.
func TestIngestBatchFailures(t *testing.T) {
	svc2, _ := batchServiceWith(t, func(s *syncKinds) tracker.SyncKinds { return &failingKinds{syncKinds: s, mailbox: "p-eva"} })
	ctx := context.Background()
	errList := svc2.IngestBatch(ctx, []tracker.Sent{sentMsg("a@x", "max", "", now, ""), sentMsg("b@x", "eva", "", now, "")})
	if errList[0] != nil || !errors.Is(errList[1], errs.ErrUnavailable) {
		t.Fatalf("errors = %v", errList)
	}
	if _, err := svc2.GetTracking(ctx, maxP, "a@x"); err != nil {
		t.Errorf("a@x not tracked: %v", err)
	}
}

type failingKinds struct {
	*syncKinds
	mailbox string
}

func (f *failingKinds) SyncKind(ctx context.Context, tenant, mailboxID string) (tracker.SyncKind, error) {
	if mailboxID == f.mailbox {
		return 0, errs.Unavailable("mailbox down", time.Second, fmt.Errorf("test"))
	}
	return f.syncKinds.SyncKind(ctx, tenant, mailboxID)
}

// TestStoredExplanations: what ExplainTracking reads back for a tracked and an untracked
// message (stored in the compact form, rendered on demand) is the explanation the rules
// produced, sentence for sentence.
func TestStoredExplanations(t *testing.T) {
	svc, _ := batchService(t)
	ctx := context.Background()
	if _, err := svc.UpsertRecord(ctx, crm, tracker.Record{ID: "l-1", Kind: tracker.KindLead, Addresses: []string{"erika@kunde.example"}}); err != nil {
		t.Fatal(err) // erika@kunde.example is now ambiguous
	}
	msgs := []string{
		"Message-ID: <t1@kanzlei.example>\r\nFrom: max@kanzlei.example\r\nTo: erika@kunde.example, neu@kunde.example\r\nSubject: Angebot CRM:0000042\r\n",
		"Message-ID: <u1@kanzlei.example>\r\nFrom: eva@kanzlei.example\r\nTo: neu@kunde.example\r\nSubject: Hallo\r\nIn-Reply-To: <weg@x>\r\nReferences: <a@x> <weg@x>\r\n",
		"Message-ID: <t2@kanzlei.example>\r\nFrom: eva@kanzlei.example\r\nTo: neu@kunde.example\r\nSubject: AW: Angebot\r\nIn-Reply-To: <t1@kanzlei.example>\r\n",
	}
	for i, h := range msgs {
		user := map[bool]string{true: "max", false: "eva"}[i == 0]
		in := sentItem("p-"+user, user, h)
		dry, err := svc.Explain(ctx, admin, in)
		if err != nil {
			t.Fatal(err)
		}
		if dry.Tracked != (i != 1) {
			t.Fatalf("%s: tracked %v", dry.Explanation.MessageID, dry.Tracked)
		}
		if _, err := svc.IngestSentItem(ctx, admin, in); err != nil {
			t.Fatal(err)
		}
		x, e, err := svc.ExplainMessage(ctx, admin, dry.Explanation.MessageID)
		if err != nil {
			t.Fatal(err)
		}
		if x.Tracked != dry.Tracked || (e != nil) != dry.Tracked || x.MessageID != dry.Explanation.MessageID ||
			x.Option != dry.Explanation.Option || x.Method != dry.Explanation.Method || !x.Evaluated.Equal(dry.Explanation.Evaluated) {
			t.Errorf("%s: read back %+v, decided %+v", dry.Explanation.MessageID, *x, dry.Explanation)
		}
		if len(x.Rules) != len(dry.Explanation.Rules) {
			t.Fatalf("%s: %d rules, want %d", dry.Explanation.MessageID, len(x.Rules), len(dry.Explanation.Rules))
		}
		for j, r := range x.Rules {
			want := dry.Explanation.Rules[j]
			if r.Rule != want.Rule || r.Outcome != want.Outcome || r.Detail() != want.Detail() {
				t.Errorf("%s rule %d: %d %q, want %d %q", dry.Explanation.MessageID, r.Rule, r.Outcome, r.Detail(), want.Outcome, want.Detail())
			}
		}
	}
}
