package tracker_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

const goodHeaders = "Message-ID: <new@kanzlei.example>\r\n" +
	"From: \"Max Mustermann\" <Max@Kanzlei.example>\r\n" +
	"To: Erika <erika@kunde.example>, office@muster.example\r\n" +
	"Cc: support@muster.example\r\n" +
	"Subject: =?utf-8?q?AW=3A_Ihr_Anliegen_=C3=BCber?= CRM:0001001\r\n" +
	"Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n" +
	"In-Reply-To: <parent@kunde.example>\r\n" +
	"References: <root@kanzlei.example> <parent@kunde.example>\r\n" +
	"\r\n" +
	"body is ignored\r\n"

func TestParseHeaders(t *testing.T) {
	m, err := tracker.ParseHeaders("raw_headers", []byte(goodHeaders))
	if err != nil {
		t.Fatal(err)
	}
	want := tracker.Message{
		MessageID: "new@kanzlei.example", From: "max@kanzlei.example",
		To: []string{"erika@kunde.example", "office@muster.example"}, Cc: []string{"support@muster.example"},
		Subject: "AW: Ihr Anliegen über CRM:0001001", SentAt: time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC),
		InReplyTo: "parent@kunde.example", References: []string{"root@kanzlei.example", "parent@kunde.example"},
	}
	if m.MessageID != want.MessageID || m.From != want.From || !slices.Equal(m.To, want.To) || !slices.Equal(m.Cc, want.Cc) ||
		m.Subject != want.Subject || !m.SentAt.Equal(want.SentAt) || m.InReplyTo != want.InReplyTo || !slices.Equal(m.References, want.References) {
		t.Errorf("got  %+v\nwant %+v", *m, want)
	}
	// What follows the header section is not read: a NUL in the body is no header's.
	if _, err := tracker.ParseHeaders("raw_headers", []byte(goodHeaders+"\x00\r")); err != nil {
		t.Errorf("a NUL in the body: %v", err)
	}
	// Without the blank line (only the header section) is fine too.
	if _, err := tracker.ParseHeaders("raw_headers", []byte(strings.SplitN(goodHeaders, "\r\n\r\n", 2)[0])); err != nil {
		t.Errorf("header section without blank line: %v", err)
	}
}

func TestParseHeadersRejects(t *testing.T) {
	replace := func(old, new string) []byte { return []byte(strings.Replace(goodHeaders, old, new, 1)) }
	tests := []struct {
		name  string
		raw   []byte
		field string
	}{
		{"empty", nil, "raw_headers"},
		{"no Message-ID", replace("Message-ID: <new@kanzlei.example>\r\n", ""), "raw_headers.Message-ID"},
		{"bad Message-ID", replace("<new@kanzlei.example>", "new kanzlei"), "raw_headers.Message-ID"},
		{"no From", replace("From: \"Max Mustermann\" <Max@Kanzlei.example>\r\n", ""), "raw_headers.From"},
		{"bad To", replace("To: Erika <erika@kunde.example>", "To: <<<"), "raw_headers.To"},
		{"bad Date", replace("Mon, 30 Nov 2026 10:00:00 +0100", "yesterday"), "raw_headers.Date"},
		{"bad References", replace("<root@kanzlei.example> <parent@kunde.example>", "<root@"), "raw_headers.References"},
		{"not a header", []byte("this is not a header\r\n\r\n"), "raw_headers"},
		{"NUL in the subject", replace("Ihr_Anliegen", "Ihr\x00Anliegen"), "raw_headers.Subject"},
		{"a bare CR after the Message-ID", replace("<new@kanzlei.example>", "<new@kanzlei.example>\rBcc: x@evil.example"), "raw_headers.Message-ID"},
		{"NUL in a folded line names the header above", replace("To: Erika <erika@kunde.example>, ", "to: Erika <erika@kunde.example>,\r\n\tx\x00y "), "raw_headers.To"},
		{"NUL in an unknown header", replace("Date:", "X-Mailer: a\x00b\r\nDate:"), "raw_headers.X-Mailer"},
		{"oversize", []byte("X-Pad: " + strings.Repeat("a", tracker.MaxHeaderBytes) + "\r\n"), "raw_headers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tracker.ParseHeaders("raw_headers", tt.raw)
			var e *errs.Error
			if !errors.As(err, &e) || e.Kind != errs.KindInvalid {
				t.Fatalf("err = %v, want an invalid-argument error", err)
			}
			if !slices.ContainsFunc(e.Violations, func(v errs.FieldViolation) bool { return v.Field == tt.field }) {
				t.Errorf("violations %+v, want one for %s", e.Violations, tt.field)
			}
		})
	}
}

func TestCheckNormalises(t *testing.T) {
	m := &tracker.Message{MessageID: "<A@B>", MailboxID: "info", From: "INFO@Kanzlei.example", To: []string{"Erika@Kunde.example"}, InReplyTo: "<p@q>"}
	if err := tracker.Check(m); err != nil {
		t.Fatal(err)
	}
	if m.MessageID != "A@B" || m.From != "info@kanzlei.example" || m.To[0] != "erika@kunde.example" || m.InReplyTo != "p@q" {
		t.Errorf("got %+v", m)
	}
	bad := &tracker.Message{MessageID: "a b", MailboxID: "info", From: "nope"}
	if err := tracker.Check(bad); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("Check(bad) = %v, want invalid", err)
	}
}
