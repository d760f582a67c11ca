package app_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/testkit/authtest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// TestIDsAreValidated sends a malformed id to every RPC of the outbox that takes one: each is
// INVALID_ARGUMENT naming the field, and no message repeats the raw id.
func TestIDsAreValidated(t *testing.T) {
	e := startEnv(t)
	ctx := e.admin()
	bad := "x\r\n" + strings.Repeat("a", 5000)
	sel := &outboxv1.Selection{EmailIds: []string{bad}}
	calls := []struct {
		name, field string
		call        func() error
	}{
		{"GetEmail", "email_id", func() error { _, err := e.outbox.GetEmail(ctx, &outboxv1.GetEmailRequest{EmailId: bad}); return err }},
		{"SubmitEmail connector_id", "connector_id", func() error {
			req := email("max@kanzlei.example", "client@example.com", "x")
			req.ConnectorId = bad
			_, err := e.outbox.SubmitEmail(e.as("max", nil), req)
			return err
		}},
		{"SubmitEmail regarding_record_id", "regarding_record_id", func() error {
			req := email("max@kanzlei.example", "client@example.com", "x")
			req.RegardingRecordId = "../x"
			_, err := e.outbox.SubmitEmail(e.as("max", nil), req)
			return err
		}},
		{"ListEmails filter", "filter.connector_id", func() error {
			_, err := e.outbox.ListEmails(ctx, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{ConnectorId: bad}})
			return err
		}},
		{"CountEmails filter", "filter.mailbox_id", func() error {
			_, err := e.outbox.CountEmails(ctx, &outboxv1.CountEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{MailboxId: bad}})
			return err
		}},
		{"Cancel", "selection.email_ids[0]", func() error { _, err := e.outbox.Cancel(ctx, &outboxv1.CancelRequest{Selection: sel}); return err }},
		{"Retry", "selection.email_ids[0]", func() error { _, err := e.outbox.Retry(ctx, &outboxv1.RetryRequest{Selection: sel}); return err }},
		{"SendNow", "selection.email_ids[0]", func() error { _, err := e.outbox.SendNow(ctx, &outboxv1.SendNowRequest{Selection: sel}); return err }},
		{"GetConnector", "connector_id", func() error {
			_, err := e.outbox.GetConnector(ctx, &outboxv1.GetConnectorRequest{ConnectorId: bad})
			return err
		}},
		{"CreateConnector", "connector.connector_id", func() error {
			host, port := e.sinkHostPort()
			_, err := e.outbox.CreateConnector(ctx, &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{ConnectorId: "-x", Host: host, Port: port}})
			return err
		}},
		{"DeleteConnector", "connector_id", func() error {
			_, err := e.outbox.DeleteConnector(ctx, &outboxv1.DeleteConnectorRequest{ConnectorId: bad})
			return err
		}},
		{"EnableConnector", "connector_id", func() error {
			_, err := e.outbox.EnableConnector(ctx, &outboxv1.EnableConnectorRequest{ConnectorId: bad})
			return err
		}},
		{"DisableConnector", "connector_id", func() error {
			_, err := e.outbox.DisableConnector(ctx, &outboxv1.DisableConnectorRequest{ConnectorId: bad})
			return err
		}},
		{"MoveEmails", "connector_id", func() error {
			_, err := e.outbox.MoveEmails(ctx, &outboxv1.MoveEmailsRequest{Selection: &outboxv1.Selection{EmailIds: []string{"x"}}, ConnectorId: bad})
			return err
		}},
		{"GetUserSettings", "user_id", func() error {
			_, err := e.outbox.GetUserSettings(ctx, &outboxv1.GetUserSettingsRequest{UserId: bad})
			return err
		}},
	}
	for _, tt := range calls {
		t.Run(tt.name, func(t *testing.T) {
			st := code(t, tt.call(), codes.InvalidArgument)
			if got := fields(st); len(got) == 0 || got[0] != tt.field {
				t.Errorf("fields = %v, want %s", got, tt.field)
			}
			if strings.ContainsAny(st.Message(), "\r\n") || strings.Contains(st.Message(), strings.Repeat("a", 100)) {
				t.Errorf("message echoes the raw id: %.200q", st.Message())
			}
		})
	}
}

// TestMalformedTenantInToken: a correctly signed token whose tenant is malformed is
// UNAUTHENTICATED; the outbox no longer stores a connector for tenant "../x".
func TestMalformedTenantInToken(t *testing.T) {
	e := startEnv(t)
	host, port := e.sinkHostPort()
	for _, tenant := range []string{"../x", "", strings.Repeat("t", 65), "kanzlei\n"} {
		_, err := e.outbox.CreateConnector(authtest.Forged(t, tenant, "admin"), &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
			ConnectorId: "evil", Host: host, Port: port, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		}})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("tenant %q: %v, want Unauthenticated", tenant, err)
		}
	}
}

// TestPaging: both lists of the outbox follow the suite's paging rule.
func TestPaging(t *testing.T) {
	e := startEnv(t)
	ctx := e.admin()
	forged := "MXwxfGFiYw" // base64 of "1|1|abc": the old token format, made by hand
	lists := map[string]func(size int32, token string) (string, error){
		"ListEmails": func(size int32, token string) (string, error) {
			r, err := e.outbox.ListEmails(ctx, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, PageSize: size, PageToken: token})
			return r.GetNextPageToken(), err
		},
		"ListEmails by submit time": func(size int32, token string) (string, error) {
			r, err := e.outbox.ListEmails(ctx, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, Order: outboxv1.EmailOrder_EMAIL_ORDER_SUBMIT_TIME_DESC, PageSize: size, PageToken: token})
			return r.GetNextPageToken(), err
		},
		"ListConnectors": func(size int32, token string) (string, error) {
			r, err := e.outbox.ListConnectors(ctx, &outboxv1.ListConnectorsRequest{PageSize: size, PageToken: token})
			return r.GetNextPageToken(), err
		},
	}
	for name, list := range lists {
		t.Run(name, func(t *testing.T) {
			_, err := list(0, forged)
			if got := fields(code(t, err, codes.InvalidArgument)); len(got) != 1 || got[0] != "page_token" {
				t.Errorf("forged token: fields %v", got)
			}
			if _, err := list(1_000_000, ""); err != nil {
				t.Errorf("page size above the maximum: %v, want clamped", err)
			}
			_, err = list(-1, "")
			if got := fields(code(t, err, codes.InvalidArgument)); len(got) != 1 || got[0] != "page_size" {
				t.Errorf("negative page size: fields %v", got)
			}
		})
	}
}

// TestFromAddressRule: SubmitEmail and mailbox's CheckSend refuse the same From addresses (one
// validator); a trailing CR/LF is not trimmed into acceptance.
func TestFromAddressRule(t *testing.T) {
	e := startEnv(t)
	for _, from := range []string{"max@kanzlei.example\r\n", "max@kanzlei.example\n", " max@kanzlei.example"} {
		_, err := e.mailbox.CheckSend(e.as("max", nil), &mailboxv1.CheckSendRequest{FromAddress: from})
		if got := fields(code(t, err, codes.InvalidArgument)); len(got) != 1 || got[0] != "from_address" {
			t.Errorf("CheckSend %q: fields %v", from, got)
		}
		_, err = e.outbox.SubmitEmail(e.as("max", nil), email(from, "client@example.com", "x"))
		if got := fields(code(t, err, codes.InvalidArgument)); len(got) != 1 || got[0] != "from_address" {
			t.Errorf("SubmitEmail %q: fields %v", from, got)
		}
	}
}

// TestSubmitWithoutFromUsesTheDefaultSender: a user's submit without from_address leaves from
// their default sender mailbox, as SubmitEmailRequest promises; a service caller without a user
// has no default sender.
func TestSubmitWithoutFromUsesTheDefaultSender(t *testing.T) {
	e := startEnv(t)
	martina := e.as("martina", nil)
	if _, err := e.mailbox.SetDefaultSender(martina, &mailboxv1.SetDefaultSenderRequest{MailboxId: "info"}); err != nil {
		t.Fatal(err)
	}
	got := e.submit(martina, email("", "client@example.com", "Vom Standardabsender"))
	if got.GetFromAddress() != "info@kanzlei.example" || got.GetMailboxId() != "info" {
		t.Errorf("from %q, mailbox %q; want the default sender info", got.GetFromAddress(), got.GetMailboxId())
	}
	_, err := e.outbox.SubmitEmail(e.service(), email("", "client@example.com", "x"))
	if f := fields(code(t, err, codes.InvalidArgument)); len(f) != 1 || f[0] != "from_address" {
		t.Errorf("service without a user: fields %v", f)
	}
}
