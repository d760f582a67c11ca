package message

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	netmail "net/mail"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-message/mail"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
)

var date = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

func base() *Email {
	return &Email{
		MessageID: "e1.abc@kanzlei.example", Date: date,
		From:    Address{Name: "Kanzlei Muster", Address: "info@kanzlei.example"},
		To:      []Address{{Name: "Jürgen Groß", Address: "j@example.com"}},
		Subject: "Ihr Termin am Montag – Bestätigung",
		Text:    "Guten Tag,\nbis Montag.",
	}
}

func parse(t *testing.T, b []byte) *mail.Reader {
	t.Helper()
	r, err := mail.CreateReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("the built message does not parse: %v\n%s", err, b)
	}
	return r
}

func TestBuild(t *testing.T) {
	t.Run("single text part with stable headers", func(t *testing.T) {
		b, err := Build(base())
		if err != nil {
			t.Fatal(err)
		}
		r := parse(t, b)
		id, _ := r.Header.MessageID()
		subj, _ := r.Header.Subject()
		from, _ := r.Header.AddressList("From")
		if id != "e1.abc@kanzlei.example" || subj != base().Subject || from[0].Name != "Kanzlei Muster" {
			t.Errorf("headers: id %q subject %q from %v", id, subj, from)
		}
		if r.Header.Get("Sender") != "" {
			t.Error("send-as mail has a Sender header")
		}
		if bytes.Contains(b, []byte("\n")) && !bytes.Contains(b, []byte("\r\n")) {
			t.Error("lines do not end in CRLF")
		}
		again, _ := Build(base())
		if !bytes.Equal(b, again) {
			t.Error("building twice gives different bytes: the message is not stable across attempts")
		}
	})
	t.Run("on-behalf mail names the sender", func(t *testing.T) {
		e := base()
		e.Sender = &Address{Name: "Martina Musterfrau", Address: "m@kanzlei.example"}
		r := parse(t, mustBuild(t, e))
		s, _ := r.Header.AddressList("Sender")
		if len(s) != 1 || s[0].Address != "m@kanzlei.example" {
			t.Errorf("Sender = %v", s)
		}
	})
	t.Run("text and HTML with an attachment", func(t *testing.T) {
		e := base()
		e.HTML = "<p>Guten Tag</p>"
		e.Attachments = []Attachment{{Filename: "Vollmacht.pdf", ContentType: "application/pdf", Content: []byte("%PDF-1.4 ...")}}
		r := parse(t, mustBuild(t, e))
		var kinds []string
		for {
			p, err := r.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			switch h := p.Header.(type) {
			case *mail.InlineHeader:
				ct, _, _ := h.ContentType()
				kinds = append(kinds, ct)
			case *mail.AttachmentHeader:
				name, _ := h.Filename()
				body, _ := io.ReadAll(p.Body)
				kinds = append(kinds, name+"="+string(body))
			}
		}
		if got := strings.Join(kinds, ","); got != "text/plain,text/html,Vollmacht.pdf=%PDF-1.4 ..." {
			t.Errorf("parts = %s", got)
		}
	})
	t.Run("a reply carries In-Reply-To and References", func(t *testing.T) {
		e := base()
		e.InReplyTo = "orig@client.example"
		e.References = []string{"first@client.example", "orig@client.example"}
		r := parse(t, mustBuild(t, e))
		refs, _ := r.Header.MsgIDList("References")
		irt, _ := r.Header.MsgIDList("In-Reply-To")
		if len(refs) != 2 || len(irt) != 1 || irt[0] != "orig@client.example" {
			t.Errorf("In-Reply-To %v References %v", irt, refs)
		}
	})
}

func TestHeaderInjectionIsRejected(t *testing.T) {
	cases := map[string]func(e *Email){
		"subject":   func(e *Email) { e.Subject = "Hi\r\nBcc: victim@example.com" },
		"from name": func(e *Email) { e.From.Name = "X\nBcc: v@example.com" },
		"to name":   func(e *Email) { e.To[0].Name = "Y\r\nX-Evil: 1" },
		"filename": func(e *Email) {
			e.Attachments = []Attachment{{Filename: "a.pdf\r\nContent-Type: text/html", Content: []byte("x")}}
		},
		"references": func(e *Email) { e.References = []string{"a@b\r\nBcc: c@d"} },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			e := base()
			mutate(e)
			if _, err := Build(e); !errors.Is(err, ErrHeaderInjection) {
				t.Errorf("Build = %v, want ErrHeaderInjection", err)
			}
		})
	}
}

// TestAttachmentNamesUseRFC2231: a non-ASCII file name is written as an RFC 2231 parameter
// (the filename* form with the utf-8 charset), never as an encoded word inside a quoted string,
// and reads back as it was; an ASCII name stays a plain parameter.
func TestAttachmentNamesUseRFC2231(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"Vollmacht Müller.pdf", "filename*=utf-8''Vollmacht%20M%C3%BCller.pdf"},
		{"Vollmacht.pdf", "filename=Vollmacht.pdf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := base()
			e.Attachments = []Attachment{{Filename: tc.name, ContentType: "application/pdf", Content: []byte("%PDF")}}
			b := mustBuild(t, e)
			if !bytes.Contains(b, []byte(tc.want)) || bytes.Contains(b, []byte("filename=\"=?")) {
				t.Errorf("Content-Disposition does not carry %s:\n%s", tc.want, b)
			}
			got, err := Parse(b, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Attachments) != 1 || got.Attachments[0].Filename != tc.name {
				t.Errorf("read back %+v, want the file name %q", got.Attachments, tc.name)
			}
		})
	}
}

// FuzzBuild: whatever the header values, bodies and attachment, Build refuses a header value
// with CR or LF (ErrHeaderInjection). For what the outbox accepts (outbox.ValidateSubmission, and
// a display name as mailbox gives it, short of CR and LF) it writes a message that
//   - has no bare CR or LF: every line ends in CRLF, and no line is longer than 998 octets
//     (RFC 5322 §2.1.1), so no relay or reader splits or rejects it;
//   - is 7-bit unless an address is not ASCII: it goes through a relay without 8BITMIME
//     unchanged;
//   - parses back with go-message with only the headers asked for, the same subject, From (name
//     and address), To, Message-ID, In-Reply-To and Date;
//   - reads back with Parse as the same bodies (line ends as CRLF) and the same attachment (its
//     content type too, when it is one);
//   - reads back with the standard library too (net/mail, mime, mime/multipart), which unfolds
//     header lines as RFC 5322 says where go-message is more lenient: the same subject, From and
//     attachment name.
func FuzzBuild(f *testing.F) {
	f.Add("Termin", "Kanzlei", "j@example.com", "a.pdf", "application/pdf", "Guten Tag,\nbis Montag.", "", "", []byte("x"))
	f.Add("Hi\r\nBcc: x@y", "N\"ame", "j@example.com", "b\n.pdf", "", "x", "", "", []byte("x"))
	f.Add("=?utf-8?q?x?=", "Ä Ö Ü", "j@example.com", "ü.txt", "text/plain", "x", "<p>x</p>", "orig@client.example", []byte("ü"))
	f.Add("Ihr Termin am Montag – Bestätigung CRM:0001001", "Müller \\ Partner", "jürgen@groß.example", "Vollmacht Müller.pdf", "application/pdf", "", "<p>Grüße</p>", "", []byte("%PDF"))
	f.Add(strings.Repeat("x", 998), strings.Repeat("n", 200), "j@example.com", strings.Repeat("f", 255), "a/b", strings.Repeat("y", 2000), "", "", []byte{0, 1, 2})
	f.Add("  spaced\tsubject  ", " ", "j@example.com", "a b.txt", "text/plain; charset=utf-8", "a\rb\r\nc\n", "", "", []byte(nil))
	f.Add("Vollmacht", "Kanzlei", "j@example.com", "Vollmacht.pdf", "application/pdf; name=\"Vollmacht.pdf\"", "x", "", "", []byte("%PDF"))
	f.Add("Re: x", "Kanzlei", "j@example.com", strings.Repeat("ü", 255), "application/pdf", "x", "", strings.Repeat("i", outbox.MaxMessageIDLen), []byte("x"))
	f.Fuzz(func(t *testing.T, subject, name, to, filename, contentType, text, html, inReplyTo string, content []byte) {
		e := base()
		e.Subject, e.From.Name, e.To[0].Address, e.Text, e.HTML, e.InReplyTo = subject, name, to, text, html, inReplyTo
		e.Attachments = []Attachment{{Filename: filename, ContentType: contentType, Content: content}}
		b, err := Build(e)
		if strings.ContainsAny(subject+name+to+filename+contentType+inReplyTo, "\r\n") {
			if !errors.Is(err, ErrHeaderInjection) {
				t.Fatalf("a header value with CR or LF was not refused: %v", err)
			}
			return
		}
		sub := &outbox.Submission{
			From: e.From.Address, To: []string{to}, Subject: subject, Text: text, HTML: html, InReplyTo: inReplyTo,
			Attachments: []outbox.AttachmentInput{{Filename: filename, ContentType: contentType, Size: int64(len(content))}},
		}
		if outbox.ValidateSubmission(sub, outbox.DefaultLimits(), date) != nil || !utf8.ValidString(name) {
			return
		}
		if err != nil {
			t.Fatalf("Build refused what the outbox accepts: %v", err)
		}
		// An address with non-ASCII characters (RFC 6532) is 8-bit in any header.
		checkLines(t, b, isASCII(to) && isASCII(e.From.Address))

		r := parse(t, b)
		allowed := map[string]bool{"Date": true, "Message-Id": true, "From": true, "To": true, "Subject": true, "Mime-Version": true, "Content-Type": true, "In-Reply-To": true}
		fields := r.Header.Fields()
		for fields.Next() {
			if !allowed[fields.Key()] {
				t.Fatalf("unexpected header %q from subject %q name %q", fields.Key(), subject, name)
			}
		}
		// Surrounding whitespace is not part of a header value. A subject that looks like an RFC
		// 2047 encoded word ("=?...?=") is compared too: Build encodes it, so it is not decoded
		// into something else.
		if got, err := r.Header.Subject(); err != nil || (utf8.ValidString(subject) && strings.TrimSpace(got) != strings.TrimSpace(subject)) {
			t.Fatalf("subject %q came back as %q, %v", subject, got, err)
		}
		from, err := r.Header.AddressList("From")
		if err != nil || len(from) != 1 || from[0].Address != e.From.Address ||
			(utf8.ValidString(name) && strings.TrimSpace(from[0].Name) != strings.TrimSpace(name)) {
			t.Fatalf("From %q <%s> came back as %v, %v", name, e.From.Address, from, err)
		}
		if rcpts, err := r.Header.AddressList("To"); err != nil || len(rcpts) != 1 || rcpts[0].Address != to {
			t.Fatalf("To %s came back as %v, %v", to, rcpts, err)
		}
		if id, err := r.Header.MessageID(); err != nil || id != e.MessageID {
			t.Fatalf("Message-ID %s came back as %q, %v", e.MessageID, id, err)
		}
		if d, err := r.Header.Date(); err != nil || !d.Equal(e.Date) {
			t.Fatalf("Date %v came back as %v, %v", e.Date, d, err)
		}
		if inReplyTo != "" {
			if irt, err := r.Header.MsgIDList("In-Reply-To"); err != nil || len(irt) != 1 || irt[0] != inReplyTo {
				t.Fatalf("In-Reply-To %q came back as %v, %v", inReplyTo, irt, err)
			}
		}

		strictRead(t, b, subject, name, filename)

		p, err := Parse(b, 1<<30)
		if err != nil {
			t.Fatalf("Parse: %v", err)
		}
		wantText := crlf(text)
		if text == "" && html == "" {
			wantText = ""
		}
		if p.Text != wantText || p.HTML != crlf(html) {
			t.Fatalf("bodies %q, %q came back as %q, %q", text, html, p.Text, p.HTML)
		}
		if len(p.Attachments) != 1 || !bytes.Equal(p.Attachments[0].Content, content) ||
			(utf8.ValidString(filename) && p.Attachments[0].Filename != filename) {
			t.Fatalf("attachment %q (%d bytes) came back as %+v", filename, len(content), p.Attachments)
		}
		wantType, _, err := mime.ParseMediaType(contentType)
		if err != nil || !strings.Contains(wantType, "/") {
			wantType = "application/octet-stream"
		}
		if p.Attachments[0].ContentType != wantType {
			t.Fatalf("attachment content type %q came back as %q", contentType, p.Attachments[0].ContentType)
		}
	})
}

// strictRead reads b with the standard library, which unfolds a header line into a space as RFC
// 5322 says (go-message drops it, and so read back a filename that other readers did not), and
// fails unless the subject, the From name and the attachment's file name are what was built.
func strictRead(t *testing.T, b []byte, subject, name, filename string) {
	t.Helper()
	m, err := netmail.ReadMessage(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("net/mail cannot read the message: %v", err)
	}
	dec := new(mime.WordDecoder)
	if got, err := dec.DecodeHeader(m.Header.Get("Subject")); err != nil || strings.TrimSpace(got) != strings.TrimSpace(subject) {
		t.Fatalf("net/mail: subject %q came back as %q, %v", subject, got, err)
	}
	if from, err := m.Header.AddressList("From"); err != nil || len(from) != 1 || strings.TrimSpace(from[0].Name) != strings.TrimSpace(name) {
		t.Fatalf("net/mail: From name %q came back as %v, %v", name, from, err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("Content-Type %q: %s, %v", m.Header.Get("Content-Type"), mt, err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var names []string
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("mime/multipart: %v", err)
		}
		if cd := p.Header.Get("Content-Disposition"); strings.HasPrefix(cd, "attachment") {
			d, params, err := mime.ParseMediaType(cd)
			if err != nil || d != "attachment" {
				t.Fatalf("mime: Content-Disposition %q: %v", cd, err)
			}
			names = append(names, params["filename"])
		}
	}
	if len(names) != 1 || (utf8.ValidString(filename) && names[0] != filename) {
		t.Fatalf("mime: attachment %q came back as %q", filename, names)
	}
}

// checkLines fails unless every line of b ends in CRLF (no bare CR or LF), is at most 998 octets
// and, with sevenBit, holds 7-bit characters only.
func checkLines(t *testing.T, b []byte, sevenBit bool) {
	t.Helper()
	for i, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		body, ok := bytes.CutSuffix(line, []byte("\r\n"))
		if !ok && i < bytes.Count(b, []byte("\n")) {
			t.Fatalf("line %d ends in a bare LF: %q", i+1, line)
		}
		if bytes.IndexByte(body, '\r') >= 0 {
			t.Fatalf("line %d holds a bare CR: %q", i+1, line)
		}
		if len(body) > 998 {
			t.Fatalf("line %d is %d octets, over 998: %.80q...", i+1, len(body), body)
		}
		for _, c := range body {
			if c >= 0x80 && sevenBit {
				t.Fatalf("line %d holds an 8-bit octet: %q", i+1, body)
			}
		}
	}
}

func isASCII(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r >= utf8.RuneSelf })
}

// crlf is s with every line end (CRLF, a lone CR, a lone LF) as CRLF: a text body in a message.
func crlf(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n")
}

func mustBuild(t *testing.T, e *Email) []byte {
	t.Helper()
	b, err := Build(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseReadsBackWhatBuildWrote(t *testing.T) {
	e := &Email{
		MessageID: "m1@kanzlei.example", Date: time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC),
		From: Address{Address: "info@kanzlei.example"}, To: []Address{{Address: "client@example.com"}},
		Subject: "Ihre Akte", Text: "Grüße\r\n", HTML: "<p>Grüße</p>",
		Attachments: []Attachment{{Filename: "vollmacht.pdf", ContentType: "application/pdf", Content: []byte("%PDF-1.7 x")}},
	}
	raw, err := Build(e)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(raw, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got.Text != e.Text || got.HTML != e.HTML || len(got.Attachments) != 1 ||
		got.Attachments[0].Filename != "vollmacht.pdf" || string(got.Attachments[0].Content) != "%PDF-1.7 x" {
		t.Errorf("parsed %+v", got)
	}
}

// TestHeadersReadBackEverywhere: values that go-message's own encoding gave back changed, or not
// at all, to some readers, or dropped (a content type with parameters) (found by FuzzBuild), are
// written so that go-message and the standard library read them back as they were.
func TestHeadersReadBackEverywhere(t *testing.T) {
	t.Run("a subject that looks like an encoded word", func(t *testing.T) {
		e := base()
		e.Subject = "Ihr Zeichen =?utf-8?q?x?="
		b := mustBuild(t, e)
		if got, _ := parse(t, b).Header.Subject(); got != e.Subject {
			t.Errorf("subject came back as %q", got)
		}
	})
	t.Run("a subject with a run too long for a line", func(t *testing.T) {
		e := base()
		e.Subject = strings.Repeat("x", 998)
		b := mustBuild(t, e)
		checkLines(t, b, true)
		if got, _ := parse(t, b).Header.Subject(); got != e.Subject {
			t.Errorf("subject came back as %d characters: %q", len(got), got)
		}
	})
	t.Run("a From name with a backslash and umlauts", func(t *testing.T) {
		e := base()
		e.From.Name = `Müller \ Partner`
		from, err := parse(t, mustBuild(t, e)).Header.AddressList("From")
		if err != nil || len(from) != 1 || from[0].Name != e.From.Name {
			t.Errorf("From came back as %v, %v", from, err)
		}
	})
	t.Run("a content type with parameters", func(t *testing.T) {
		e := base()
		e.Attachments = []Attachment{{Filename: "liste.csv", ContentType: "text/csv; charset=utf-8", Content: []byte("a;b")}}
		b := mustBuild(t, e)
		if !bytes.Contains(b, []byte("Content-Type: text/csv; charset=utf-8\r\n")) {
			t.Errorf("no Content-Type text/csv:\n%s", b)
		}
		got, err := Parse(b, 1<<20)
		if err != nil || len(got.Attachments) != 1 || got.Attachments[0].ContentType != "text/csv" {
			t.Errorf("read back %+v, %v", got, err)
		}
	})
	t.Run("a long non-ASCII file name", func(t *testing.T) {
		e := base()
		// 244 characters, 1,356 octets percent-encoded: more than a line holds.
		e.Attachments = []Attachment{{Filename: strings.Repeat("Доверенность Мюллер ", 12) + ".pdf", ContentType: "application/pdf", Content: []byte("%PDF")}}
		b := mustBuild(t, e)
		checkLines(t, b, true)
		if !bytes.Contains(b, []byte("filename*0*=utf-8''%D0%94")) || !bytes.Contains(b, []byte("; filename*1*=")) {
			t.Errorf("no RFC 2231 continuation:\n%s", b)
		}
		strictRead(t, b, e.Subject, e.From.Name, e.Attachments[0].Filename)
		got, err := Parse(b, 1<<20)
		if err != nil || len(got.Attachments) != 1 || got.Attachments[0].Filename != e.Attachments[0].Filename {
			t.Errorf("read back %+v, %v", got, err)
		}
	})
}

// BenchmarkBuild is what a submit spends building its message, as P3's submits (one recipient,
// a text body, from a shared mailbox on behalf of its user): `go test -run '^$' -bench Build
// -benchmem ./internal/message/`.
func BenchmarkBuild(b *testing.B) {
	e := &Email{
		MessageID: "0193b0f2-7c1e-7000-8000-000000000001@kanzlei.example", Date: date,
		From:    Address{Name: "Kanzlei Muster", Address: "info@kanzlei.example"},
		Sender:  &Address{Name: "Eva Berger", Address: "eva@kanzlei.example"},
		To:      []Address{{Address: "mandant@example.com"}},
		Subject: "Ihre Akte 4711", Text: strings.Repeat("Sehr geehrte Damen und Herren, anbei die Unterlagen.\n", 16),
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Build(e); err != nil {
			b.Fatal(err)
		}
	}
}
