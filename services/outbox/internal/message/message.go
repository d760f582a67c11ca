// Package message builds an email's RFC 5322 message once, at submit, with go-message: never by
// string concatenation. The Message-ID is chosen by the caller and kept for every attempt, so a
// resend after an unknown outcome is recognisable as the same message.
package message

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-message/mail"

	"github.com/postamt/postamt/internal/mailaddr"
)

// Address is a mailbox with an optional display name.
type Address struct {
	Name    string
	Address string
}

// Attachment is a file part.
type Attachment struct {
	Filename    string
	ContentType string
	Content     []byte
}

// Email is what the builder needs. Bcc recipients are not here: they are envelope recipients only.
type Email struct {
	MessageID   string // without angle brackets
	Date        time.Time
	From        Address
	Sender      *Address // set for on-behalf mail
	To, Cc      []Address
	Subject     string
	Text, HTML  string
	Attachments []Attachment
	InReplyTo   string
	References  []string
}

// ErrHeaderInjection reports a CR or LF in a value that becomes a header: it would let the
// caller add headers (or recipients) of their own.
var ErrHeaderInjection = errors.New("CR or LF in a header value")

// injected reports whether any of vs holds a CR or LF.
func injected(vs ...string) bool {
	for _, v := range vs {
		if strings.ContainsAny(v, "\r\n") {
			return true
		}
	}
	return false
}

// check refuses header values that would inject headers. It runs on every submit, so it
// allocates only for what it refuses (a field's name is built then).
func (e *Email) check() error {
	var errList []error
	bad := func(field string) { errList = append(errList, fmt.Errorf("%s: %w", field, ErrHeaderInjection)) }
	if injected(e.MessageID) {
		bad("message_id")
	}
	if injected(e.Subject) {
		bad("subject")
	}
	if injected(e.From.Name, e.From.Address) {
		bad("from")
	}
	if e.Sender != nil && injected(e.Sender.Name, e.Sender.Address) {
		bad("sender")
	}
	for i, a := range e.To {
		if injected(a.Name, a.Address) {
			bad(fmt.Sprintf("recipient[%d]", i))
		}
	}
	for i, a := range e.Cc {
		if injected(a.Name, a.Address) {
			bad(fmt.Sprintf("recipient[%d]", len(e.To)+i))
		}
	}
	for i, a := range e.Attachments {
		if injected(a.Filename) {
			bad(fmt.Sprintf("attachments[%d].filename", i))
		}
		if injected(a.ContentType) {
			bad(fmt.Sprintf("attachments[%d].content_type", i))
		}
	}
	if injected(e.InReplyTo) {
		bad("in_reply_to")
	}
	for i, r := range e.References {
		if injected(r) {
			bad(fmt.Sprintf("references[%d]", i))
		}
	}
	if e.MessageID == "" || e.From.Address == "" {
		errList = append(errList, errors.New("message id and from are required"))
	}
	return errors.Join(errList...)
}

// addressList is the value of an address header. Not go-message's SetAddressList: it writes a
// name with net/mail's Address.String, which leaves a backslash of a non-ASCII name inside a Q
// encoded word where no reader (net/mail, go-message) can parse the header back;
// mailaddr.Format, which mailbox's From values use too, does not.
func addressList(as ...Address) string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = mailaddr.Format(a.Name, a.Address)
	}
	return strings.Join(out, ", ")
}

// maxLine is the longest line RFC 5322 §2.1.1 allows, CRLF not counted.
const maxLine = 998

// subjectValue is the Subject header's value: go-message's encoding (Q encoded words for
// non-ASCII text, ASCII as it is), except for two ASCII subjects it would not give back: one
// holding "=?", which every reader decodes as an encoded word it never was, and one with a run of
// characters without a space too long for a line beside "Subject: ", which go-message folds by
// inserting a space. Those are written as B encoded words, which readers join back without the
// spaces between them.
func subjectValue(s string) string {
	v := mime.QEncoding.Encode("utf-8", s)
	if v != s || (!strings.Contains(s, "=?") && longestRun(s) <= maxLine-len("Subject: ")) {
		return v
	}
	var words []string // s is ASCII here: any cut is between characters
	for len(s) > 0 {
		n := min(len(s), 45) // 60 base64 characters: a word of 72, within RFC 2047's 75
		words = append(words, "=?utf-8?b?"+base64.StdEncoding.EncodeToString([]byte(s[:n]))+"?=")
		s = s[n:]
	}
	return strings.Join(words, " ")
}

// longestRun is the length of the longest run of s without a space or tab, where go-message
// cannot fold the header line.
func longestRun(s string) int {
	longest := 0
	for _, w := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == '\t' }) {
		longest = max(longest, len(w))
	}
	return longest
}

// Build renders e: a single part for text-only or HTML-only mail, multipart/alternative for both,
// and multipart/mixed when there are attachments. Lines end in CRLF.
func Build(e *Email) ([]byte, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	var h mail.Header
	h.SetDate(e.Date)
	h.SetMessageID(e.MessageID)
	h.Set("From", addressList(e.From))
	if e.Sender != nil {
		h.Set("Sender", addressList(*e.Sender))
	}
	if len(e.To) > 0 {
		h.Set("To", addressList(e.To...))
	}
	if len(e.Cc) > 0 {
		h.Set("Cc", addressList(e.Cc...))
	}
	h.Set("Subject", subjectValue(e.Subject))
	if e.InReplyTo != "" {
		h.SetMsgIDList("In-Reply-To", []string{e.InReplyTo})
	}
	if len(e.References) > 0 {
		h.SetMsgIDList("References", e.References)
	}
	h.Set("MIME-Version", "1.0")

	var buf bytes.Buffer
	parts := bodyParts(e)
	if len(e.Attachments) == 0 && len(parts) == 1 {
		h.SetContentType(parts[0].contentType, map[string]string{"charset": "utf-8"})
		w, err := mail.CreateSingleInlineWriter(&buf, h)
		if err != nil {
			return nil, fmt.Errorf("build message: %w", err)
		}
		if err := writeClose(w, parts[0].body); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	mw, err := mail.CreateWriter(&buf, h)
	if err != nil {
		return nil, fmt.Errorf("build message: %w", err)
	}
	iw, err := mw.CreateInline()
	if err != nil {
		return nil, fmt.Errorf("build message: %w", err)
	}
	for _, p := range parts {
		var ph mail.InlineHeader
		ph.SetContentType(p.contentType, map[string]string{"charset": "utf-8"})
		w, err := iw.CreatePart(ph)
		if err != nil {
			return nil, fmt.Errorf("build message: %w", err)
		}
		if err := writeClose(w, p.body); err != nil {
			return nil, err
		}
	}
	if err := iw.Close(); err != nil {
		return nil, fmt.Errorf("build message: %w", err)
	}
	for _, a := range e.Attachments {
		var ah mail.AttachmentHeader
		ah.SetContentType(mediaType(a.ContentType))
		ah.Set("Content-Disposition", contentDisposition(a.Filename))
		w, err := mw.CreateAttachment(ah)
		if err != nil {
			return nil, fmt.Errorf("build message: %w", err)
		}
		if err := writeClose(w, string(a.Content)); err != nil {
			return nil, err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, fmt.Errorf("build message: %w", err)
	}
	return buf.Bytes(), nil
}

// mediaType splits an attachment's content type into the type and its parameters, as
// SetContentType takes them: given "text/csv; charset=utf-8" as the type it writes an empty
// Content-Type, and readers take the file for text/plain. One that does not parse as
// type/subtype, or is empty, is application/octet-stream.
func mediaType(ct string) (string, map[string]string) {
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || !strings.Contains(mt, "/") {
		return "application/octet-stream", nil
	}
	return mt, params
}

// contentDisposition is an attachment's Content-Disposition. Not go-message's SetFilename: it
// puts an RFC 2047 encoded word inside the quoted parameter, which RFC 2047 §5 forbids and strict
// readers show raw. mime.FormatMediaType writes a non-ASCII name as one RFC 2231 parameter
// (filename*, percent-encoded UTF-8), an ASCII one as it is. A parameter too long for a line of
// its own (a long non-ASCII name: up to 12 octets a character), which go-message can only fold by
// inserting a space into it, is written as RFC 2231 continuations (filename*0*, filename*1*,
// ...), each short.
func contentDisposition(filename string) string {
	v := mime.FormatMediaType("attachment", map[string]string{"filename": filename})
	if param, _ := strings.CutPrefix(v, "attachment; "); len(" ")+len(param) <= maxLine {
		return v
	}
	var b strings.Builder
	b.WriteString("attachment")
	for i := 0; len(filename) > 0; i++ {
		n := min(len(filename), 20) // at most 60 octets encoded
		for n < len(filename) && n > 1 && !utf8.RuneStart(filename[n]) {
			n-- // a character stays in one piece
		}
		fmt.Fprintf(&b, "; filename*%d*=", i)
		if i == 0 {
			b.WriteString("utf-8''")
		}
		for _, c := range []byte(filename[:n]) {
			if isAttrChar(c) {
				b.WriteByte(c)
			} else {
				fmt.Fprintf(&b, "%%%02X", c)
			}
		}
		filename = filename[n:]
	}
	return b.String()
}

// isAttrChar reports whether c may stand for itself in an RFC 2231 extended value (RFC 5987's
// attr-char).
func isAttrChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0
}

type part struct{ contentType, body string }

func bodyParts(e *Email) []part {
	var out []part
	if e.Text != "" || e.HTML == "" {
		out = append(out, part{"text/plain", e.Text})
	}
	if e.HTML != "" {
		out = append(out, part{"text/html", e.HTML})
	}
	return out
}

func writeClose(w io.WriteCloser, s string) error {
	if _, err := io.WriteString(w, s); err != nil {
		return fmt.Errorf("build message: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("build message: %w", err)
	}
	return nil
}

// Parsed is what Parse reads back from a built message: the bodies and attachments the API
// returns with an email, from the one copy that is sent.
type Parsed struct {
	Text, HTML  string
	Attachments []Attachment
}

// Parse reads a message Build produced. Parts it does not know (nested multiparts of other
// producers) are skipped, not an error.
func Parse(raw []byte, maxBytes int64) (*Parsed, error) {
	r, err := mail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("parse message: %w", err)
	}
	defer r.Close() //nolint:errcheck // reads raw from memory: nothing to flush, no error to act on
	out := &Parsed{}
	for {
		p, err := r.NextPart()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("parse message: %w", err)
		}
		b, err := io.ReadAll(io.LimitReader(p.Body, maxBytes))
		if err != nil {
			return nil, fmt.Errorf("parse message: %w", err)
		}
		switch h := p.Header.(type) {
		case *mail.InlineHeader:
			ct, _, _ := h.ContentType()
			if ct == "text/html" {
				out.HTML = string(b)
			} else if ct == "text/plain" {
				out.Text = string(b)
			}
		case *mail.AttachmentHeader:
			name, _ := h.Filename()
			ct, _, _ := h.ContentType()
			out.Attachments = append(out.Attachments, Attachment{Filename: name, ContentType: ct, Content: b})
		}
	}
}
