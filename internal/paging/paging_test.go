package paging_test

import (
	"encoding/base64"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/paging"
)

func TestSize(t *testing.T) {
	tests := []struct {
		name          string
		requested     int
		def, want     int
		wantViolation bool
	}{
		{"zero is the default", 0, 0, paging.DefaultSize, false},
		{"zero is the list's default", 0, 20, 20, false},
		{"within", 10, 0, 10, false},
		{"the maximum", paging.MaxSize, 0, paging.MaxSize, false},
		{"above the maximum is clamped", paging.MaxSize + 1, 0, paging.MaxSize, false},
		{"far above is clamped", 1 << 30, 0, paging.MaxSize, false},
		{"negative", -1, 0, paging.DefaultSize, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v errs.Violations
			if got := paging.Size(&v, tt.requested, tt.def); got != tt.want {
				t.Errorf("Size = %d, want %d", got, tt.want)
			}
			if (len(v) > 0) != tt.wantViolation || (len(v) > 0 && v[0].Field != "page_size") {
				t.Errorf("violations = %v", v)
			}
		})
	}
}

func TestToken(t *testing.T) {
	tok := paging.Token("users", "max")
	if paging.Token("users", "") != "" {
		t.Error("an empty cursor has a token")
	}
	flipped := []byte(tok)
	flipped[3] ^= 1
	tests := []struct {
		name, list, token, want string
		ok                      bool
	}{
		{"round trip", "users", tok, "max", true},
		{"first page", "users", "", "", true},
		{"of another list", "teams", tok, "", false},
		{"garbage", "users", "garbage!", "", false},
		{"base64 of a bare cursor", "users", base64.RawURLEncoding.EncodeToString([]byte("max")), "", false},
		{"edited", "users", string(flipped), "", false},
		{"too long", "users", strings.Repeat("A", paging.MaxTokenBytes+1), "", false},
		// The base64 decoder skips line breaks and the unused low bits of the last character:
		// these spell the bytes of an issued token differently and are not ours (found by
		// FuzzCursor).
		{"line break inside", "users", tok[:4] + "\n" + tok[4:], "", false},
		{"trailing line break", "users", tok + "\r\n", "", false},
		{"non-canonical last character", "users", nonCanonical(tok), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v errs.Violations
			got := paging.Cursor(&v, tt.list, tt.token)
			if got != tt.want || (len(v) == 0) != tt.ok || (len(v) > 0 && v[0].Field != "page_token") {
				t.Errorf("Cursor = %q, violations %v; want %q, ok %v", got, v, tt.want, tt.ok)
			}
		})
	}
	if _, _, err := paging.Request("users", -1, "x", 0); err == nil || len(err.(*errs.Error).Violations) != 2 {
		t.Errorf("Request names both fields: %v", err)
	}
}

// nonCanonical spells tok with the unused low bits of its last base64 character set: the same
// bytes, another string.
func nonCanonical(tok string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	unused := map[int]int{2: 0xf, 3: 0x3}[len(tok)%4] // 1 or 2 trailing bytes leave 4 or 2 bits
	if unused == 0 {
		panic("tok has no partial last group")
	}
	last := strings.IndexByte(alphabet, tok[len(tok)-1])
	return tok[:len(tok)-1] + string(alphabet[last|unused])
}

// TestScope: a token issued for one query of a list is refused for another query of it, and
// read back for the same one.
func TestScope(t *testing.T) {
	anna := paging.Scope("entries", "anna", "2026-12-16", "")
	tok := paging.Token(anna, "1798934400000|p03")
	for _, tc := range []struct {
		name  string
		list  string
		valid bool
	}{
		{"the same query", paging.Scope("entries", "anna", "2026-12-16", ""), true},
		{"another owner", paging.Scope("entries", "huber", "2026-12-16", ""), false},
		{"another range", paging.Scope("entries", "anna", "2026-12-17", ""), false},
		{"values moved between fields", paging.Scope("entries", "ann", "a2026-12-16", ""), false},
		{"another list", paging.Scope("sync-log", "anna", "2026-12-16", ""), false},
		{"the list unscoped", "entries", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v errs.Violations
			got := paging.Cursor(&v, tc.list, tok)
			if tc.valid != (len(v) == 0) || tc.valid && got != "1798934400000|p03" {
				t.Errorf("Cursor = %q, violations %v; want valid %v", got, v, tc.valid)
			}
		})
	}
	if long := paging.Scope("entries", strings.Repeat("x", 10_000)); len(long) > 64 {
		t.Errorf("a scope of long values is %d bytes, want at most the 64 a list name may have", len(long))
	}
}
