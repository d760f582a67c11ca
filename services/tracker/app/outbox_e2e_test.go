package app_test

import (
	"context"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/servetest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	outboxapp "github.com/postamt/postamt/services/outbox/app"
)

// TestOutboxSendIsTracked is the whole path: the CRM asks for a tracking token, max submits the
// email through the real outbox, it is delivered over SMTP to a sink, the outbox's EmailSent
// reaches the tracker over JetStream, and the tracker announces EmailTracked, correlated by the
// token and regarding the CRM's record.
func TestOutboxSendIsTracked(t *testing.T) {
	e := startEnv(t)
	sink := smtptest.Start(t)
	outbox := e.startOutbox(sink, "")

	tok, err := e.tracker.IssueTrackingToken(e.crm(), &trackerv1.IssueTrackingTokenRequest{RegardingRecordId: "a-1", Subject: "Ihr Angebot"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := outbox.SubmitEmail(e.as("max"), &outboxv1.SubmitEmailRequest{
		FromAddress: "max@kanzlei.example", To: []string{"office@muster.example"}, Subject: tok.GetSubject(), TextBody: "Anbei das Angebot.",
	})
	if err != nil {
		t.Fatal(err)
	}
	msgs := sink.WaitForMessages(t, 1, 10*time.Second)
	if !strings.Contains(string(msgs[0].Data), "Subject: "+tok.GetSubject()) {
		t.Fatalf("delivered without the token in the subject:\n%s", msgs[0].Data)
	}
	te := e.waitTracked(1)[0].GetTrackedEmail()
	if te.GetSource() != trackerv1.Source_SOURCE_OUTBOX || te.GetMessageId() != m.GetEmail().GetMessageId() ||
		te.GetCorrelationMethod() != trackerv1.CorrelationMethod_CORRELATION_METHOD_TRACKING_TOKEN || te.GetRegarding().GetRecordId() != "a-1" {
		t.Fatalf("tracked = %v, want the outbox's email %s by its token, regarding a-1", te, m.GetEmail().GetMessageId())
	}
}

// TestOutboxEmailRegardingARecordIsTracked (issue 15): the first email of a conversation,
// submitted through the real outbox with regarding_record_id while tokens in subjects are off
// and max has the default option 1, is CRM email: its EmailSent carries the record over
// JetStream, it is tracked regarding the record, and the explanation names the record and the
// rule. A reply to it is then a response to CRM email under option 1 and says which email it
// answers. A record the tenant does not have is ignored: the mail is not tracked on its account
// and the explanation says so. Under option 2, mail regarding a record is tracked although its
// recipient is no record.
func TestOutboxEmailRegardingARecordIsTracked(t *testing.T) {
	e := startEnv(t)
	sink := smtptest.Start(t)
	outbox := e.startOutbox(sink, "")
	submit := func(req *outboxv1.SubmitEmailRequest) *outboxv1.Email {
		t.Helper()
		req.FromAddress, req.To, req.TextBody = "max@kanzlei.example", []string{"stranger@unbekannt.example"}, "Guten Tag."
		r, err := outbox.SubmitEmail(e.as("max"), req)
		if err != nil {
			t.Fatal(err)
		}
		return r.GetEmail()
	}
	tracked := func(messageID string) *trackerv1.TrackedEmail {
		t.Helper()
		var te *trackerv1.TrackedEmail
		poll.Eventually(t, "EmailTracked of "+messageID, func() bool {
			for _, ev := range e.trackedEvents() {
				if ev.GetTrackedEmail().GetMessageId() == messageID {
					te = ev.GetTrackedEmail()
					return true
				}
			}
			return false
		})
		return te
	}
	explain := func(messageID string) *trackerv1.Explanation {
		t.Helper()
		var x *trackerv1.ExplainTrackingResponse
		poll.Eventually(t, "the decision on "+messageID, func() bool {
			var err error
			x, err = e.tracker.ExplainTracking(e.as("max"), &trackerv1.ExplainTrackingRequest{Target: &trackerv1.ExplainTrackingRequest_MessageId{MessageId: messageID}})
			return err == nil
		})
		return x.GetExplanation()
	}
	detail := func(x *trackerv1.Explanation, r trackerv1.Rule) string {
		for _, o := range x.GetRules() {
			if o.GetRule() == r {
				return o.GetDetail()
			}
		}
		return ""
	}

	first := submit(&outboxv1.SubmitEmailRequest{Subject: "Ihr Angebot", RegardingRecordId: "a-1"})
	te := tracked(first.GetMessageId())
	if te.GetRegarding().GetRecordId() != "a-1" || te.GetSource() != trackerv1.Source_SOURCE_OUTBOX ||
		te.GetCorrelationMethod() != trackerv1.CorrelationMethod_CORRELATION_METHOD_NONE || te.GetTrackingToken() != "" {
		t.Fatalf("first email tracked = %v, want regarding a-1, uncorrelated, no token", te)
	}
	x := explain(first.GetMessageId())
	if outcome(x, trackerv1.Rule_RULE_REGARDING) != trackerv1.Outcome_OUTCOME_PASSED || !strings.Contains(detail(x, trackerv1.Rule_RULE_REGARDING), "a-1") ||
		!strings.Contains(detail(x, trackerv1.Rule_RULE_ACCEPTANCE_OPTION), "regarding") {
		t.Fatalf("first email explanation = %v, want the regarding rule naming a-1 and the option accepting on its account", x)
	}

	reply := submit(&outboxv1.SubmitEmailRequest{Subject: "AW: Ihr Angebot", InReplyTo: first.GetMessageId(), References: []string{first.GetMessageId()}})
	te = tracked(reply.GetMessageId())
	if te.GetCorrelationMethod() != trackerv1.CorrelationMethod_CORRELATION_METHOD_IN_REPLY_TO || te.GetRegarding().GetRecordId() != "a-1" {
		t.Fatalf("reply tracked = %v, want by In-Reply-To, regarding a-1", te)
	}
	if d := detail(explain(reply.GetMessageId()), trackerv1.Rule_RULE_ACCEPTANCE_OPTION); !strings.Contains(d, "<"+first.GetMessageId()+">") {
		t.Errorf("reply's option sentence %q, want it to name the email it answers", d)
	}

	unknown := submit(&outboxv1.SubmitEmailRequest{Subject: "Neue Akte", RegardingRecordId: "gone-1"})
	x = explain(unknown.GetMessageId())
	if x.GetTracked() || outcome(x, trackerv1.Rule_RULE_REGARDING) != trackerv1.Outcome_OUTCOME_FAILED ||
		!strings.Contains(detail(x, trackerv1.Rule_RULE_REGARDING), "gone-1") {
		t.Fatalf("unknown record explanation = %v, want untracked, the regarding rule failing on gone-1", x)
	}

	e.setOption("max", 2)
	opt2 := submit(&outboxv1.SubmitEmailRequest{Subject: "Rechnung", RegardingRecordId: "a-1"})
	if te := tracked(opt2.GetMessageId()); te.GetRegarding().GetRecordId() != "a-1" {
		t.Fatalf("option 2 tracked = %v, want regarding a-1", te)
	}
}

// startOutbox serves the real outbox beside the env's mailbox, delivering to sink through its
// default connector, and asking the tracker at trackerAddr for tokens (empty: no tracker).
func (e *env) startOutbox(sink *smtptest.Sink, trackerAddr string) outboxv1.OutboxServiceClient {
	t := e.t
	t.Helper()
	ob, err := outboxapp.New(outboxapp.Config{
		MailboxAddr: e.mailboxAddr, TrackerAddr: trackerAddr, DefaultConnector: "default", MaxUndoDelay: 10 * time.Minute,
		MaxMessageBytes: 1 << 20, MaxRecipients: 50, ScheduleHorizon: 30 * 24 * time.Hour, Retention: time.Hour, Dispatch: true,
		ClaimBatch: 64, Lease: 10 * time.Second, ClaimAhead: 1, StopTimeout: 10 * time.Second, SMTPCommandTimeout: 2 * time.Second, SMTPSubmitTimeout: 3 * time.Second,
		SecretEnvPrefix: "POSTAMT_SMTP_", SecretDir: "/run/secrets/postamt", RelayBatch: 256, RelayClaimIdle: time.Second,
		MaxFilterScan: 10_000, MaxSelection: 100_000,
	}, outboxapp.Deps{
		Logger: e.logger, Redis: e.rdb, JS: e.js, Verifier: e.verifier, Signer: e.signer, Metrics: prometheus.NewRegistry(),
		Server: grpcserver.Options{DrainTimeout: time.Second}, Getenv: func(string) string { return "" },
	})
	if err != nil {
		t.Fatal(err)
	}
	outbox := outboxv1.NewOutboxServiceClient(servetest.Dial(t, servetest.Run(t, ob.Run)))
	host, port, _ := net.SplitHostPort(sink.Addr())
	p, _ := strconv.Atoi(port)
	_, err = outbox.CreateConnector(e.admin(), &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
		ConnectorId: "default", Host: host, Port: int32(p), TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		RetryPattern: []*durationpb.Duration{durationpb.New(time.Minute)}, MaxAttempts: 3,
	}})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		t.Fatal(err)
	}
	return outbox
}

// TestOutboxAppendsTrackingTokens: with the tenant's tracking_token_in_subject on, a submit
// that names its regarding record leaves the outbox with a token the tracker issued at the end
// of its subject, and is tracked by that token regarding the record, with no call of the CRM's
// own; with the setting off the subject goes out as written. The tracker's refusals reach the
// caller as the outbox's errors on the submit's own fields, and a tracker that cannot be
// reached makes the submit UNAVAILABLE (retryable), never a send without the token.
func TestOutboxAppendsTrackingTokens(t *testing.T) {
	e := startEnv(t)
	sink := smtptest.Start(t)
	outbox := e.startOutbox(sink, e.trackerAddr)
	submit := func(key, subject, record string) (*outboxv1.Email, error) {
		r, err := outbox.SubmitEmail(e.as("max"), &outboxv1.SubmitEmailRequest{
			FromAddress: "max@kanzlei.example", To: []string{"office@muster.example"}, Subject: subject, TextBody: "Anbei das Angebot.",
			RegardingRecordId: record, IdempotencyKey: key,
		})
		return r.GetEmail(), err
	}
	delivered := func(messageID string) string {
		t.Helper()
		var subject string
		poll.Eventually(t, "delivery of "+messageID, func() bool {
			for _, m := range sink.Messages() {
				if strings.Contains(strings.ToLower(string(m.Data)), "message-id: <"+messageID+">") {
					_, rest, _ := strings.Cut(string(m.Data), "\r\nSubject: ")
					subject, _, _ = strings.Cut(rest, "\r\n")
					return true
				}
			}
			return false
		})
		return subject
	}

	// Off (the default): stored with its record, sent as written.
	off, err := submit("off", "Ihr Angebot", "a-1")
	if err != nil {
		t.Fatal(err)
	}
	if off.GetSubject() != "Ihr Angebot" || off.GetRegardingRecordId() != "a-1" {
		t.Fatalf("setting off: stored subject %q, record %q", off.GetSubject(), off.GetRegardingRecordId())
	}
	if got := delivered(off.GetMessageId()); got != "Ihr Angebot" {
		t.Fatalf("setting off: delivered subject %q, want it unchanged", got)
	}
	poll.Eventually(t, "EmailTracked of the email without a token", func() bool {
		for _, ev := range e.trackedEvents() {
			if te := ev.GetTrackedEmail(); te.GetMessageId() == off.GetMessageId() {
				return te.GetRegarding().GetRecordId() == "a-1"
			}
		}
		return false
	})
	if long, err := submit("", strings.Repeat("x", 980), "a-1"); err != nil || long.GetSubject() != strings.Repeat("x", 980) {
		t.Fatalf("setting off, a subject without room for a token: %v, want it stored unchanged", err)
	}

	if _, err := e.tracker.UpdateOrgSettings(e.admin(), &trackerv1.UpdateOrgSettingsRequest{
		Settings:   &trackerv1.OrgSettings{TrackingTokenInSubject: true},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"tracking_token_in_subject"}},
	}); err != nil {
		t.Fatal(err)
	}
	on, err := submit("on", "Ihr Angebot", "a-1")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^Ihr Angebot CRM:\d{7}$`).MatchString(on.GetSubject()) {
		t.Fatalf("setting on: stored subject %q, want the token appended", on.GetSubject())
	}
	if got := delivered(on.GetMessageId()); got != on.GetSubject() {
		t.Fatalf("setting on: delivered subject %q, want %q", got, on.GetSubject())
	}
	var te *trackerv1.TrackedEmail
	poll.Eventually(t, "EmailTracked of the tokened email", func() bool {
		for _, ev := range e.trackedEvents() {
			if ev.GetTrackedEmail().GetMessageId() == on.GetMessageId() {
				te = ev.GetTrackedEmail()
				return true
			}
		}
		return false
	})
	if te.GetCorrelationMethod() != trackerv1.CorrelationMethod_CORRELATION_METHOD_TRACKING_TOKEN || te.GetRegarding().GetRecordId() != "a-1" {
		t.Fatalf("tracked = %v, want by its token, regarding a-1", te)
	}
	// A retried submit returns the first email; it does not issue another token.
	again, err := submit("on", "Ihr Angebot", "a-1")
	if err != nil || again.GetEmailId() != on.GetEmailId() || again.GetSubject() != on.GetSubject() {
		t.Fatalf("retried submit = %v, %v; want the first email", again, err)
	}

	// Refusals, on the submit's own fields.
	_, err = submit("", "Ihr Angebot", "nope")
	if status.Code(err) != codes.NotFound || !hasResource(err, "record", "nope") {
		t.Errorf("unknown record: %v, want NOT_FOUND naming the record", err)
	}
	_, err = submit("", "Ihr Angebot", "bad id!")
	if status.Code(err) != codes.InvalidArgument || !slices.Contains(fieldViolations(err), "regarding_record_id") {
		t.Errorf("malformed record id: %v, want INVALID_ARGUMENT on regarding_record_id", err)
	}
	_, err = submit("", strings.Repeat("x", 980), "a-1")
	if status.Code(err) != codes.InvalidArgument || !slices.Contains(fieldViolations(err), "subject") {
		t.Errorf("no room for the token: %v, want INVALID_ARGUMENT on subject", err)
	}

	// A tracker that cannot be reached: UNAVAILABLE, nothing stored; mail without a record is
	// not affected.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	_ = dead.Close()
	cut := e.startOutbox(sink, deadAddr)
	ctx, cancel := context.WithTimeout(e.as("max"), 10*time.Second)
	defer cancel()
	_, err = cut.SubmitEmail(ctx, &outboxv1.SubmitEmailRequest{
		FromAddress: "max@kanzlei.example", To: []string{"office@muster.example"}, Subject: "Ihr Angebot", TextBody: "x",
		RegardingRecordId: "a-1", IdempotencyKey: "cut",
	})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("tracker down: %v, want UNAVAILABLE", err)
	}
	if _, err := cut.GetEmail(e.as("max"), &outboxv1.GetEmailRequest{EmailId: "cut"}); status.Code(err) != codes.NotFound {
		t.Errorf("an email was stored for the refused submit: %v", err)
	}
	if _, err := cut.SubmitEmail(ctx, &outboxv1.SubmitEmailRequest{
		FromAddress: "max@kanzlei.example", To: []string{"office@muster.example"}, Subject: "Ohne Akte", TextBody: "x",
	}); err != nil {
		t.Errorf("submit without a record while the tracker is down: %v", err)
	}
}

// hasResource reports whether err's ResourceInfo details name the resource.
func hasResource(err error, kind, name string) bool {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.ResourceInfo); ok && ri.GetResourceType() == kind && ri.GetResourceName() == name {
			return true
		}
	}
	return false
}
