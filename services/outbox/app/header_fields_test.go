package app_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/testkit/fieldtest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// TestHeaderFieldsRefuseLineBreaks: CR, LF, CRLF and NUL in every field of the outbox API that
// ends up in a mail header, the SMTP session, an event or a key — addresses, subject, file
// names, Message-IDs, the idempotency key, work item and conversation ids, a connector's host
// and user name — is INVALID_ARGUMENT naming the field (for an import: the email's failure), and
// nothing is stored or sent.
func TestHeaderFieldsRefuseLineBreaks(t *testing.T) {
	e := startEnv(t)
	eva, admin := e.as("eva", nil), e.admin()
	ob := e.outbox
	submit := func(edit func(*outboxv1.SubmitEmailRequest)) func(context.Context) error {
		return func(ctx context.Context) error {
			req := email("eva@kanzlei.example", "client@example.com", "Ihre Unterlagen")
			req.Attachments = []*outboxv1.Attachment{{Filename: "brief.pdf", ContentType: "application/pdf", Content: []byte("%PDF"), ContentId: "brief@kanzlei.example"}}
			req.WorkItem = &outboxv1.WorkItem{Id: "case-4711", Type: outboxv1.WorkItemType_WORK_ITEM_TYPE_CASE, TeamId: "empfang"}
			req.IdempotencyKey, req.InReplyTo, req.References, req.ConversationId = "key-1", "a@client.example", []string{"a@client.example"}, "conv-1"
			edit(req)
			_, err := ob.SubmitEmail(ctx, req)
			return err
		}
	}
	connector := func(edit func(*outboxv1.Connector)) *outboxv1.Connector {
		c := &outboxv1.Connector{ConnectorId: "relay", DisplayName: "Relay", Host: "smtp.kanzlei.example", Port: 587,
			TlsMode: outboxv1.TlsMode_TLS_MODE_STARTTLS, RetryPattern: []*durationpb.Duration{durationpb.New(time.Minute)}}
		edit(c)
		return c
	}
	for _, tc := range []struct {
		rpc, field string
		as         context.Context
		call       func(ctx context.Context, bad func(string) string) error
	}{
		{"SubmitEmail", "from_address", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.FromAddress = bad(r.FromAddress) })(ctx)
		}},
		{"SubmitEmail", "to[0]", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.To = []string{bad("client@example.com")} })(ctx)
		}},
		{"SubmitEmail", "cc[0]", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.Cc = []string{bad("copy@example.com")} })(ctx)
		}},
		{"SubmitEmail", "bcc[0]", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.Bcc = []string{bad("blind@example.com")} })(ctx)
		}},
		{"SubmitEmail", "subject", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.Subject = bad(r.Subject) })(ctx)
		}},
		{"SubmitEmail", "attachments[0].filename", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.Attachments[0].Filename = bad("brief.pdf") })(ctx)
		}},
		{"SubmitEmail", "attachments[0].content_type", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.Attachments[0].ContentType = bad("application/pdf") })(ctx)
		}},
		{"SubmitEmail", "attachments[0].content_id", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.Attachments[0].ContentId = bad("brief@kanzlei.example") })(ctx)
		}},
		{"SubmitEmail", "idempotency_key", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.IdempotencyKey = bad("key-1") })(ctx)
		}},
		{"SubmitEmail", "in_reply_to", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.InReplyTo = bad(r.InReplyTo) })(ctx)
		}},
		{"SubmitEmail", "references[1]", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.References = append(r.References, bad("b@client.example")) })(ctx)
		}},
		{"SubmitEmail", "work_item.id", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.WorkItem.Id = bad(r.WorkItem.Id) })(ctx)
		}},
		{"SubmitEmail", "work_item.team_id", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.WorkItem.TeamId = bad(r.WorkItem.TeamId) })(ctx)
		}},
		{"SubmitEmail", "conversation_id", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.ConversationId = bad(r.ConversationId) })(ctx)
		}},
		{"SubmitEmail", "connector_id", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.ConnectorId = bad("default") })(ctx)
		}},
		{"SubmitEmail", "regarding_record_id", eva, func(ctx context.Context, bad func(string) string) error {
			return submit(func(r *outboxv1.SubmitEmailRequest) { r.RegardingRecordId = bad("contact-1") })(ctx)
		}},
		{"ImportEmails", "message_id", admin, func(ctx context.Context, bad func(string) string) error {
			return importOne(ctx, ob, func(im *outboxv1.ImportedEmail) { im.MessageId = bad(im.MessageId) })
		}},
		{"ImportEmails", "sender_user_id", admin, func(ctx context.Context, bad func(string) string) error {
			return importOne(ctx, ob, func(im *outboxv1.ImportedEmail) { im.SenderUserId = bad(im.SenderUserId) })
		}},
		{"ImportEmails", "subject", admin, func(ctx context.Context, bad func(string) string) error {
			return importOne(ctx, ob, func(im *outboxv1.ImportedEmail) { im.Email.Subject = bad(im.Email.Subject) })
		}},
		{"CreateConnector", "connector.connector_id", admin, func(ctx context.Context, bad func(string) string) error {
			_, err := ob.CreateConnector(ctx, &outboxv1.CreateConnectorRequest{Connector: connector(func(c *outboxv1.Connector) { c.ConnectorId = bad(c.ConnectorId) })})
			return err
		}},
		{"CreateConnector", "connector.display_name", admin, func(ctx context.Context, bad func(string) string) error {
			_, err := ob.CreateConnector(ctx, &outboxv1.CreateConnectorRequest{Connector: connector(func(c *outboxv1.Connector) { c.DisplayName = bad(c.DisplayName) })})
			return err
		}},
		{"CreateConnector", "connector.host", admin, func(ctx context.Context, bad func(string) string) error {
			_, err := ob.CreateConnector(ctx, &outboxv1.CreateConnectorRequest{Connector: connector(func(c *outboxv1.Connector) { c.Host = bad(c.Host) })})
			return err
		}},
		{"CreateConnector", "connector.username", admin, func(ctx context.Context, bad func(string) string) error {
			_, err := ob.CreateConnector(ctx, &outboxv1.CreateConnectorRequest{Connector: connector(func(c *outboxv1.Connector) {
				c.AuthMechanism, c.Username, c.SecretRef = outboxv1.AuthMechanism_AUTH_MECHANISM_PLAIN, bad("relay-user"), "env:POSTAMT_SMTP_RELAY"
			})})
			return err
		}},
		{"UpdateConnector", "connector.display_name", admin, func(ctx context.Context, bad func(string) string) error {
			_, err := ob.UpdateConnector(ctx, &outboxv1.UpdateConnectorRequest{Connector: &outboxv1.Connector{ConnectorId: "default", DisplayName: bad("Default")}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
			return err
		}},
		{"UpdateConnector", "connector.host", admin, func(ctx context.Context, bad func(string) string) error {
			_, err := ob.UpdateConnector(ctx, &outboxv1.UpdateConnectorRequest{Connector: &outboxv1.Connector{ConnectorId: "default", Host: bad("127.0.0.1")}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"host"}}})
			return err
		}},
		{"ListEmails", "filter.work_item.id", eva, func(ctx context.Context, bad func(string) string) error {
			_, err := ob.ListEmails(ctx, &outboxv1.ListEmailsRequest{Filter: &outboxv1.EmailFilter{WorkItem: &outboxv1.WorkItem{Id: bad("case-4711")}}})
			return err
		}},
		{"ListEmails", "filter.text", eva, func(ctx context.Context, bad func(string) string) error {
			_, err := ob.ListEmails(ctx, &outboxv1.ListEmailsRequest{Filter: &outboxv1.EmailFilter{Text: bad("Unterlagen")}})
			return err
		}},
		{"UpdateUserSettings", "settings.user_id", admin, func(ctx context.Context, bad func(string) string) error {
			_, err := ob.UpdateUserSettings(ctx, &outboxv1.UpdateUserSettingsRequest{Settings: &outboxv1.UserSettings{UserId: bad("eva"), PageSize: 20}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"page_size"}}})
			return err
		}},
		{"Cancel", "selection.email_ids[0]", eva, func(ctx context.Context, bad func(string) string) error {
			_, err := ob.Cancel(ctx, &outboxv1.CancelRequest{Selection: &outboxv1.Selection{EmailIds: []string{bad("e1")}}})
			return err
		}},
	} {
		for _, b := range fieldtest.Breakers {
			for _, bad := range []struct {
				name string
				f    func(string) string
			}{{"inside", b.Break}, {"header injected", b.Inject}} {
				t.Run(tc.rpc+"/"+tc.field+"/"+b.Name+" "+bad.name, func(t *testing.T) {
					before := e.snapshot(admin)
					fieldtest.WantViolation(t, tc.call(tc.as, bad.f), tc.field)
					fieldtest.Unchanged(t, before, e.snapshot(admin))
				})
			}
		}
	}
	if n := len(e.sink.Messages()); n != 0 {
		t.Errorf("%d messages reached the relay", n)
	}
}

// importOne imports one legacy email edited by edit and returns its failure as an error (an
// import reports each email's failure in the response, not as the call's status).
func importOne(ctx context.Context, ob outboxv1.OutboxServiceClient, edit func(*outboxv1.ImportedEmail)) error {
	im := &outboxv1.ImportedEmail{
		Email:        email("eva@kanzlei.example", "client@example.com", "Alte Post"),
		SenderUserId: "eva", Status: outboxv1.EmailStatus_EMAIL_STATUS_FAILED, AttemptCount: 3, LastError: "550 no",
		MessageId: "legacy-1@kanzlei.example",
	}
	edit(im)
	r, err := ob.ImportEmails(ctx, &outboxv1.ImportEmailsRequest{Emails: []*outboxv1.ImportedEmail{im}})
	if err != nil {
		return err
	}
	if len(r.GetFailures()) == 0 {
		return nil
	}
	return importFailure{r.GetFailures()[0]}
}

// importFailure is an import's per-email failure seen as a status: its code, and a BadRequest
// made of the fields its message names ("invalid request: a, b").
type importFailure struct{ f *outboxv1.EmailFailure }

func (f importFailure) Error() string { return f.f.GetMessage() }

func (f importFailure) GRPCStatus() *status.Status {
	var v errs.Violations
	if list, ok := strings.CutPrefix(f.f.GetMessage(), "invalid request: "); ok {
		for field := range strings.SplitSeq(list, ", ") {
			v.Add(field, "")
		}
	}
	st := errs.ToStatus(v.Err())
	if codes.Code(f.f.GetCode()) != codes.InvalidArgument {
		return status.New(codes.Code(f.f.GetCode()), f.f.GetMessage())
	}
	return st
}

// snapshot is what the tenant stores, as the API shows it: the counts of open and finished mail,
// the connectors, and eva's settings.
func (e *env) snapshot(ctx context.Context) []proto.Message {
	e.t.Helper()
	var out []proto.Message
	add := func(m proto.Message, err error) {
		e.t.Helper()
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, m)
	}
	add(e.outbox.CountEmails(ctx, &outboxv1.CountEmailsRequest{View: outboxv1.View_VIEW_ALL}))
	add(e.outbox.CountEmails(ctx, &outboxv1.CountEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{
		Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_SENT, outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED},
	}}))
	add(e.outbox.ListConnectors(ctx, &outboxv1.ListConnectorsRequest{PageSize: 500}))
	add(e.outbox.GetUserSettings(ctx, &outboxv1.GetUserSettingsRequest{UserId: "eva"}))
	return out
}
