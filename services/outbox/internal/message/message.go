// Package message builds an email's RFC 5322 message once, at submit, with go-message: never by
// string concatenation. The Message-ID is chosen by the caller and kept for every attempt, so a
// resend after an unknown outcome is recognisable as the same message.
package message

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
	"time"

	"github.com/emersion/go-message/mail"
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

func checkHeader(field, v string) error {
	if strings.ContainsAny(v, "\r\n") {
		return fmt.Errorf("%s: %w", field, ErrHeaderInjection)
	}
	return nil
}

func (e *Email) check() error {
	var errList []error
	add := func(field, v string) { errList = append(errList, checkHeader(field, v)) }
	add("message_id", e.MessageID)
	add("subject", e.Subject)
	add("from", e.From.Name+e.From.Address)
	if e.Sender != nil {
		add("sender", e.Sender.Name+e.Sender.Address)
	}
	for i, a := range append(append([]Address(nil), e.To...), e.Cc...) {
		add(fmt.Sprintf("recipient[%d]", i), a.Name+a.Address)
	}
	for i, a := range e.Attachments {
		add(fmt.Sprintf("attachments[%d].filename", i), a.Filename)
		add(fmt.Sprintf("attachments[%d].content_type", i), a.ContentType)
	}
	add("in_reply_to", e.InReplyTo)
	for i, r := range e.References {
		add(fmt.Sprintf("references[%d]", i), r)
	}
	if e.MessageID == "" || e.From.Address == "" {
		errList = append(errList, errors.New("message id and from are required"))
	}
	return errors.Join(errList...)
}

func list(as []Address) []*mail.Address {
	out := make([]*mail.Address, len(as))
	for i, a := range as {
		out[i] = &mail.Address{Name: a.Name, Address: a.Address}
	}
	return out
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
	h.SetAddressList("From", []*mail.Address{{Name: e.From.Name, Address: e.From.Address}})
	if e.Sender != nil {
		h.SetAddressList("Sender", []*mail.Address{{Name: e.Sender.Name, Address: e.Sender.Address}})
	}
	if len(e.To) > 0 {
		h.SetAddressList("To", list(e.To))
	}
	if len(e.Cc) > 0 {
		h.SetAddressList("Cc", list(e.Cc))
	}
	h.SetSubject(e.Subject)
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
		ct := a.ContentType
		if ct == "" {
			ct = "application/octet-stream"
		}
		ah.SetContentType(ct, nil)
		// Not go-message's SetFilename: it puts an RFC 2047 encoded word inside the quoted
		// parameter, which RFC 2047 §5 forbids and strict readers show raw. mime.FormatMediaType
		// writes a non-ASCII name as RFC 2231 (filename*=utf-8''...), an ASCII one as it is.
		ah.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": a.Filename}))
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
