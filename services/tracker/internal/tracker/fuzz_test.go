package tracker

import (
	"bytes"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/postamt/postamt/internal/errs"
)

var wholeToken = regexp.MustCompile(`^[A-Za-z0-9]{1,10}:[0-9]{4,18}$`)

// FuzzTokens: the subject side of tracking tokens.
//   - TokenCandidates of any subject are at most maxTokenCandidates distinct token-shaped words
//     of the subject.
//   - A token issued for a subject (IssueTrackingToken: the subject, a space, the token) is the
//     first candidate of that subject and of a reply to it, and the tenant's rule accepts it, so
//     the mail and its replies are tracked by it, whatever the subject holds before it.
//   - Smart matching does not see the token or the reply prefix: NormalizeSubject of the subject
//     with the token, and of a reply to it, is that of the subject.
func FuzzTokens(f *testing.F) {
	f.Add("Ihr Angebot", "CRM", 7, int64(1001))
	f.Add("AW: Ihr Anliegen über CRM:0001001", "CRM", 7, int64(1002))
	f.Add("Termin 10:30 Uhr, Akte AZ:2026/17", "Akte", 4, int64(1))
	f.Add("", "X", 12, int64(999999999999))
	f.Add("ab:1234 cd:12345 ef:123456 gh:1234567 ij:12345678", "CRM", 7, int64(5))
	f.Add(strings.Repeat("a:1234 ", 64), "CRM", 7, int64(5))
	f.Add("Re: Fwd: AW: WG: [2]: ", "Z9", 5, int64(77))
	f.Add("x_CRM:0001001", "CRM", 7, int64(1001))
	f.Fuzz(func(t *testing.T, subject, prefix string, digits int, n int64) {
		cands := TokenCandidates(subject)
		if len(cands) > maxTokenCandidates {
			t.Fatalf("%d candidates", len(cands))
		}
		for i, c := range cands {
			if !wholeToken.MatchString(c) || !strings.Contains(subject, c) || slices.Contains(cands[:i], c) {
				t.Fatalf("TokenCandidates(%q) = %q: %q is not a distinct token of the subject", subject, cands, c)
			}
		}

		// A tenant's token shape (UpdateOrgSettings) and a number of the counter; a subject
		// IssueTrackingToken takes.
		if !prefixPattern.MatchString(prefix) || digits < 4 || digits > 12 || n < 1 || n >= 1e18 {
			return
		}
		var v errs.Violations
		if !v.Line("subject", subject, maxSubject) || utf8.RuneCountInString(subject) > maxSubject-30 {
			return
		}
		tok := FormatToken(prefix, digits, n)
		org := OrgSettings{TokenPrefix: prefix, TokenDigits: digits}
		if !acceptsToken(org, tok) {
			t.Fatalf("the tenant's own token %q has not its shape", tok)
		}
		issued := strings.TrimSpace(subject + " " + tok)
		for _, s := range []string{issued, "AW: " + issued, "Re: Re: " + issued + " "} {
			if c := TokenCandidates(s); len(c) == 0 || c[0] != tok {
				t.Fatalf("TokenCandidates(%q) = %q: the issued token %q is not the first", s, c, tok)
			}
		}
		want := NormalizeSubject(subject)
		for _, s := range []string{issued, "AW: " + issued, "Re: Re: " + issued} {
			if got := NormalizeSubject(s); got != want {
				t.Fatalf("NormalizeSubject(%q) = %q, but of the subject %q it is %q", s, got, subject, want)
			}
		}
	})
}

// FuzzParseHeaders: a sent item's headers (IngestSentItem, ExplainTracking, the journal) are
// either refused as InvalidArgument naming the field or its headers, or read into a Message
// that Check, the rule for the outbox's events, accepts and leaves as it is (both ways into the
// rules agree), with lower-case plain addresses and at most MaxReferences references. Written
// back as a header section (go-message) and read again, it is the same Message.
func FuzzParseHeaders(f *testing.F) {
	f.Add([]byte("Message-ID: <new@kanzlei.example>\r\n" +
		"From: \"Max Mustermann\" <Max@Kanzlei.example>\r\n" +
		"To: Erika <erika@kunde.example>, office@muster.example\r\n" +
		"Cc: support@muster.example\r\n" +
		"Subject: =?utf-8?q?AW=3A_Ihr_Anliegen_=C3=BCber?= CRM:0001001\r\n" +
		"Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n" +
		"In-Reply-To: <parent@kunde.example>\r\n" +
		"References: <root@kanzlei.example> <parent@kunde.example>\r\n" +
		"\r\nbody is ignored\r\n"))
	f.Add([]byte("Message-ID: <a@b>\nFrom: a@b\nTo: undisclosed-recipients:;\nBcc: \"x y\"@b\n"))
	f.Add([]byte("Message-ID: <a@b>\r\nFrom: a@b\r\nSubject: =?x-unknown?q?abc?=\r\n\r\n"))
	f.Add([]byte("Message-ID: <a@b>\r\nFrom: a@b\r\nSubject: a\r\n b\tc\r\n\r\n"))
	f.Add([]byte("Message-ID: <a@[1.2.3.4]>\r\nFrom: A <a@b>, c@d\r\nTo: g: x@y, z@w;\r\nReferences: " + strings.Repeat("<r@x> ", 60) + "\r\n\r\n"))
	f.Add([]byte("Message-ID: <a@b>\r\nFrom: a@b\r\nSubject: =?utf-8?b?AA==?=\r\n\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := ParseHeaders("raw_headers", raw)
		if err != nil {
			var e *errs.Error
			if !errors.As(err, &e) || errs.KindOf(err) != errs.KindInvalid || len(e.Violations) == 0 {
				t.Fatalf("refused with %v, not InvalidArgument with violations", err)
			}
			for _, v := range e.Violations {
				if v.Field != "raw_headers" && !strings.HasPrefix(v.Field, "raw_headers.") {
					t.Fatalf("violation %+v names no field of the request", v)
				}
			}
			return
		}
		if len(m.References) > MaxReferences {
			t.Fatalf("%d references", len(m.References))
		}
		for _, a := range slices.Concat([]string{m.From}, m.To, m.Cc, m.Bcc) {
			if a != strings.ToLower(a) || a == "" || strings.ContainsAny(a, " \t\r\n") {
				t.Fatalf("address %q is not a lower-case plain address", a)
			}
		}
		checked := *m
		checked.To, checked.Cc, checked.Bcc = slices.Clone(m.To), slices.Clone(m.Cc), slices.Clone(m.Bcc)
		checked.References = slices.Clone(m.References)
		checked.MailboxID = "info"
		if err := Check(&checked); err != nil {
			t.Fatalf("ParseHeaders accepted what Check refuses: %v\n%+v", err, *m)
		}
		checked.MailboxID = ""
		if !equalMessages(&checked, m) {
			t.Fatalf("Check changed what ParseHeaders read:\n%+v\n%+v", *m, checked)
		}

		// Written back and read again.
		var h mail.Header
		h.SetMessageID(m.MessageID)
		h.SetAddressList("From", []*mail.Address{{Address: m.From}})
		for _, l := range []struct {
			key   string
			addrs []string
		}{{"To", m.To}, {"Cc", m.Cc}, {"Bcc", m.Bcc}} {
			var as []*mail.Address
			for _, a := range l.addrs {
				as = append(as, &mail.Address{Address: a})
			}
			h.SetAddressList(l.key, as)
		}
		if strings.Contains(m.Subject, "=?") {
			return // a subject read from an encoded word that holds "=?" reads differently written as is
		}
		h.SetSubject(m.Subject)
		if !m.SentAt.IsZero() {
			h.SetDate(m.SentAt)
		}
		if m.InReplyTo != "" {
			h.SetMsgIDList("In-Reply-To", []string{m.InReplyTo})
		}
		h.SetMsgIDList("References", m.References)
		var buf bytes.Buffer
		if err := textproto.WriteHeader(&buf, h.Header.Header); err != nil {
			t.Fatal(err)
		}
		again, err := ParseHeaders("raw_headers", buf.Bytes())
		if err != nil {
			t.Fatalf("written back as\n%s\nit is refused: %v", buf.Bytes(), err)
		}
		if !equalMessages(again, m) {
			t.Fatalf("written back as\n%s\nit reads as\n%+v\nnot\n%+v", buf.Bytes(), *again, *m)
		}
	})
}

func equalMessages(a, b *Message) bool {
	return a.MessageID == b.MessageID && a.MailboxID == b.MailboxID && a.From == b.From && slices.Equal(a.To, b.To) &&
		slices.Equal(a.Cc, b.Cc) && slices.Equal(a.Bcc, b.Bcc) && strings.TrimSpace(a.Subject) == strings.TrimSpace(b.Subject) &&
		a.InReplyTo == b.InReplyTo && slices.Equal(a.References, b.References) && a.SentAt.Equal(b.SentAt)
}
