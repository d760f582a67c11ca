package app_test

import (
	"testing"

	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// TestImportRefusesAnUnknownStatus: a status number beyond the enum is refused, not wrapped onto
// a known one (256+QUEUED is not QUEUED).
func TestImportRefusesAnUnknownStatus(t *testing.T) {
	e := startEnv(t)
	r, err := e.outbox.ImportEmails(e.admin(), &outboxv1.ImportEmailsRequest{Emails: []*outboxv1.ImportedEmail{
		{Email: email("eva@kanzlei.example", "client@example.com", "Falsch"), SenderUserId: "eva", Status: 256 + outboxv1.EmailStatus_EMAIL_STATUS_QUEUED},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GetFailures()) != 1 || r.GetEmailIds()[0] != "" {
		t.Fatalf("import of status %d = %v, want a failure", 256+outboxv1.EmailStatus_EMAIL_STATUS_QUEUED, r)
	}
}
