package tracker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/tracker/internal/redisstore"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// syncKinds is a mailbox service that knows a fixed set of mailboxes.
type syncKinds struct {
	mu    sync.Mutex
	kinds map[string]tracker.SyncKind
	err   error
	calls int
}

func (s *syncKinds) SyncKind(_ context.Context, _, mailboxID string) (tracker.SyncKind, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.err != nil {
		return 0, s.err
	}
	if k, ok := s.kinds[mailboxID]; ok {
		return k, nil
	}
	return tracker.SyncUnknownMailbox, nil
}

var (
	admin = auth.Principal{Tenant: "kanzlei", User: "admin", Roles: []string{auth.RoleAdmin}}
	crm   = auth.Principal{Tenant: "kanzlei", Service: "crm"}
	maxP  = auth.Principal{Tenant: "kanzlei", User: "max"}
)

func newService(t *testing.T) (*tracker.Service, *syncKinds) {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	mbs := &syncKinds{kinds: map[string]tracker.SyncKind{"p-max": tracker.SyncExchange, "p-eva": tracker.SyncIMAP}}
	return tracker.New(redisstore.New(rdb, 0), mbs, tracker.Options{Now: func() time.Time { return now }}), mbs
}

func sentItem(mailbox, user, headers string) tracker.SentItemInput {
	return tracker.SentItemInput{MailboxID: mailbox, SenderUser: user, RawHeaders: []byte(headers)}
}

func TestServiceTrackingFlow(t *testing.T) {
	svc, mbs := newService(t)
	ctx := context.Background()
	if _, err := svc.UpsertRecord(ctx, crm, tracker.Record{ID: "case-7", Kind: tracker.KindOther, EntityType: "case", DisplayName: "Akte 7/26", Addresses: []string{"Akte7@Kanzlei.example"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.UpsertRecord(ctx, crm, tracker.Record{ID: "c-1", Kind: tracker.KindContact, DisplayName: "Erika", Addresses: []string{"erika@kunde.example"}}); err != nil {
		t.Fatal(err)
	}
	tok, subject, err := svc.IssueTrackingToken(ctx, crm, "case-7", "Ihr Angebot", false)
	if err != nil {
		t.Fatal(err)
	}
	if subject != "Ihr Angebot "+tok.Token {
		t.Fatalf("subject = %q", subject)
	}
	first := "Message-ID: <m1@kanzlei.example>\r\nFrom: max@kanzlei.example\r\nTo: erika@kunde.example\r\nSubject: " + subject + "\r\n"

	// Off by default: evaluated, explained, not tracked; no mailbox call needed.
	r, err := svc.IngestSentItem(ctx, crm, sentItem("p-max", "max", first))
	if err != nil {
		t.Fatal(err)
	}
	if r.Tracked || mbs.calls != 0 {
		t.Fatalf("tracked with the org switch off (or mailbox asked %d times)", mbs.calls)
	}
	x, e, err := svc.ExplainMessage(ctx, maxP, "<m1@kanzlei.example>")
	if err != nil || e != nil || x.Tracked {
		t.Fatalf("explain untracked = %+v, %+v, %v", x, e, err)
	}
	if o, _ := x.Outcome(tracker.RuleOrgSetting); o.Outcome != tracker.Failed {
		t.Errorf("org rule = %+v", o)
	}

	if _, err := svc.UpdateOrgSettings(ctx, maxP, tracker.OrgSettings{AutoTrackSentFolderItems: true}, nil); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Fatalf("non-admin org update = %v, want permission denied", err)
	}
	if _, err := svc.UpdateOrgSettings(ctx, admin, tracker.OrgSettings{AutoTrackSentFolderItems: true}, []string{"auto_track_sent_folder_items"}); err != nil {
		t.Fatal(err)
	}

	// The token correlates the CRM's mail with the record (default option: responses only).
	r, err = svc.IngestSentItem(ctx, crm, sentItem("p-max", "max", first))
	if err != nil {
		t.Fatal(err)
	}
	if !r.Tracked || r.Email.Method != tracker.MethodToken || r.Email.Regarding.ID != "case-7" {
		t.Fatalf("first = %+v, rules %+v", r.Email, r.Explanation.Rules)
	}
	if len(r.Email.Links) != 1 || r.Email.Links[0].Record.ID != "c-1" {
		t.Errorf("links = %+v", r.Email.Links)
	}

	// A reply (no token) inherits the regarding record through In-Reply-To.
	reply := "Message-ID: <m2@kanzlei.example>\r\nFrom: max@kanzlei.example\r\nTo: erika@kunde.example\r\nSubject: Nachtrag\r\nIn-Reply-To: <m1@kanzlei.example>\r\n"
	r, err = svc.IngestSentItem(ctx, crm, sentItem("p-max", "max", reply))
	if err != nil || !r.Tracked || r.Email.Method != tracker.MethodInReplyTo || r.Email.Regarding.ID != "case-7" {
		t.Fatalf("reply = %+v, %v", r, err)
	}

	// Repeated (another member's Sent folder, a redelivery): the same tracked email, no change.
	again, err := svc.IngestSentItem(ctx, crm, sentItem("p-max", "max", reply))
	if err != nil || !again.AlreadyTracked || !again.Email.Tracked.Equal(r.Email.Tracked) {
		t.Fatalf("again = %+v, %v", again, err)
	}

	// The record lists both, newest first (same Date: Message-ID order).
	list, next, err := svc.ListTrackedEmails(ctx, maxP, "case-7", tracker.PageRequest{Size: 1})
	if err != nil || len(list) != 1 || next == "" {
		t.Fatalf("page 1 = %v, %q, %v", list, next, err)
	}
	list2, next2, err := svc.ListTrackedEmails(ctx, maxP, "case-7", tracker.PageRequest{Size: 1, Token: next})
	if err != nil || len(list2) != 1 || list2[0].MessageID == list[0].MessageID {
		t.Fatalf("page 2 = %v, %q, %v", list2, next2, err)
	}
	if _, err := svc.GetTracking(ctx, auth.Principal{Tenant: "andere", User: "x"}, "m1@kanzlei.example"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("other tenant reads tracked email: %v", err)
	}

	// Not Exchange: evaluated but not tracked, whatever the option.
	opt := tracker.OptionAll
	if _, err := svc.UpdateUserSettings(ctx, auth.Principal{Tenant: "kanzlei", User: "eva"}, tracker.UserSettings{Option: &opt}); err != nil {
		t.Fatal(err)
	}
	imap := "Message-ID: <m3@kanzlei.example>\r\nFrom: eva@kanzlei.example\r\nTo: erika@kunde.example\r\nSubject: Hallo\r\n"
	r, err = svc.IngestSentItem(ctx, crm, sentItem("p-eva", "eva", imap))
	if err != nil || r.Tracked {
		t.Fatalf("IMAP mailbox = %+v, %v", r, err)
	}

	// The dry run explains without writing.
	dry := "Message-ID: <m4@kanzlei.example>\r\nFrom: max@kanzlei.example\r\nTo: erika@kunde.example\r\nSubject: Re: Nachtrag\r\nReferences: <m2@kanzlei.example>\r\n"
	r, err = svc.Explain(ctx, admin, sentItem("p-max", "max", dry))
	if err != nil || !r.Tracked || r.Email.Method != tracker.MethodReferences {
		t.Fatalf("explain dry run = %+v, %v", r, err)
	}
	if _, err := svc.GetTracking(ctx, maxP, "m4@kanzlei.example"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("the dry run tracked: %v", err)
	}

	// The mailbox service down: Unavailable, nothing decided.
	mbs.err = errs.Unavailable("mailbox down", time.Second, nil)
	if _, err := svc.IngestSentItem(ctx, crm, sentItem("p-max", "max", dry)); !errors.Is(err, errs.ErrUnavailable) {
		t.Errorf("ingest with mailbox down = %v, want unavailable", err)
	}
}

func TestServiceValidation(t *testing.T) {
	svc, _ := newService(t)
	ctx := context.Background()
	bad := func(name string, err error, field string) {
		t.Helper()
		var e *errs.Error
		if !errors.As(err, &e) || e.Kind != errs.KindInvalid {
			t.Errorf("%s: err = %v, want invalid", name, err)
			return
		}
		for _, v := range e.Violations {
			if v.Field == field {
				return
			}
		}
		t.Errorf("%s: violations %+v, want %s", name, e.Violations, field)
	}
	_, err := svc.UpsertRecord(ctx, crm, tracker.Record{ID: "x", Kind: tracker.KindOther, Addresses: []string{"a@b"}})
	bad("other without type", err, "record.entity_type")
	_, err = svc.UpsertRecord(ctx, crm, tracker.Record{ID: "x", Kind: tracker.KindContact, Addresses: []string{"not an address"}})
	bad("bad address", err, "record.email_addresses[0]")
	_, err = svc.UpsertRecord(ctx, crm, tracker.Record{ID: "bad id!", Kind: tracker.KindContact, Addresses: []string{"a@b"}})
	bad("bad id", err, "record.record_id")
	_, err = svc.UpdateOrgSettings(ctx, admin, tracker.OrgSettings{TokenPrefix: "CRM:"}, []string{"tracking_token_prefix"})
	bad("bad prefix", err, "settings.tracking_token_prefix")
	_, err = svc.UpdateOrgSettings(ctx, admin, tracker.OrgSettings{}, []string{"nope"})
	bad("bad mask", err, "update_mask.paths[0]")
	o := tracker.Option(5)
	_, err = svc.UpdateUserSettings(ctx, maxP, tracker.UserSettings{Option: &o})
	bad("bad option", err, "settings.acceptance_option")
	_, err = svc.IngestSentItem(ctx, crm, sentItem("p-max", "", "From: a@b\r\n"))
	bad("no Message-ID", err, "sent_item.raw_headers.Message-ID")
	_, err = svc.IngestSentItem(ctx, crm, sentItem("p-max", "", "Message-ID: <a@b>\r\nFrom: a@b\r\n"))
	bad("no user", err, "sent_item.sending_user_id")
	if _, err := svc.IngestSentItem(ctx, maxP, sentItem("p-max", "max", goodHeaders)); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("user ingest = %v, want permission denied", err)
	}
	if _, err := svc.UpdateUserSettings(ctx, maxP, tracker.UserSettings{UserID: "eva", Option: &o}); !errors.Is(err, errs.ErrPermissionDenied) {
		t.Errorf("user changing another's option = %v, want permission denied", err)
	}
	if _, _, err := svc.IssueTrackingToken(ctx, crm, "unknown", "x", false); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("token for unknown record = %v, want not found", err)
	}
}

// TestIssueTokenOnlyIfEnabled: the outbox's call issues a token only for tenants with tokens in
// subjects, and leaves other tenants' subjects (and unknown records) alone.
func TestIssueTokenOnlyIfEnabled(t *testing.T) {
	svc, _ := newService(t)
	ctx := context.Background()
	tok, subject, err := svc.IssueTrackingToken(ctx, crm, "unknown", "Ihr Angebot", true)
	if err != nil || tok.Token != "" || subject != "Ihr Angebot" {
		t.Fatalf("setting off: %+v %q %v, want no token and the subject unchanged", tok, subject, err)
	}
	long := strings.Repeat("x", 990)
	if _, subject, err := svc.IssueTrackingToken(ctx, crm, "a-1", long, true); err != nil || subject != long {
		t.Fatalf("setting off, a subject without room for a token: %v, want it unchanged", err)
	}
	if _, err := svc.UpdateOrgSettings(ctx, admin, tracker.OrgSettings{TokenInSubject: true}, []string{"tracking_token_in_subject"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := svc.IssueTrackingToken(ctx, crm, "unknown", "Ihr Angebot", true); !errors.Is(err, errs.ErrNotFound) {
		t.Fatalf("setting on, unknown record: %v, want not found", err)
	}
	if _, err := svc.UpsertRecord(ctx, crm, tracker.Record{ID: "a-1", Kind: tracker.KindAccount, DisplayName: "Muster", Addresses: []string{"office@muster.example"}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := svc.IssueTrackingToken(ctx, crm, "a-1", long, true); !errors.Is(err, errs.ErrInvalid) {
		t.Fatalf("setting on, a subject without room for a token: %v, want invalid", err)
	}
	tok, subject, err = svc.IssueTrackingToken(ctx, crm, "a-1", "Ihr Angebot", true)
	if err != nil || tok.Token == "" || subject != "Ihr Angebot "+tok.Token {
		t.Fatalf("setting on: %+v %q %v, want a token appended", tok, subject, err)
	}
}

// TestSmartMatchingThroughTheStore: smart matching finds an earlier tracked email through the
// smart-key index in Redis (same subject after reply prefixes and tokens are folded away, same
// participants), only once the org turns it on, and the match inherits the regarding record.
func TestSmartMatchingThroughTheStore(t *testing.T) {
	svc, _ := newService(t)
	ctx := context.Background()
	if _, err := svc.UpsertRecord(ctx, crm, tracker.Record{ID: "case-7", Kind: tracker.KindOther, EntityType: "case", DisplayName: "Akte 7/26", Addresses: []string{"akte7@kanzlei.example"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.UpdateOrgSettings(ctx, admin, tracker.OrgSettings{AutoTrackSentFolderItems: true}, []string{"auto_track_sent_folder_items"}); err != nil {
		t.Fatal(err)
	}
	tok, subject, err := svc.IssueTrackingToken(ctx, crm, "case-7", "Unterlagen zur Akte", false)
	if err != nil {
		t.Fatal(err)
	}
	first := "Message-ID: <s1@kanzlei.example>\r\nFrom: max@kanzlei.example\r\nTo: erika@kunde.example\r\nSubject: " + subject + "\r\n"
	if r, err := svc.IngestSentItem(ctx, crm, sentItem("p-max", "max", first)); err != nil || !r.Tracked || r.Email.Method != tracker.MethodToken {
		t.Fatalf("first (token %s) = %+v, %v", tok.Token, r, err)
	}
	// The same conversation without token, reply headers or thread.
	later := func(id string) string {
		return "Message-ID: <" + id + "@kanzlei.example>\r\nFrom: max@kanzlei.example\r\nTo: Erika@Kunde.example\r\nSubject: AW: Unterlagen zur Akte\r\n"
	}
	r, err := svc.IngestSentItem(ctx, crm, sentItem("p-max", "max", later("s2")))
	if err != nil || r.Tracked {
		t.Fatalf("smart matching off: %+v, %v; want untracked (responses only, nothing correlates)", r, err)
	}
	if _, err := svc.UpdateOrgSettings(ctx, admin, tracker.OrgSettings{Smart: tracker.SmartMatching{Enabled: true}}, []string{"smart_matching.enabled"}); err != nil {
		t.Fatal(err)
	}
	r, err = svc.IngestSentItem(ctx, crm, sentItem("p-max", "max", later("s3")))
	if err != nil || !r.Tracked || r.Email.Method != tracker.MethodSmart || r.Email.Regarding.ID != "case-7" {
		t.Fatalf("smart matching on: %+v, %v; want tracked by smart matching, regarding case-7", r, err)
	}
	// Other participants: no match.
	other := "Message-ID: <s4@kanzlei.example>\r\nFrom: max@kanzlei.example\r\nTo: jemand@anders.example\r\nSubject: AW: Unterlagen zur Akte\r\n"
	if r, err := svc.IngestSentItem(ctx, crm, sentItem("p-max", "max", other)); err != nil || r.Tracked {
		t.Fatalf("other participants: %+v, %v; want untracked", r, err)
	}
}
