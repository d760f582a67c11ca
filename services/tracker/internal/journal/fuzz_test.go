package journal

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// envelopeReport is an Exchange envelope journal report: the report part with the envelope's
// recipients, then the original as message/rfc822.
const envelopeReport = "From: journal@kanzlei.example\r\n" +
	"To: journal-max@tracker.kanzlei.example\r\n" +
	"Subject: Angebot\r\n" +
	"Message-ID: <report-1@kanzlei.example>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/mixed; boundary=\"b1\"\r\n" +
	"\r\n" +
	"--b1\r\n" +
	"Content-Type: text/plain; charset=us-ascii\r\n" +
	"\r\n" +
	"Sender: max@kanzlei.example\r\n" +
	"Subject: Angebot\r\n" +
	"Message-Id: <m1@kanzlei.example>\r\n" +
	"To: erika@kunde.example\r\n" +
	"Bcc: Akte7@kanzlei.example\r\n" +
	"Bcc: team@kanzlei.example, Expanded: martina@kanzlei.example\r\n" +
	"--b1\r\n" +
	"Content-Type: message/rfc822\r\n" +
	"\r\n" +
	"Message-ID: <m1@kanzlei.example>\r\n" +
	"From: Max <max@kanzlei.example>\r\n" +
	"To: erika@kunde.example\r\n" +
	"Subject: Angebot\r\n" +
	"Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n" +
	"\r\n" +
	"Sehr geehrte Frau Mustermann,\r\n" +
	"--b1--\r\n"

// FuzzReadCopy: whatever a mail server journals, the endpoint never panics, and a copy it
// evaluates (readCopy, tracker.FromHeader, the report's Bcc recipients added) is a message the
// tracker's own rule for messages (tracker.Check) accepts as it is: the report's Bcc lines add
// only lower-case plain addresses, each once, within MaxRecipients, and every address of the
// original stays.
func FuzzReadCopy(f *testing.F) {
	f.Add([]byte(envelopeReport))
	f.Add([]byte("Message-ID: <m1@kanzlei.example>\r\nFrom: max@kanzlei.example\r\nTo: erika@kunde.example\r\nBcc: akte7@kanzlei.example\r\nSubject: Angebot\r\n\r\nbody\r\n"))
	f.Add([]byte(strings.Replace(envelopeReport, "Bcc: Akte7@kanzlei.example", "Bcc: \"akte 7\"@kanzlei.example", 1)))
	f.Add([]byte(strings.Replace(envelopeReport, "Bcc: Akte7@kanzlei.example", "BCC: , Forwarded: x@y\r\nbcc:   \r\nBcc: <a@b>, Forwarded", 1)))
	f.Add([]byte(strings.Replace(envelopeReport, "charset=us-ascii", "charset=x-unknown", 1)))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n\r\n\r\n--x--\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, a := range reportBcc(data) {
			if a == "" || a != tracker.NormalizeAddress(a) {
				t.Fatalf("reportBcc(%q) gives %q: not a normalised address", data, a)
			}
		}
		jc, err := readCopy(data)
		if err != nil {
			return // 554 5.6.0
		}
		m, err := tracker.FromHeader("message", jc.header)
		if err != nil {
			var e *errs.Error
			if !errors.As(err, &e) || len(e.Violations) == 0 {
				t.Fatalf("FromHeader refused with %v, without violations (the reply names one)", err)
			}
			return
		}
		before := slices.Concat(m.To, m.Cc, m.Bcc)
		addBcc(m, jc.bcc)
		after := slices.Concat(m.To, m.Cc, m.Bcc)
		if len(after) > max(tracker.MaxRecipients, len(before)) || !slices.Equal(after[:len(before)], before) {
			t.Fatalf("addBcc(%q) turned the recipients %q into %q", jc.bcc, before, after)
		}
		for i, a := range m.Bcc {
			if slices.Contains(m.Bcc[:i], a) && slices.Index(jc.bcc, a) >= 0 {
				t.Fatalf("Bcc %q added twice: %q", a, m.Bcc)
			}
		}
		m.MailboxID = "info"
		if err := tracker.Check(m); err != nil {
			t.Fatalf("the journal would ingest a message the tracker refuses: %v\n%+v", err, *m)
		}
	})
}
