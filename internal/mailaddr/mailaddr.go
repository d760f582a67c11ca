// Package mailaddr is the one check of an email address the API takes as an identity (a From
// address, a recipient, a mailbox's or a user's address), so that mailbox's CheckSend and the
// outbox's SubmitEmail accept and refuse the same strings: a plain addr-spec such as
// info@kanzlei.example, with no display name, no surrounding space and no CR, LF or other control
// character that could end up in a header.
package mailaddr

import (
	"net/mail"
	"strings"
	"unicode"

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
// without control characters or surrounding space; an empty a is a violation ("is required").
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
	}
	p, err := mail.ParseAddress(a)
	if err != nil || p.Name != "" || p.Address != a || !strings.Contains(a, "@") {
		v.Add(field, "must be a plain email address such as info@kanzlei.example")
	}
}
