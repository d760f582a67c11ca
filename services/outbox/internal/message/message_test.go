package message

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-message/mail"
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

// FuzzBuild: whatever the subject, names and filename, Build either refuses or produces a
// message that parses back with the same subject and no header the caller did not ask for.
func FuzzBuild(f *testing.F) {
	f.Add("Termin", "Kanzlei", "a.pdf")
	f.Add("Hi\r\nBcc: x@y", "N\"ame", "b\n.pdf")
	f.Add("=?utf-8?q?x?=", "Ä Ö Ü", "ü.txt")
	f.Fuzz(func(t *testing.T, subject, name, filename string) {
		e := base()
		e.Subject, e.From.Name = subject, name
		e.Attachments = []Attachment{{Filename: filename, Content: []byte("x")}}
		b, err := Build(e)
		if err != nil {
			return
		}
		r := parse(t, b)
		allowed := map[string]bool{"Date": true, "Message-Id": true, "From": true, "To": true, "Subject": true, "Mime-Version": true, "Content-Type": true}
		fields := r.Header.Fields()
		for fields.Next() {
			if !allowed[fields.Key()] {
				t.Fatalf("unexpected header %q from subject %q name %q", fields.Key(), subject, name)
			}
		}
		// A subject that itself looks like an RFC 2047 encoded word ("=?...?=") is decoded by every
		// reader; that is mail's ambiguity, not an injection, so it is not compared. Surrounding
		// whitespace is not part of a header value.
		if got, err := r.Header.Subject(); err == nil && strings.ToValidUTF8(subject, "\uFFFD") == subject &&
			!strings.Contains(subject, "=?") && strings.TrimSpace(got) != strings.TrimSpace(subject) {
			t.Fatalf("subject %q came back as %q", subject, got)
		}
	})
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
