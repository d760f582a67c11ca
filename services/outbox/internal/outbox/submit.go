package outbox

import (
	"fmt"
	"strconv"
	"strings"
	"time"
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

// Bounds of the other header-bound fields of a submission, the same for every deployment.
const (
	// MaxIDLen bounds the idempotency key, the work item's id and team, and the conversation id.
	MaxIDLen = 128
	// MaxMessageIDLen bounds In-Reply-To, each of References and an imported Message-ID: with
	// its angle brackets it fits one line of "In-Reply-To: " (RFC 5322's 998 octets), where a
	// header cannot be folded.
	MaxMessageIDLen = 980
	// MaxReferences bounds References.
	MaxReferences = 100
	// MaxFilenameLen bounds an attachment's file name, content type and Content-ID.
	MaxFilenameLen = 255
)

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
	// WorkItemID and WorkItemTeam are the work item's id and team; ConversationID the product's
	// thread. They travel in events to the tracker and into views.
	WorkItemID, WorkItemTeam string
	ConversationID           string
}

// AttachmentInput is an attachment as submitted.
type AttachmentInput struct {
	Filename    string
	ContentType string
	ContentID   string
	Size        int64
}

// ValidateSubmission checks everything about a submission that does not need state: addresses,
// header-bound text by the one line rule (errs.Violations.Line: no CR, LF, NUL or other control
// character), counts and sizes, and the schedule. All field problems are reported
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
	v.Line("subject", s.Subject, l.MaxSubjectRunes)
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
		if v.Line(f+".filename", a.Filename, MaxFilenameLen) && (a.Filename == "" || strings.ContainsAny(a.Filename, `/\`)) {
			v.Add(f+".filename", "is required and must not contain path separators")
		}
		v.Line(f+".content_type", a.ContentType, MaxFilenameLen)
		v.Line(f+".content_id", a.ContentID, MaxFilenameLen)
		size += a.Size
	}
	v.Line("idempotency_key", s.IdempotencyKey, MaxIDLen)
	if s.InReplyTo != "" {
		checkMessageID(&v, "in_reply_to", s.InReplyTo)
	}
	if len(s.References) > MaxReferences {
		v.Addf("references", "must hold at most %d values", MaxReferences)
	} else {
		for i, r := range s.References {
			checkMessageID(&v, "references["+strconv.Itoa(i)+"]", r)
		}
	}
	v.Line("work_item.id", s.WorkItemID, MaxIDLen)
	v.Line("work_item.team_id", s.WorkItemTeam, MaxIDLen)
	v.Line("conversation_id", s.ConversationID, MaxIDLen)
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

// checkMessageID accepts a Message-ID without angle brackets as In-Reply-To and References carry
// it: RFC 5322's msg-id, id-left@id-right, in ASCII (the message stays 7-bit), as go-message
// reads it back. Anything else makes the sent message's headers unreadable: the tracker then
// refuses its copy from a sent folder or a journal, and refused the outbox's own event for a
// space or an empty id.
func checkMessageID(v *errs.Violations, field, id string) {
	switch {
	case id == "":
		v.Add(field, "must not be empty")
	case len(id) > MaxMessageIDLen:
		v.Addf(field, "must be at most %d bytes", MaxMessageIDLen)
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
