package tracker

import (
	"bufio"
	"bytes"
	"strings"
	"time"

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
	if err := checkRawBytes(field, raw); err != nil {
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

// checkRawBytes refuses a NUL, or a CR that does not end a line, in the header section of raw:
// RFC 5322 allows neither, and a parser that reads past one takes a value other than the one the
// sender's header holds (an address cut at the CR, a Message-ID with something after it). The
// violation names the header it is in (field + ".Subject"), or field when it is in no header.
func checkRawBytes(field string, raw []byte) error {
	end := len(raw)
	for _, sep := range []string{"\r\n\r\n", "\n\n", "\n\r\n"} {
		if i := bytes.Index(raw, []byte(sep)); i >= 0 && i < end {
			end = i
		}
	}
	for i := 0; i < end; i++ {
		if raw[i] == 0 || raw[i] == '\r' && (i+1 >= len(raw) || raw[i+1] != '\n') {
			return errs.Invalid(field+headerAt(raw, i), "must not contain NUL or a CR that does not end a line")
		}
	}
	return nil
}

// headerAt is ".Name" of the header whose (possibly folded) line holds raw[i], in the spelling
// the other violations use for the headers the tracker reads; empty when the line is no header.
func headerAt(raw []byte, i int) string {
	start := bytes.LastIndexByte(raw[:i], '\n') + 1
	for start > 0 && (raw[start] == ' ' || raw[start] == '\t') { // a folded line: the header above
		start = bytes.LastIndexByte(raw[:start-1], '\n') + 1
	}
	colon := bytes.IndexByte(raw[start:i], ':')
	if colon <= 0 {
		return ""
	}
	name := string(raw[start : start+colon])
	if strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return ""
	}
	for _, known := range []string{"Message-ID", "From", "To", "Cc", "Bcc", "Subject", "Date", "In-Reply-To", "References"} {
		if strings.EqualFold(name, known) {
			return "." + known
		}
	}
	return "." + name
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
	v.Line(name("Subject"), subj, maxSubject)

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

// checkMsgID checks a Message-ID without its angle brackets: one line (errs.Violations.Line),
// and no space or angle bracket either.
func checkMsgID(v *errs.Violations, field, id string) {
	switch {
	case !v.Line(field, id, maxMessageID):
	case id == "":
		v.Add(field, "must not be empty")
	case len(id) > maxMessageID:
		v.Addf(field, "must be at most %d bytes", maxMessageID)
	case strings.IndexFunc(id, func(r rune) bool { return r <= ' ' || r == '<' || r == '>' || r == 0x7f }) >= 0:
		v.Add(field, "must not contain spaces, control characters or angle brackets")
	}
}

// ValidAddress reports whether a normalised address (NormalizeAddress) is one the tracker keeps:
// at most 254 bytes, with an "@", without spaces or control characters.
func ValidAddress(a string) bool {
	var v errs.Violations
	checkAddr(&v, "address", a)
	return len(v) == 0
}

// checkAddr checks an address as the tracker indexes it (lower case): one line
// (errs.Violations.Line) of at most maxAddressLen bytes with an @ and no space.
func checkAddr(v *errs.Violations, field, a string) {
	switch {
	case !v.Line(field, a, maxAddressLen):
	case len(a) > maxAddressLen:
		v.Addf(field, "addresses must be at most %d bytes", maxAddressLen)
	case !strings.Contains(a, "@") || strings.IndexFunc(a, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0:
		v.Add(field, "must be plain email addresses")
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
	v.Line("subject", m.Subject, maxSubject)
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
	v.Line("conversation_id", m.ThreadID, maxThreadID)
	return v.Err()
}
