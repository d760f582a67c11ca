// Package paging is the one paging rule of every List RPC of the suite (AIP-158), so that a
// client that pages through one service pages through all of them alike:
//
//   - page_size 0 means the list's default; a negative page_size is InvalidArgument naming
//     page_size; a page_size above MaxSize is clamped to MaxSize (AIP-158: "clamp", not refuse);
//   - page_token is opaque: the service issues it (Token) and reads it back (Cursor); a token it
//     did not issue — garbage, a hand-edited token, a token of another list — is InvalidArgument
//     naming page_token;
//   - a token continues the query that issued it: a list whose request has filters, a range, an
//     owner or an order names its list with Scope, so a token used with other values of those
//     fields is InvalidArgument too (AIP-158: the other fields must match), instead of a page
//     of one query continued at a cursor of another, which skips or repeats items silently.
//
// A token carries the cursor (whatever the list keys on: an id, a score and an id), the name of
// the list that issued it and a checksum. The checksum is not a signature: a token gives access to
// nothing (every read is still scoped to the caller's tenant and rights), it only lets the
// service tell its own tokens from anything else, so that a forged or truncated token is the
// caller's error and not a silent restart or a bug.
package paging

import (
	"encoding/base64"
	"encoding/binary"
	"hash/crc32"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/postamt/postamt/internal/errs"
)

// Limits of every list.
const (
	// DefaultSize is the page size of a request that sets none, unless the list has its own
	// default (the outbox's user setting).
	DefaultSize = 50
	// MaxSize is the largest page any list returns; larger requests are clamped to it.
	MaxSize = 500
	// MaxTokenBytes bounds a page token; a longer one was not issued by the service.
	MaxTokenBytes = 512
	// MaxCursorBytes is the longest cursor whose token (for a list name of up to 64 bytes) fits
	// in MaxTokenBytes, so Cursor accepts it back. The services' cursors (an id; a score and an
	// id) are far shorter.
	MaxCursorBytes = 300
)

// Field names of the request fields the errors name.
const (
	SizeField  = "page_size"
	TokenField = "page_token"
)

// version prefixes every token, so a later format can still recognise this one.
const version = "p1"

// NotIssued is the description of a page_token violation: the token was not issued for this list
// and these request fields. Every list that checks a cursor of its own says it alike.
const NotIssued = "is not a page token this service issued for this list and query (start again without one)"

// Size applies the rule to a requested page size: 0 is def (DefaultSize when def is 0), above
// MaxSize is MaxSize, negative is a violation of page_size (recorded in v; the result is then
// def).
func Size(v *errs.Violations, requested int, def int) int {
	if def <= 0 {
		def = DefaultSize
	}
	switch {
	case requested < 0:
		v.Add(SizeField, "must not be negative")
		return def
	case requested == 0:
		return min(def, MaxSize)
	case requested > MaxSize:
		return MaxSize
	}
	return requested
}

// Scope names list for one query: the list and the values of the request fields (other than
// page_size and page_token) that select and order its items, in a fixed order. The name is short
// (a hash of the values), so a token stays within MaxTokenBytes whatever the fields hold.
func Scope(list string, fields ...string) string {
	h := fnv.New64a()
	for _, f := range fields {
		// Each value with its length, so that ("ab", "c") and ("a", "bc") differ.
		var n [binary.MaxVarintLen64]byte
		_, _ = h.Write(n[:binary.PutUvarint(n[:], uint64(len(f)))])
		_, _ = h.Write([]byte(f))
	}
	return list + "." + strconv.FormatUint(h.Sum64(), 36)
}

// Token encodes cursor as the page token of list; an empty cursor is the empty token (no next
// page).
func Token(list, cursor string) string {
	if cursor == "" {
		return ""
	}
	body := version + "|" + list + "|" + cursor
	sum := make([]byte, 4)
	binary.BigEndian.PutUint32(sum, crc32.ChecksumIEEE([]byte(body)))
	return base64.RawURLEncoding.EncodeToString(append([]byte(body), sum...))
}

// Cursor decodes a page token of list; the empty token is the empty cursor (the first page). A
// token not issued by Token for list is a violation of page_token, recorded in v.
func Cursor(v *errs.Violations, list, token string) string {
	if token == "" {
		return ""
	}
	c, ok := decode(list, token)
	if !ok {
		v.Add(TokenField, NotIssued)
		return ""
	}
	return c
}

func decode(list, token string) (string, bool) {
	if len(token) > MaxTokenBytes {
		return "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	// The decoder skips CR and LF and ignores the unused bits of the last character, so other
	// strings decode to the bytes of an issued token: only the one spelling Token writes is ours.
	if err != nil || len(b) < 4 || base64.RawURLEncoding.EncodeToString(b) != token {
		return "", false
	}
	body, sum := b[:len(b)-4], b[len(b)-4:]
	if crc32.ChecksumIEEE(body) != binary.BigEndian.Uint32(sum) {
		return "", false
	}
	prefix := version + "|" + list + "|"
	c, ok := strings.CutPrefix(string(body), prefix)
	if !ok || c == "" {
		return "", false
	}
	return c, true
}

// Request is Size and Cursor together, for the common list: the page size to read and the cursor
// to read after, or an InvalidArgument error naming every bad field.
func Request(list string, size int, token string, def int) (int, string, error) {
	var v errs.Violations
	n := Size(&v, size, def)
	c := Cursor(&v, list, token)
	if err := v.Err(); err != nil {
		return 0, "", err
	}
	return n, c, nil
}
