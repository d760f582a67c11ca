package app_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/poll"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
)

// TestAccessMatrix proves the one visibility rule (internal/access, docs/architecture.md "Who
// may read mail") over every RPC that returns a sent email, for every kind of caller, through the
// gateway's gRPC port as clients call it. One email: max sends it from the shared mailbox info
// (Exchange-synced, so the tracker tracks it by its token) with a Bcc; max is in team akten,
// which lena leads; martina reads info (RIGHT_READ), eva may only send as info.
func TestAccessMatrix(t *testing.T) {
	e := startEnv(t, nil)
	e.seed()
	mb, ob, tr := mailboxv1.NewMailboxServiceClient(e.conn), outboxv1.NewOutboxServiceClient(e.conn), trackerv1.NewTrackerServiceClient(e.conn)
	as := func(p auth.Principal) context.Context { return authtest.Outgoing(t, e.signer, p) }
	user := func(id string, roles ...string) context.Context {
		return as(auth.Principal{Tenant: "kanzlei", User: id, Roles: roles})
	}
	admin, service := user("admin", auth.RoleAdmin), as(auth.Principal{Tenant: "kanzlei", Service: "crm-sync"})
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []string{"max", "martina", "lena", "paul", "otto"} { // eva is seeded
		must(mb.CreateUser(admin, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: u, DisplayName: u, Email: u + "@kanzlei.example"}}))
	}
	must(mb.CreateMailbox(admin, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
		MailboxId: "info", Address: "info@kanzlei.example", DisplayName: "Kanzlei", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED,
		SyncKind: mailboxv1.SyncKind_SYNC_KIND_EXCHANGE,
	}}))
	for u, r := range map[string]mailboxv1.Right{"max": mailboxv1.Right_RIGHT_SEND_AS, "martina": mailboxv1.Right_RIGHT_READ, "eva": mailboxv1.Right_RIGHT_SEND_AS} {
		must(mb.AddMember(admin, &mailboxv1.AddMemberRequest{MailboxId: "info", UserId: u, Rights: []mailboxv1.Right{r}}))
	}
	must(mb.CreateTeam(admin, &mailboxv1.CreateTeamRequest{Team: &mailboxv1.Team{TeamId: "akten", DisplayName: "Akten", MemberUserIds: []string{"max"}, LeadUserIds: []string{"lena"}}}))
	must(mb.CreateTenant(as(auth.Principal{Tenant: "andere", User: "admin", Roles: []string{auth.RoleAdmin, "operator"}}), &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "andere"}}))
	must(tr.UpdateOrgSettings(admin, &trackerv1.UpdateOrgSettingsRequest{
		Settings: &trackerv1.OrgSettings{AutoTrackSentFolderItems: true}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"auto_track_sent_folder_items"}},
	}))
	must(tr.UpsertRecord(service, &trackerv1.UpsertRecordRequest{Record: &trackerv1.Record{
		RecordId: "case-1", Kind: trackerv1.RecordKind_RECORD_KIND_CONTACT, DisplayName: "Mandant", EmailAddresses: []string{"mandant@example.com"},
	}}))
	tok, err := tr.IssueTrackingToken(service, &trackerv1.IssueTrackingTokenRequest{RegardingRecordId: "case-1", Subject: "Vergleich"})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := ob.SubmitEmail(user("max"), &outboxv1.SubmitEmailRequest{
		FromAddress: "info@kanzlei.example", To: []string{"mandant@example.com"}, Bcc: []string{"geheim@anwalt.example"},
		Subject: tok.GetSubject(), TextBody: "Anbei.",
	})
	if err != nil {
		t.Fatal(err)
	}
	id, msgID := sub.GetEmail().GetEmailId(), sub.GetEmail().GetMessageId()
	poll.Eventually(t, "the email sent and decided on", func() bool {
		_, err := tr.ExplainTracking(service, &trackerv1.ExplainTrackingRequest{Target: &trackerv1.ExplainTrackingRequest_MessageId{MessageId: msgID}})
		return err == nil
	})
	if x, err := tr.ExplainTracking(service, &trackerv1.ExplainTrackingRequest{Target: &trackerv1.ExplainTrackingRequest_MessageId{MessageId: msgID}}); !x.GetExplanation().GetTracked() {
		t.Fatalf("not tracked: %v %v", x, err)
	}
	poll.Eventually(t, "the email in the sent view", func() bool {
		r, err := mb.ListSentItems(user("max"), &mailboxv1.ListSentItemsRequest{})
		return err == nil && len(r.GetItems()) == 1
	})

	type want struct {
		read, bcc bool // the outbox and the tracker alike
		tracker   bool // the tracker only (differs for the crm role)
		sent      bool // in the caller's own sent view (a folder view: sender and RIGHT_READ only)
		noSent    bool // the caller has no sent view (not a user of the directory)
	}
	for _, c := range []struct {
		name string
		ctx  context.Context
		want want
	}{
		{"sender", user("max"), want{read: true, bcc: true, tracker: true, sent: true}},
		{"admin", admin, want{read: true, bcc: true, tracker: true, noSent: true}},
		{"operator (no admin)", user("otto", "operator"), want{}},
		{"lead of the sender's team", user("lena"), want{read: true, tracker: true}},
		{"member with RIGHT_READ", user("martina"), want{read: true, tracker: true, sent: true}},
		{"member with SEND_AS only", user("eva"), want{}},
		{"plain user", user("paul"), want{}},
		{"plain user whose token claims the team", as(auth.Principal{Tenant: "kanzlei", User: "paul", Teams: []string{"akten"}}), want{}},
		{"crm role", user("otto", "crm"), want{tracker: true}},
		{"service", service, want{read: true, bcc: true, tracker: true, noSent: true}},
		{"admin of another tenant", as(auth.Principal{Tenant: "andere", User: "admin", Roles: []string{auth.RoleAdmin}}), want{noSent: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, w := c.ctx, c.want
			check := func(rpc string, err error, found bool, bcc []string, wantFound, wantBcc bool) {
				t.Helper()
				if err != nil && (wantFound || status.Code(err) != codes.NotFound) {
					t.Errorf("%s: %v", rpc, err)
					return
				}
				if err == nil && found != wantFound {
					t.Errorf("%s: found %v, want %v", rpc, found, wantFound)
				}
				if found && (len(bcc) > 0) != wantBcc {
					t.Errorf("%s: bcc %v, want shown=%v", rpc, bcc, wantBcc)
				}
			}
			g, err := ob.GetEmail(ctx, &outboxv1.GetEmailRequest{EmailId: id})
			check("outbox GetEmail", err, err == nil, g.GetEmail().GetBcc(), w.read, w.bcc)

			l, err := ob.ListEmails(ctx, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_SENT}}})
			i := slices.IndexFunc(l.GetEmails(), func(x *outboxv1.Email) bool { return x.GetEmailId() == id })
			var lbcc []string
			if i >= 0 {
				lbcc = l.GetEmails()[i].GetBcc()
			}
			check("outbox ListEmails ALL, SENT", err, i >= 0, lbcc, w.read, w.bcc)

			s, err := ob.ListEmails(ctx, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_SENT}, Text: "geheim@"}})
			check("outbox text search for the Bcc address", err, len(s.GetEmails()) > 0, nil, w.read && w.bcc, false)

			a, err := ob.Cancel(ctx, &outboxv1.CancelRequest{Selection: &outboxv1.Selection{EmailIds: []string{id}}})
			if err != nil || len(a.GetResult().GetFailures()) != 1 {
				t.Errorf("outbox Cancel: %v %v", a, err)
			} else if got, wantCode := codes.Code(a.GetResult().GetFailures()[0].GetCode()), map[bool]codes.Code{true: codes.FailedPrecondition, false: codes.NotFound}[w.read]; got != wantCode {
				t.Errorf("outbox Cancel of sent mail: %v, want %v (the rule before the status)", got, wantCode)
			}

			gt, err := tr.GetTracking(ctx, &trackerv1.GetTrackingRequest{MessageId: msgID})
			check("tracker GetTracking", err, err == nil, gt.GetTrackedEmail().GetBcc(), w.tracker, w.bcc)

			lt, err := tr.ListTrackedEmails(ctx, &trackerv1.ListTrackedEmailsRequest{RecordId: "case-1"})
			var tbcc []string
			if len(lt.GetTrackedEmails()) > 0 {
				tbcc = lt.GetTrackedEmails()[0].GetBcc()
			}
			if status.Code(err) == codes.NotFound && !w.tracker {
				err = nil // another tenant's record
			}
			check("tracker ListTrackedEmails", err, len(lt.GetTrackedEmails()) > 0, tbcc, w.tracker, w.bcc)

			x, err := tr.ExplainTracking(ctx, &trackerv1.ExplainTrackingRequest{Target: &trackerv1.ExplainTrackingRequest_MessageId{MessageId: msgID}})
			check("tracker ExplainTracking", err, err == nil, x.GetTrackedEmail().GetBcc(), w.tracker, w.bcc)

			if w.noSent {
				return
			}
			sv, err := mb.ListSentItems(ctx, &mailboxv1.ListSentItemsRequest{})
			inSent := slices.ContainsFunc(sv.GetItems(), func(it *mailboxv1.SentItem) bool { return strings.EqualFold(it.GetEmailId(), id) })
			check("mailbox ListSentItems (own view)", err, inSent, nil, w.sent, false)
		})
	}
}

// TestUnknownTenantIsRefusedAlike: a well-formed token for a tenant that does not exist gets the
// same answer from every service — writes FAILED_PRECONDITION TENANT_NOT_FOUND, reads as for an
// empty tenant — where the outbox once stored a connector for it.
func TestUnknownTenantIsRefusedAlike(t *testing.T) {
	e := startEnv(t, nil)
	nobody := authtest.Outgoing(t, e.signer, auth.Principal{Tenant: "niemand", User: "admin", Roles: []string{auth.RoleAdmin}})
	ob, tr := outboxv1.NewOutboxServiceClient(e.conn), trackerv1.NewTrackerServiceClient(e.conn)
	host, port := "127.0.0.1", int32(25)
	for name, write := range map[string]func() error{
		"outbox CreateConnector": func() error {
			_, err := ob.CreateConnector(nobody, &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{ConnectorId: "x", Host: host, Port: port, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE}})
			return err
		},
		"outbox UpdateUserSettings": func() error {
			_, err := ob.UpdateUserSettings(nobody, &outboxv1.UpdateUserSettingsRequest{Settings: &outboxv1.UserSettings{PageSize: 20}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"page_size"}}})
			return err
		},
		"tracker UpsertRecord": func() error {
			_, err := tr.UpsertRecord(nobody, &trackerv1.UpsertRecordRequest{Record: &trackerv1.Record{RecordId: "r", Kind: trackerv1.RecordKind_RECORD_KIND_CONTACT, DisplayName: "x"}})
			return err
		},
		"mailbox CreateUser": func() error {
			_, err := mailboxv1.NewMailboxServiceClient(e.conn).CreateUser(nobody, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: "u", DisplayName: "u", Email: "u@x.example"}})
			return err
		},
	} {
		st := status.Convert(write())
		if st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "does not exist") {
			t.Errorf("%s in an unknown tenant: %v, want FailedPrecondition TENANT_NOT_FOUND", name, st)
		}
	}
	if r, err := ob.ListConnectors(nobody, &outboxv1.ListConnectorsRequest{}); err != nil || len(r.GetConnectors()) != 0 {
		t.Errorf("outbox ListConnectors in an unknown tenant: %v, %v; want an empty list", r, err)
	}
}
