// Package mailaddr is the one check of an email address the API takes as an identity (a From
// address, a recipient, a mailbox's or a user's address), so that mailbox's CheckSend and the
// outbox's SubmitEmail accept and refuse the same strings: a plain addr-spec such as
// info@kanzlei.example, with no display name, no space (ASCII or Unicode) and no CR, LF or other
// control character that could end up in a header.
package mailaddr

import (
	"mime"
	"net/mail"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/postamt/postamt/internal/errs"
)

// MaxLen is the longest address accepted, in bytes (RFC 5321's path limit less the brackets).
const MaxLen = 254

// Valid reports whether a is a plain addr-spec as Check accepts it.
func Valid(a string) bool {
	var v errs.Violations
	Check(&v, "address", a)
	return len(v) == 0
}

// Check records a violation of field unless a is a plain addr-spec of at most MaxLen bytes
// without control characters or spaces; an empty a is a violation ("is required").
func Check(v *errs.Violations, field, a string) {
	switch {
	case a == "":
		v.Add(field, "is required")
		return
	case len(a) > MaxLen:
		v.Addf(field, "must be at most %d bytes", MaxLen)
		return
	case strings.ContainsFunc(a, unicode.IsControl):
		v.Add(field, "must not contain CR, LF or other control characters")
		return
	case strings.ContainsFunc(a, unicode.IsSpace):
		// net/mail takes any non-ASCII rune as an atom's, spaces such as U+00A0 and the line
		// separator U+2028 (a line break to some readers) too.
		v.Add(field, "must not contain spaces")
		return
	}
	p, err := mail.ParseAddress(a)
	if err != nil || p.Name != "" || p.Address != a || !strings.Contains(a, "@") {
		v.Add(field, "must be a plain email address such as info@kanzlei.example")
	}
}

// Format writes a mailbox as it goes into an address header ("Kanzlei Muster
// <info@kanzlei.example>"), as net/mail's Address.String does, with one repair: String encodes a
// non-ASCII name as Q encoded words and leaves a backslash in them as it is, which RFC 2047 §5
// forbids there and which net/mail itself (and go-message) then cannot parse, so such a name is
// written as B encoded words. An empty name gives "<address>"; a name with CR or LF is the
// caller's to refuse.
func Format(name, address string) string {
	a := &mail.Address{Name: name, Address: address}
	if strings.ContainsRune(name, '\\') && strings.ContainsFunc(name, needsEncoding) {
		return mime.BEncoding.Encode("utf-8", name) + " " + (&mail.Address{Address: address}).String()
	}
	return a.String()
}

// needsEncoding reports whether String writes a name holding r as encoded words rather than a
// quoted string: r is not printable ASCII, space or tab.
func needsEncoding(r rune) bool { return r >= utf8.RuneSelf || r < ' ' && r != '\t' || r == 0x7f }
