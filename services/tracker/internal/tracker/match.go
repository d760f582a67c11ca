package tracker

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// tokenLike finds every <prefix>:<digits> in a subject, whatever the prefix: the store looks the
// candidates up in one round trip before the tenant's settings are known, and the rules keep only
// those of the configured shape (acceptsToken).
var tokenLike = regexp.MustCompile(`\b[A-Za-z0-9]{1,10}:[0-9]{4,18}\b`)

// maxTokenCandidates bounds the tokens looked up per subject.
const maxTokenCandidates = 4

// TokenCandidates returns the token-shaped words of a subject, at most a few, last first (a
// token is appended to the end of the subject, and replies keep it there).
func TokenCandidates(subject string) []string {
	if !mayHoldToken(subject) {
		return nil
	}
	var out []string
	for _, m := range tokenLike.FindAllString(subject, 64) {
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	slices.Reverse(out)
	if len(out) > maxTokenCandidates {
		out = out[:maxTokenCandidates]
	}
	return out
}

// mayHoldToken is a cheap test that lets most subjects skip the token expression: a token has a
// colon followed by a digit.
func mayHoldToken(s string) bool {
	for i := strings.IndexByte(s, ':'); i >= 0; {
		if i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9' {
			return true
		}
		j := strings.IndexByte(s[i+1:], ':')
		if j < 0 {
			return false
		}
		i += 1 + j
	}
	return false
}

// FormatToken renders token number n with the tenant's prefix and digits, e.g. CRM:0001001.
func FormatToken(prefix string, digits int, n int64) string {
	return fmt.Sprintf("%s:%0*d", prefix, digits, n)
}

// acceptsToken reports whether tok has the tenant's configured shape: the prefix exactly and at
// least the configured digits.
func acceptsToken(s OrgSettings, tok string) bool {
	p, num, ok := strings.Cut(tok, ":")
	return ok && p == s.TokenPrefix && len(num) >= s.TokenDigits
}

// replyPrefixes are the reply and forward markers mail clients put before a subject, in the
// languages of the product's users (English, German, Danish, Dutch, French, Swedish).
var replyPrefixes = regexp.MustCompile(`(?i)^\s*(re|fw|fwd|aw|wg|sv|vs|vl|antw|tr|r|rif|enc)\s*(\[\d+\])?\s*:\s*`)

// NormalizeSubject folds a subject for smart matching: reply and forward prefixes and tracking
// tokens removed, bracketed list tags kept, case folded, runs of space collapsed.
func NormalizeSubject(subject string) string {
	s := subject
	if mayHoldToken(s) {
		s = tokenLike.ReplaceAllString(s, " ")
	}
	// Every reply or forward prefix ends in a colon.
	for strings.IndexByte(s, ':') >= 0 {
		t := replyPrefixes.ReplaceAllString(s, "")
		if t == s {
			break
		}
		s = t
	}
	return foldSubject(s)
}

// foldSubject lower-cases s and folds its spacing: the words (runs of non-space runes), lower
// case, joined by single spaces. It is strings.Join(strings.FieldsFunc(strings.ToLower(s),
// unicode.IsSpace), " ") in one pass and one allocation (the smart key of every message
// normalises its subject; the keys are stored, so the result must never change).
func foldSubject(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	space := false
	for _, r := range s {
		if unicode.IsSpace(r) {
			space = b.Len() > 0
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		if r < utf8.RuneSelf {
			if 'A' <= r && r <= 'Z' {
				r += 'a' - 'A'
			}
			b.WriteByte(byte(r))
		} else {
			b.WriteRune(unicode.ToLower(r))
		}
	}
	return b.String()
}

// SmartKey is the smart-matching key of a message: its normalised subject and the set of its
// From, To and Cc addresses, hashed. It does not depend on the tenant's settings, so it can be
// looked up before they are read and is stored with every tracked email (turning smart matching
// on then finds the conversations tracked before); the rules apply the thresholds (smartFits).
// It is empty for a message without subject or without recipients.
func SmartKey(m *Message) string {
	subj := NormalizeSubject(m.Subject)
	set := addressSet(m)
	if subj == "" || len(set) < 2 {
		return ""
	}
	n := len(subj)
	for _, a := range set {
		n += 1 + len(a)
	}
	var stack [512]byte
	b := append(stack[:0:min(n, len(stack))], subj...)
	for _, a := range set {
		b = append(append(b, 0), a...)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// smartFits reports whether the message may be smart-matched under s: a subject long enough to
// mean something, and not too many addresses.
func smartFits(s SmartMatching, m *Message) bool {
	return len([]rune(NormalizeSubject(m.Subject))) >= s.MinSubjectLen && len(addressSet(m)) <= s.MaxRecipients && SmartKey(m) != ""
}

// addressSet is the sorted, unique set of From, To and Cc.
func addressSet(m *Message) []string {
	set := make([]string, 0, 1+len(m.To)+len(m.Cc))
	set = append(set, m.From)
	set = append(set, m.To...)
	set = append(set, m.Cc...)
	slices.Sort(set)
	return slices.Compact(slices.DeleteFunc(set, func(s string) bool { return s == "" }))
}

// Addresses returns the message's addresses with their roles, each address once (its first
// role: From, To, Cc, Bcc).
func Addresses(m *Message) []RoleAddress {
	n := 1 + len(m.To) + len(m.Cc) + len(m.Bcc)
	out := make([]RoleAddress, 0, n)
	// Most messages have a few addresses: a linear search beats building a set.
	var seen map[string]bool
	if n > 16 {
		seen = make(map[string]bool, n)
	}
	add := func(r Role, as ...string) {
		for _, a := range as {
			if a == "" {
				continue
			}
			if seen != nil {
				if seen[a] {
					continue
				}
				seen[a] = true
			} else if slices.ContainsFunc(out, func(x RoleAddress) bool { return x.Address == a }) {
				continue
			}
			out = append(out, RoleAddress{Address: a, Role: r})
		}
	}
	add(RoleFrom, m.From)
	add(RoleTo, m.To...)
	add(RoleCc, m.Cc...)
	add(RoleBcc, m.Bcc...)
	return out
}

// RoleAddress is an address of a message with where it appeared.
type RoleAddress struct {
	Address string
	Role    Role
}
