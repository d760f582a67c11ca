package app_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/nats-io/nats.go"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/testkit/poll"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	"github.com/postamt/postamt/services/tracker/app"
)

func headers(id, to, subject string, extra ...string) string {
	h := "Message-ID: <" + id + ">\r\nFrom: Max <max@kanzlei.example>\r\nTo: " + to + "\r\nSubject: " + subject + "\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
	for _, x := range extra {
		h += x + "\r\n"
	}
	return h
}

func fieldViolations(err error) []string {
	var out []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, v.GetField())
			}
		}
	}
	return out
}

func TestIngestSentItemOverGRPC(t *testing.T) {
	e := startEnv(t)
	ingest := func(id, to, subject string, extra ...string) *trackerv1.IngestSentItemResponse {
		t.Helper()
		r, err := e.tracker.IngestSentItem(e.crm(), &trackerv1.IngestSentItemRequest{SentItem: &trackerv1.SentItem{
			MailboxId: "p-max", SendingUserId: "max", RawHeaders: headers(id, to, subject, extra...),
		}})
		if err != nil {
			t.Fatalf("IngestSentItem(%s): %v", id, err)
		}
		return r
	}

	// Default option (responses only): mail to a contact starts no tracked conversation.
	r := ingest("m0@kanzlei.example", "erika@kunde.example", "Termin")
	if r.GetTracked() {
		t.Fatalf("tracked with option 1: %v", r)
	}
	x, err := e.tracker.ExplainTracking(e.as("max"), &trackerv1.ExplainTrackingRequest{Target: &trackerv1.ExplainTrackingRequest_MessageId{MessageId: "<m0@kanzlei.example>"}})
	if err != nil || x.GetExplanation().GetTracked() || len(x.GetExplanation().GetRules()) != 10 {
		t.Fatalf("explain untracked = %v, %v", x, err)
	}

	// Option 2: mail to a contact is tracked and linked; EmailTracked goes out on JetStream.
	e.setOption("max", 2)
	r = ingest("m1@kanzlei.example", "Erika <erika@kunde.example>", "Angebot")
	if !r.GetTracked() || r.GetTrackedEmail().GetLinks()[0].GetRecord().GetRecordId() != "c-1" {
		t.Fatalf("not tracked with option 2: %v", r)
	}
	evs := e.waitTracked(1)
	if evs[0].GetTenantId() != "kanzlei" || evs[0].GetTrackedEmail().GetMessageId() != "m1@kanzlei.example" {
		t.Errorf("EmailTracked = %v", evs[0])
	}

	// Repeating it changes nothing.
	if again := ingest("m1@kanzlei.example", "erika@kunde.example", "Angebot"); !again.GetAlreadyTracked() {
		t.Errorf("second ingest = %v, want already_tracked", again)
	}

	got, err := e.tracker.GetTracking(e.as("max"), &trackerv1.GetTrackingRequest{MessageId: "m1@kanzlei.example"})
	if err != nil || got.GetTrackedEmail().GetSource() != trackerv1.Source_SOURCE_SENT_FOLDER {
		t.Fatalf("GetTracking = %v, %v", got, err)
	}
	list, err := e.tracker.ListTrackedEmails(e.as("max"), &trackerv1.ListTrackedEmailsRequest{RecordId: "c-1"})
	if err != nil || len(list.GetTrackedEmails()) != 1 {
		t.Fatalf("ListTrackedEmails = %v, %v", list, err)
	}
	// eva may not read max's personal mailbox: the tracker answers as the outbox does.
	if _, err := e.tracker.GetTracking(e.as("eva"), &trackerv1.GetTrackingRequest{MessageId: "m1@kanzlei.example"}); status.Code(err) != codes.NotFound {
		t.Errorf("eva's GetTracking of max's mail: %v, want NotFound", err)
	}
	if list, err := e.tracker.ListTrackedEmails(e.as("eva"), &trackerv1.ListTrackedEmailsRequest{RecordId: "c-1"}); err != nil || len(list.GetTrackedEmails()) != 0 {
		t.Errorf("eva's ListTrackedEmails: %v, %v; want none", list, err)
	}

	t.Run("malformed headers are INVALID_ARGUMENT naming the header", func(t *testing.T) {
		_, err := e.tracker.IngestSentItem(e.crm(), &trackerv1.IngestSentItemRequest{SentItem: &trackerv1.SentItem{
			MailboxId: "p-max", SendingUserId: "max", RawHeaders: "From: max@kanzlei.example\r\nTo: <<<\r\n",
		}})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("code = %v", status.Code(err))
		}
		fv := fieldViolations(err)
		for _, want := range []string{"sent_item.raw_headers.Message-ID", "sent_item.raw_headers.To"} {
			if !containsString(fv, want) {
				t.Errorf("violations %v, want %s", fv, want)
			}
		}
	})
	t.Run("users cannot ingest or change org settings", func(t *testing.T) {
		_, err := e.tracker.IngestSentItem(e.as("max"), &trackerv1.IngestSentItemRequest{SentItem: &trackerv1.SentItem{MailboxId: "p-max", SendingUserId: "max", RawHeaders: headers("x@y", "a@b", "s")}})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("ingest as user = %v", err)
		}
		_, err = e.tracker.UpdateOrgSettings(e.as("max"), &trackerv1.UpdateOrgSettingsRequest{Settings: &trackerv1.OrgSettings{}})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("org settings as user = %v", err)
		}
	})
	t.Run("another tenant sees nothing", func(t *testing.T) {
		other := e.other()
		if _, err := e.tracker.GetTracking(other, &trackerv1.GetTrackingRequest{MessageId: "m1@kanzlei.example"}); status.Code(err) != codes.NotFound {
			t.Errorf("GetTracking from another tenant = %v", err)
		}
	})
	t.Run("an unknown record has no token", func(t *testing.T) {
		if _, err := e.tracker.IssueTrackingToken(e.crm(), &trackerv1.IssueTrackingTokenRequest{RegardingRecordId: "nope"}); status.Code(err) != codes.NotFound {
			t.Errorf("IssueTrackingToken = %v", err)
		}
	})
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// publishSent publishes an EmailSent as the outbox's relay would.
func (e *env) publishSent(ev *outboxv1.EmailSent, msgID string) {
	e.t.Helper()
	data, err := proto.Marshal(ev)
	if err != nil {
		e.t.Fatal(err)
	}
	m := &nats.Msg{Subject: "postamt.outbox.v1.EmailSent", Data: data, Header: nats.Header{}}
	m.Header.Set(nats.MsgIdHdr, msgID)
	m.Header.Set("Postamt-Tenant", ev.GetTenantId())
	if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
		e.t.Fatal(err)
	}
}

func sent(emailID, mailbox, user, to, subject string, extra func(*outboxv1.EmailSent)) *outboxv1.EmailSent {
	ev := &outboxv1.EmailSent{
		TenantId: "kanzlei", EmailId: emailID, Version: 3, MessageId: emailID + "@kanzlei.example", SenderUserId: user,
		MailboxId: mailbox, FromAddress: user + "@kanzlei.example", To: []string{to}, Subject: subject,
		SentTime: timestamppb.Now(), Mode: outboxv1.SendMode_SEND_MODE_OWNER,
	}
	if extra != nil {
		extra(ev)
	}
	return ev
}

// TestOutboxEmailSentToEmailTracked: EmailSent on JetStream -> tracker -> EmailTracked on
// JetStream, idempotent under redelivery, and only for Exchange mailboxes.
func TestOutboxEmailSentToEmailTracked(t *testing.T) {
	e := startEnv(t)
	ctx := e.crm()
	tok, err := e.tracker.IssueTrackingToken(ctx, &trackerv1.IssueTrackingTokenRequest{RegardingRecordId: "a-1", Subject: "Ihr Angebot"})
	if err != nil {
		t.Fatal(err)
	}

	// The CRM's mail with a token, through the outbox: correlated by the token (default option).
	e.publishSent(sent("e1", "p-max", "max", "office@muster.example", tok.GetSubject(), nil), "kanzlei:email:e1:3")
	evs := e.waitTracked(1)
	te := evs[0].GetTrackedEmail()
	if te.GetCorrelationMethod() != trackerv1.CorrelationMethod_CORRELATION_METHOD_TRACKING_TOKEN || te.GetRegarding().GetRecordId() != "a-1" ||
		te.GetSource() != trackerv1.Source_SOURCE_OUTBOX || te.GetTrackingToken() != tok.GetToken() {
		t.Fatalf("tracked = %v", te)
	}

	// Redelivered (the same event under another Nats-Msg-Id, as after a relay takeover beyond the
	// duplicate window), then a reply: the reply is the next and only other EmailTracked.
	e.publishSent(sent("e1", "p-max", "max", "office@muster.example", tok.GetSubject(), nil), "kanzlei:email:e1:3:again")
	e.publishSent(sent("e2", "p-max", "max", "office@muster.example", "AW: Ihr Angebot", func(ev *outboxv1.EmailSent) {
		ev.InReplyTo = "e1@kanzlei.example"
		ev.References = []string{"e1@kanzlei.example"}
	}), "kanzlei:email:e2:3")
	evs = e.waitTracked(2)
	if len(evs) != 2 {
		t.Fatalf("%d EmailTracked events, want 2 (the redelivery announces nothing)", len(evs))
	}
	reply := evs[1].GetTrackedEmail()
	if reply.GetMessageId() != "e2@kanzlei.example" || reply.GetCorrelationMethod() != trackerv1.CorrelationMethod_CORRELATION_METHOD_IN_REPLY_TO || reply.GetRegarding().GetRecordId() != "a-1" {
		t.Errorf("reply = %v", reply)
	}

	// Exchange only: eva's mailbox has no server-side sync, whatever her option.
	e.setOption("eva", 0)
	e.publishSent(sent("e3", "p-eva", "eva", "erika@kunde.example", "Hallo", nil), "kanzlei:email:e3:3")
	var x *trackerv1.ExplainTrackingResponse
	poll.Eventually(t, "the decision on e3", func() bool {
		x, err = e.tracker.ExplainTracking(e.as("eva"), &trackerv1.ExplainTrackingRequest{Target: &trackerv1.ExplainTrackingRequest_MessageId{MessageId: "e3@kanzlei.example"}})
		return err == nil
	})
	if x.GetExplanation().GetTracked() || outcome(x.GetExplanation(), trackerv1.Rule_RULE_SYNC_KIND) != trackerv1.Outcome_OUTCOME_FAILED {
		t.Fatalf("e3 explanation = %v", x)
	}

	// The mailbox becomes an Exchange mailbox: mailbox's event drops the cached sync kind (the
	// cache TTL is an hour), and eva's next mail is tracked.
	e.waitMailboxFollower()
	if _, err := e.mailbox.UpdateMailbox(e.admin(), &mailboxv1.UpdateMailboxRequest{
		Mailbox:    &mailboxv1.Mailbox{MailboxId: "p-eva", SyncKind: mailboxv1.SyncKind_SYNC_KIND_EXCHANGE},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"sync_kind"}},
	}); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, "the sync kind cache to see EXCHANGE", func() bool {
		r, err := e.tracker.ExplainTracking(e.admin(), &trackerv1.ExplainTrackingRequest{Target: &trackerv1.ExplainTrackingRequest_SentItem{SentItem: &trackerv1.SentItem{
			MailboxId: "p-eva", SendingUserId: "eva", RawHeaders: headers("probe@x", "a@b", "probe"),
		}}})
		return err == nil && outcome(r.GetExplanation(), trackerv1.Rule_RULE_SYNC_KIND) == trackerv1.Outcome_OUTCOME_PASSED
	})
	e.publishSent(sent("e4", "p-eva", "eva", "erika@kunde.example", "Hallo", nil), "kanzlei:email:e4:3")
	evs = e.waitTracked(3)
	if got := evs[2].GetTrackedEmail().GetMessageId(); got != "e4@kanzlei.example" {
		t.Errorf("third EmailTracked is %s", got)
	}

	// A broken event is terminated, not retried forever, and does not stop the consumer.
	e.publishSent(&outboxv1.EmailSent{TenantId: "kanzlei", EmailId: "bad", MessageId: "not a message id", MailboxId: "p-max"}, "kanzlei:email:bad:1")
	e.publishSent(sent("e5", "p-max", "max", "office@muster.example", "AW: Ihr Angebot "+tok.GetToken(), nil), "kanzlei:email:e5:3")
	if evs = e.waitTracked(4); evs[3].GetTrackedEmail().GetMessageId() != "e5@kanzlei.example" {
		t.Errorf("fourth EmailTracked is %v", evs[3])
	}
}

func outcome(x *trackerv1.Explanation, r trackerv1.Rule) trackerv1.Outcome {
	for _, o := range x.GetRules() {
		if o.GetRule() == r {
			return o.GetOutcome()
		}
	}
	return trackerv1.Outcome_OUTCOME_UNSPECIFIED
}

// waitMailboxFollower waits until the tracker's cache follows mailbox's stream, so an event
// published now reaches it.
func (e *env) waitMailboxFollower() {
	e.t.Helper()
	poll.Eventually(e.t, "the tracker to follow POSTAMT_MAILBOX", func() bool {
		s, err := e.js.Stream(context.Background(), "POSTAMT_MAILBOX")
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background())
		return err == nil && info.State.Consumers > 0
	})
}

func TestJournalEndToEnd(t *testing.T) {
	e := startEnv(t)
	e.setOption("max", 3)
	c, err := smtp.Dial(e.journalAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("exchange.kanzlei.example"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("journal@kanzlei.example", nil); err != nil {
		t.Fatal(err)
	}
	var se *smtp.SMTPError
	if err := c.Rcpt("journal-eva@tracker.kanzlei.example", nil); !errors.As(err, &se) || se.Code != 550 {
		t.Errorf("unknown journal address = %v, want 550", err)
	}
	if err := c.Rcpt("journal-max@tracker.kanzlei.example", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(w, headers("j1@kanzlei.example", "office@muster.example", "Rechnung", "Cc: erika@kunde.example")+"\r\nAnbei die Rechnung.\r\n") //nolint:errcheck // a failed write shows at w.Close, checked below
	if err := w.Close(); err != nil {
		t.Fatalf("DATA: %v", err)
	}
	got, err := e.tracker.GetTracking(e.as("max"), &trackerv1.GetTrackingRequest{MessageId: "j1@kanzlei.example"})
	if err != nil {
		t.Fatal(err)
	}
	if te := got.GetTrackedEmail(); te.GetSource() != trackerv1.Source_SOURCE_JOURNAL || len(te.GetLinks()) != 2 {
		t.Errorf("journaled = %v", te)
	}
	// Oversize: 552.
	if err := c.Mail("journal@kanzlei.example", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("journal-max@tracker.kanzlei.example", nil); err != nil {
		t.Fatal(err)
	}
	w, _ = c.Data()
	fmt.Fprint(w, headers("j2@kanzlei.example", "office@muster.example", "Gross")+"\r\n"+strings.Repeat(strings.Repeat("x", 76)+"\r\n", 1000)) //nolint:errcheck // the refusal shows at w.Close, checked below
	if err := w.Close(); !errors.As(err, &se) || se.Code != 552 {
		t.Errorf("oversize = %v, want 552", err)
	}
	_ = c.Quit()
}

func TestConfig(t *testing.T) {
	good := app.Config{MailboxAddr: "mailbox:9090", DecisionRetention: 1e12, RelayBatch: 1, RelayClaimIdle: 1e9, JournalMaxBytes: 1 << 20,
		JournalAddresses: "j1@t.example=kanzlei/p-max/max, J2@T.example=kanzlei/info/martina"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	m, _ := app.ParseJournalAddresses(good.JournalAddresses)
	if m["j2@t.example"].MailboxID != "info" || len(m) != 2 {
		t.Errorf("parsed %v", m)
	}
	for _, bad := range []string{"nope", "a@b=kanzlei/p-max", "a@b=kanzlei/p max/max", "a@b=t/m/u,A@B=t/m/u"} {
		c := good
		c.JournalAddresses = bad
		if err := c.Validate(); err == nil {
			t.Errorf("journal addresses %q accepted", bad)
		}
	}
	// The variables are documented from the tags, as for every service.
	for _, v := range config.Vars(app.Config{}) {
		if !strings.HasPrefix(v.Name, "TRACKER_") || v.Description == "" {
			t.Errorf("variable %+v", v)
		}
	}
}

func (e *env) other() context.Context {
	return authtestOutgoingOther(e)
}
