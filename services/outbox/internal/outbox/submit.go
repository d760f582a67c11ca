package outbox

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/mailaddr"
)

// Limits bound what one submission may carry. The zero value is not usable; DefaultLimits is.
type Limits struct {
	// MaxRecipients bounds to+cc+bcc together.
	MaxRecipients int
	// MaxMessageBytes bounds bodies plus attachments (the built message is a little larger).
	MaxMessageBytes int64
	// MaxSubjectRunes bounds the subject.
	MaxSubjectRunes int
	// PastTolerance is how far in the past send_at may be (clock skew of the caller); earlier is
	// rejected rather than sent at once, since the caller meant a schedule.
	PastTolerance time.Duration
	// Horizon is how far in the future send_at may be.
	Horizon time.Duration
	// MaxAttachments bounds the number of attachments.
	MaxAttachments int
}

// DefaultLimits returns the documented defaults (25 MiB messages, 500 recipients, a year ahead).
func DefaultLimits() Limits {
	return Limits{
		MaxRecipients:   500,
		MaxMessageBytes: 25 << 20,
		MaxSubjectRunes: 998,
		PastTolerance:   5 * time.Minute,
		Horizon:         366 * 24 * time.Hour,
		MaxAttachments:  100,
	}
}

// Submission is a new email as the caller sent it.
type Submission struct {
	From           string
	To, Cc, Bcc    []string
	Subject        string
	Text, HTML     string
	Attachments    []AttachmentInput
	SendAt         time.Time // zero: after the undo delay
	IdempotencyKey string
	InReplyTo      string
	References     []string
}

// AttachmentInput is an attachment as submitted.
type AttachmentInput struct {
	Filename    string
	ContentType string
	Size        int64
}

// ValidateSubmission checks everything about a submission that does not need state: addresses,
// CR/LF in header fields, counts and sizes, and the schedule. All field problems are reported
// at once (InvalidArgument with one violation per field, named by the request's field paths),
// too many recipients or attachments among them; a message over the size limit is
// ResourceExhausted with reason MESSAGE_SIZE (HTTP 413 at the gateway).
func ValidateSubmission(s *Submission, l Limits, now time.Time) error {
	var v errs.Violations
	checkAddr(&v, "from_address", s.From)
	n := len(s.To) + len(s.Cc) + len(s.Bcc)
	if n == 0 {
		v.Add("to", "at least one recipient (to, cc or bcc) is required")
	}
	for _, rl := range []struct {
		field string
		list  []string
	}{{"to", s.To}, {"cc", s.Cc}, {"bcc", s.Bcc}} {
		for i, a := range rl.list {
			checkAddr(&v, rl.field+"["+strconv.Itoa(i)+"]", a)
		}
	}
	checkHeaderText(&v, "subject", s.Subject, l.MaxSubjectRunes)
	if s.Text == "" && s.HTML == "" {
		v.Add("text_body", "text_body or html_body is required")
	}
	if !utf8.ValidString(s.Text) {
		v.Add("text_body", "must be valid UTF-8")
	}
	if !utf8.ValidString(s.HTML) {
		v.Add("html_body", "must be valid UTF-8")
	}
	size := int64(len(s.Text) + len(s.HTML))
	for i, a := range s.Attachments {
		f := "attachments[" + strconv.Itoa(i) + "]"
		checkHeaderText(&v, f+".filename", a.Filename, 255)
		if a.Filename == "" || strings.ContainsAny(a.Filename, `/\`) {
			v.Add(f+".filename", "is required and must not contain path separators")
		}
		checkHeaderText(&v, f+".content_type", a.ContentType, 255)
		size += a.Size
	}
	if s.IdempotencyKey != "" {
		checkHeaderText(&v, "idempotency_key", s.IdempotencyKey, 128)
	}
	if s.InReplyTo != "" {
		checkMessageID(&v, "in_reply_to", s.InReplyTo)
	}
	for i, r := range s.References {
		checkMessageID(&v, "references["+strconv.Itoa(i)+"]", r)
	}
	if !s.SendAt.IsZero() {
		switch {
		case s.SendAt.Before(now.Add(-l.PastTolerance)):
			v.Addf("send_at", "is more than %s in the past", l.PastTolerance)
		case s.SendAt.After(now.Add(l.Horizon)):
			v.Addf("send_at", "is more than %s ahead", l.Horizon)
		}
	}
	// Too many recipients or attachments is the caller's input to fix, like a bad address, not a
	// quota that waiting restores: INVALID_ARGUMENT naming the field (RESOURCE_EXHAUSTED is
	// retried by clients, HTTP 429).
	if n > l.MaxRecipients {
		v.Addf(overflowField(l.MaxRecipients, s.To, s.Cc, s.Bcc), "to, cc and bcc hold %d recipients together; at most %d", n, l.MaxRecipients)
	}
	if len(s.Attachments) > l.MaxAttachments {
		v.Addf("attachments", "%d attachments; at most %d", len(s.Attachments), l.MaxAttachments)
	}
	if err := v.Err(); err != nil {
		return err
	}
	if size > l.MaxMessageBytes {
		return errs.ResourceExhausted("MESSAGE_SIZE", fmt.Sprintf("%d bytes of content; at most %d", size, l.MaxMessageBytes), 0)
	}
	return nil
}

// overflowField names the recipient list (to, cc, bcc, in that order) in which the count passes
// max: the field the caller must shorten.
func overflowField(max int, to, cc, bcc []string) string {
	switch {
	case len(to) > max:
		return "to"
	case len(to)+len(cc) > max:
		return "cc"
	}
	return "bcc"
}

// checkAddr accepts a plain addr-spec: recipients are identities, and a display name smuggled in
// here would end up in headers unchecked. It is the suite's one address rule (internal/mailaddr),
// which mailbox's CheckSend applies too.
func checkAddr(v *errs.Violations, field, a string) { mailaddr.Check(v, field, a) }

// MaxMessageIDBytes bounds a Message-ID the caller names (in_reply_to, references): with its
// angle brackets it fits one line of "In-Reply-To: " (RFC 5322's 998 octets), where a header
// cannot be folded.
const MaxMessageIDBytes = 980

// checkMessageID accepts a Message-ID without angle brackets as In-Reply-To and References carry
// it: RFC 5322's msg-id, id-left@id-right, in ASCII (the message stays 7-bit), as go-message
// reads it back. Anything else makes the sent message's headers unreadable: the tracker then
// refuses its copy from a sent folder or a journal, and refused the outbox's own event for a
// space or an empty id.
func checkMessageID(v *errs.Violations, field, id string) {
	switch {
	case id == "":
		v.Add(field, "must not be empty")
	case len(id) > MaxMessageIDBytes:
		v.Addf(field, "must be at most %d bytes", MaxMessageIDBytes)
	case !validMessageID(id):
		v.Add(field, "must be a Message-ID without angle brackets, such as 1234.abc@mail.example")
	}
}

// validMessageID reports whether id is id-left "@" id-right: dot-atom text on the left; on the
// right dot-atom text or a [literal]; ASCII only.
func validMessageID(id string) bool {
	left, right, ok := strings.Cut(id, "@")
	if !ok || !isAtomText(left) {
		return false
	}
	if lit, ok := strings.CutPrefix(right, "["); ok {
		lit, ok = strings.CutSuffix(lit, "]")
		return ok && !strings.ContainsFunc(lit, func(r rune) bool { return r <= ' ' || r > '~' || strings.ContainsRune(`[]\<>`, r) })
	}
	return isAtomText(right)
}

// isAtomText reports whether s is one or more of RFC 5322's atext and ".", in ASCII.
func isAtomText(s string) bool {
	return s != "" && !strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r > '~' || strings.ContainsRune(`()<>[]:;@\,"`, r) })
}

// checkHeaderText rejects what would break or extend a header: CR, LF and other control
// characters, invalid UTF-8, and overlong values.
func checkHeaderText(v *errs.Violations, field, s string, maxRunes int) {
	switch {
	case !utf8.ValidString(s):
		v.Add(field, "must be valid UTF-8")
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsControl(r) && r != '\t' }) >= 0:
		v.Add(field, "must not contain CR, LF or other control characters")
	case utf8.RuneCountInString(s) > maxRunes:
		v.Addf(field, "must be at most %d characters", maxRunes)
	}
}
