package tracker

import (
	"bufio"
	"bytes"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/postamt/postamt/internal/errs"
)

// Input limits. Every header a caller sends is bounded so one sent item cannot bloat Redis or
// the evaluation.
const (
	// MaxHeaderBytes bounds a raw header section.
	MaxHeaderBytes = 64 << 10
	// MaxRecipients bounds To, Cc and Bcc together.
	MaxRecipients = 1000
	// MaxReferences bounds the References kept (the newest ones).
	MaxReferences = 50
	maxMessageID  = 995
	maxSubject    = 998
	maxThreadID   = 256
	maxAddressLen = 254
)

// ParseHeaders reads a sent item's RFC 5322 header section (a body after the blank line is
// ignored) into a Message. field is the request field the headers came in, so violations name
// it ("sent_item.raw_headers") or one header in it ("sent_item.raw_headers.Message-ID").
// Message-ID and From are required; the addresses must parse.
func ParseHeaders(field string, raw []byte) (*Message, error) {
	var v errs.Violations
	switch {
	case len(raw) == 0:
		v.Add(field, "is required")
	case len(raw) > MaxHeaderBytes && !bytes.Contains(raw[:MaxHeaderBytes], []byte("\n\n")) && !bytes.Contains(raw[:MaxHeaderBytes], []byte("\r\n\r\n")):
		v.Addf(field, "the header section must be at most %d bytes", MaxHeaderBytes)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	if !bytes.Contains(raw, []byte("\n\n")) && !bytes.Contains(raw, []byte("\r\n\r\n")) {
		raw = append(bytes.TrimRight(raw, "\r\n"), "\r\n\r\n"...)
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return nil, errs.Invalid(field, "is not an RFC 5322 header section: "+err.Error())
	}
	return FromHeader(field, mail.Header{Header: message.Header{Header: h}})
}

// FromHeader reads a parsed header into a Message, checking it as ParseHeaders does; the SMTP
// journaling endpoint calls it with the header go-message read from a journal copy.
func FromHeader(field string, h mail.Header) (*Message, error) {
	var v errs.Violations
	name := func(hdr string) string { return field + "." + hdr }
	m := &Message{}

	id, err := h.MessageID()
	switch {
	case err != nil:
		v.Add(name("Message-ID"), "must be one <id-left@id-right>")
	case id == "":
		v.Add(name("Message-ID"), "is required")
	default:
		m.MessageID = id
		checkMsgID(&v, name("Message-ID"), id)
	}

	from, err := h.AddressList("From")
	switch {
	case err != nil:
		v.Add(name("From"), "must be an address list")
	case len(from) == 0:
		v.Add(name("From"), "is required")
	default:
		m.From = lowerAddress(from[0].Address)
		checkAddr(&v, name("From"), m.From)
	}
	n := 0
	for _, rc := range []struct {
		hdr string
		dst *[]string
	}{{"To", &m.To}, {"Cc", &m.Cc}, {"Bcc", &m.Bcc}} {
		list, err := h.AddressList(rc.hdr)
		if err != nil {
			v.Add(name(rc.hdr), "must be an address list")
			continue
		}
		for _, a := range list {
			addr := lowerAddress(a.Address)
			if addr == "" {
				continue // a group without members
			}
			checkAddr(&v, name(rc.hdr), addr)
			*rc.dst = append(*rc.dst, addr)
		}
		n += len(*rc.dst)
	}
	if n > MaxRecipients {
		v.Addf(field, "must have at most %d recipients", MaxRecipients)
	}

	subj, err := h.Subject()
	if err != nil {
		// An unknown charset: the raw value is the best there is, and smart matching still works.
		subj = h.Get("Subject")
	}
	m.Subject = subj
	checkText(&v, name("Subject"), subj, maxSubject)

	if h.Has("Date") {
		d, err := h.Date()
		if err != nil {
			v.Add(name("Date"), "must be an RFC 5322 date")
		}
		m.SentAt = d.UTC()
	}

	irt, err := h.MsgIDList("In-Reply-To")
	if err != nil {
		v.Add(name("In-Reply-To"), "must be a list of <id-left@id-right>")
	}
	if len(irt) > 0 {
		// Several are allowed by RFC 5322 but mean nothing here; the first is the parent.
		m.InReplyTo = irt[0]
		checkMsgID(&v, name("In-Reply-To"), m.InReplyTo)
	}
	refs, err := h.MsgIDList("References")
	if err != nil {
		v.Add(name("References"), "must be a list of <id-left@id-right>")
	}
	if len(refs) > MaxReferences {
		refs = refs[len(refs)-MaxReferences:]
	}
	for _, r := range refs {
		checkMsgID(&v, name("References"), r)
	}
	m.References = refs
	if err := v.Err(); err != nil {
		return nil, err
	}
	return m, nil
}

// lowerAddress folds an address for comparison: addresses are matched case-insensitively.
func lowerAddress(a string) string { return strings.ToLower(strings.TrimSpace(a)) }

// NormalizeAddress is the form addresses are indexed and compared in.
func NormalizeAddress(a string) string { return lowerAddress(a) }

// NormalizeMessageID strips angle brackets and space, the form Message-IDs are stored in.
func NormalizeMessageID(id string) string {
	return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(id), "<"), ">")
}

func checkMsgID(v *errs.Violations, field, id string) {
	switch {
	case id == "":
		v.Add(field, "must not be empty")
	case len(id) > maxMessageID:
		v.Addf(field, "must be at most %d bytes", maxMessageID)
	case strings.IndexFunc(id, func(r rune) bool { return r <= ' ' || r == '<' || r == '>' || r == 0x7f }) >= 0:
		v.Add(field, "must not contain spaces, control characters or angle brackets")
	}
}

func checkAddr(v *errs.Violations, field, a string) {
	switch {
	case len(a) > maxAddressLen:
		v.Addf(field, "addresses must be at most %d bytes", maxAddressLen)
	case !strings.Contains(a, "@") || strings.IndexFunc(a, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0:
		v.Add(field, "must be plain email addresses")
	}
}

func checkText(v *errs.Violations, field, s string, max int) {
	switch {
	case !utf8.ValidString(s):
		v.Add(field, "must be valid UTF-8")
	case utf8.RuneCountInString(s) > max:
		v.Addf(field, "must be at most %d characters", max)
	case strings.IndexFunc(s, func(r rune) bool { return unicode.IsControl(r) && r != '\t' }) >= 0:
		v.Add(field, "must not contain control characters such as CR or LF")
	}
}

// stamp is the time a decision uses for a message without a Date.
func stamp(m *Message, now time.Time) {
	if m.SentAt.IsZero() {
		m.SentAt = now
	}
}

// Check normalises and checks a message that did not come as raw headers (the outbox's
// EmailSent): Message-IDs without brackets, addresses in lower case, and the same limits as
// ParseHeaders. Violations name the message's fields (message_id, to, ...).
func Check(m *Message) error {
	var v errs.Violations
	m.MessageID = NormalizeMessageID(m.MessageID)
	checkMsgID(&v, "message_id", m.MessageID)
	checkID(&v, "mailbox_id", m.MailboxID)
	if m.SenderUser != "" {
		checkID(&v, "sender_user_id", m.SenderUser)
	}
	m.From = lowerAddress(m.From)
	checkAddr(&v, "from_address", m.From)
	for _, l := range []struct {
		field string
		list  []string
	}{{"to", m.To}, {"cc", m.Cc}, {"bcc", m.Bcc}} {
		for i := range l.list {
			l.list[i] = lowerAddress(l.list[i])
			checkAddr(&v, l.field, l.list[i])
		}
	}
	if len(m.To)+len(m.Cc)+len(m.Bcc) > MaxRecipients {
		v.Addf("to", "must have at most %d recipients", MaxRecipients)
	}
	checkText(&v, "subject", m.Subject, maxSubject)
	if m.RegardingRecordID != "" {
		checkID(&v, "regarding_record_id", m.RegardingRecordID)
	}
	if m.InReplyTo != "" {
		m.InReplyTo = NormalizeMessageID(m.InReplyTo)
		checkMsgID(&v, "in_reply_to", m.InReplyTo)
	}
	if len(m.References) > MaxReferences {
		m.References = m.References[len(m.References)-MaxReferences:]
	}
	for i := range m.References {
		m.References[i] = NormalizeMessageID(m.References[i])
		checkMsgID(&v, "references", m.References[i])
	}
	if len(m.ThreadID) > maxThreadID {
		v.Addf("conversation_id", "must be at most %d characters", maxThreadID)
	}
	return v.Err()
}
