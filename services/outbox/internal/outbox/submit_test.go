package outbox

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/errs"
)

var now = time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)

func valid() *Submission {
	return &Submission{From: "info@kanzlei.example", To: []string{"client@example.com"}, Subject: "Termin", Text: "Hallo"}
}

func fields(err error) []string {
	var e *errs.Error
	if !errors.As(err, &e) {
		return nil
	}
	var out []string
	for _, v := range e.Violations {
		out = append(out, v.Field)
	}
	return out
}

func TestValidateSubmission(t *testing.T) {
	if err := ValidateSubmission(valid(), DefaultLimits(), now); err != nil {
		t.Fatalf("a valid submission: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(s *Submission)
		field  string // an InvalidArgument violation naming this field
		kind   errs.Kind
	}{
		{"no recipients", func(s *Submission) { s.To = nil }, "to", errs.KindInvalid},
		{"bad recipient", func(s *Submission) { s.Cc = []string{"ok@example.com", "not an address"} }, "cc[1]", errs.KindInvalid},
		{"recipient with a display name", func(s *Submission) { s.To = []string{"X <x@example.com>"} }, "to[0]", errs.KindInvalid},
		{"CR LF in a recipient", func(s *Submission) { s.Bcc = []string{"x@example.com\r\nBcc: y@example.com"} }, "bcc[0]", errs.KindInvalid},
		{"CR LF in the subject", func(s *Submission) { s.Subject = "Hi\r\nBcc: victim@example.com" }, "subject", errs.KindInvalid},
		{"no body", func(s *Submission) { s.Text = "" }, "text_body", errs.KindInvalid},
		{"bad from", func(s *Submission) { s.From = "info" }, "from_address", errs.KindInvalid},
		{"filename with a path", func(s *Submission) { s.Attachments = []AttachmentInput{{Filename: "../etc/passwd", Size: 1}} }, "attachments[0].filename", errs.KindInvalid},
		{"send_at long past", func(s *Submission) { s.SendAt = now.Add(-time.Hour) }, "send_at", errs.KindInvalid},
		{"send_at beyond the horizon", func(s *Submission) { s.SendAt = now.Add(400 * 24 * time.Hour) }, "send_at", errs.KindInvalid},
		{"too many recipients in to", func(s *Submission) { s.To = slices.Repeat([]string{"a@example.com"}, 501) }, "to", errs.KindInvalid},
		{"too many recipients, passed in bcc", func(s *Submission) { s.Bcc = slices.Repeat([]string{"a@example.com"}, 500) }, "bcc", errs.KindInvalid},
		{"too many attachments", func(s *Submission) {
			s.Attachments = slices.Repeat([]AttachmentInput{{Filename: "a.txt", Size: 1}}, DefaultLimits().MaxAttachments+1)
		}, "attachments", errs.KindInvalid},
		{"too many references", func(s *Submission) { s.References = slices.Repeat([]string{"a@example.com"}, MaxReferences+1) }, "references", errs.KindInvalid},
		{"NUL in a reference", func(s *Submission) { s.References = []string{"a@example.com", "b\x00@example.com"} }, "references[1]", errs.KindInvalid},
		{"LF in the work item id", func(s *Submission) { s.WorkItemID = "case\n1" }, "work_item.id", errs.KindInvalid},
		{"CR in the conversation id", func(s *Submission) { s.ConversationID = "c\r1" }, "conversation_id", errs.KindInvalid},
		{"NUL in a Content-ID", func(s *Submission) {
			s.Attachments = []AttachmentInput{{Filename: "a.png", ContentID: "a\x00b", Size: 1}}
		}, "attachments[0].content_id", errs.KindInvalid},
		// In-Reply-To and References take Message-IDs as the message and the tracker read them:
		// the tracker refused an event with a space or an empty id in them, and non-ASCII made
		// the header 8-bit, an id without "@" unreadable (found by FuzzBuild).
		{"in_reply_to with a space", func(s *Submission) { s.InReplyTo = "a b@client.example" }, "in_reply_to", errs.KindInvalid},
		{"in_reply_to with angle brackets", func(s *Submission) { s.InReplyTo = "<a@client.example>" }, "in_reply_to", errs.KindInvalid},
		{"in_reply_to not ASCII", func(s *Submission) { s.InReplyTo = "ä@client.example" }, "in_reply_to", errs.KindInvalid},
		{"in_reply_to without @", func(s *Submission) { s.InReplyTo = "abc" }, "in_reply_to", errs.KindInvalid},
		{"in_reply_to with a colon", func(s *Submission) { s.InReplyTo = "a:b@client.example" }, "in_reply_to", errs.KindInvalid},
		{"in_reply_to too long for a line", func(s *Submission) { s.InReplyTo = strings.Repeat("a", MaxMessageIDLen) + "@x" }, "in_reply_to", errs.KindInvalid},
		{"an empty reference", func(s *Submission) { s.References = []string{"a@client.example", ""} }, "references[1]", errs.KindInvalid},
		{"oversize", func(s *Submission) { s.Attachments = []AttachmentInput{{Filename: "big.bin", Size: 26 << 20}} }, "", errs.KindResourceExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := valid()
			tt.mutate(s)
			err := ValidateSubmission(s, DefaultLimits(), now)
			if got := errs.KindOf(err); got != tt.kind {
				t.Fatalf("kind = %v (%v), want %v", got, err, tt.kind)
			}
			if tt.field != "" && !slices.Contains(fields(err), tt.field) {
				t.Errorf("violations %v do not name %q", fields(err), tt.field)
			}
		})
	}
	t.Run("a reply's Message-IDs are accepted", func(t *testing.T) {
		s := valid()
		s.InReplyTo = "CAF=x+y_z.1234$abc@mail.gmail.com"
		s.References = []string{"first@client.example", s.InReplyTo, "1.2@[127.0.0.1]", strings.Repeat("a", MaxMessageIDLen-2) + "@x"}
		if err := ValidateSubmission(s, DefaultLimits(), now); err != nil {
			t.Error(err)
		}
	})
	t.Run("send_at a moment ago is accepted (clock skew)", func(t *testing.T) {
		s := valid()
		s.SendAt = now.Add(-time.Minute)
		if err := ValidateSubmission(s, DefaultLimits(), now); err != nil {
			t.Error(err)
		}
	})
	t.Run("every bad field at once", func(t *testing.T) {
		s := valid()
		s.From, s.Subject, s.To = "x", "a\nb", []string{"y"}
		if got := fields(ValidateSubmission(s, DefaultLimits(), now)); len(got) != 3 {
			t.Errorf("violations = %v, want three", got)
		}
	})
}
