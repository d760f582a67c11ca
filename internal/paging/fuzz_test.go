package paging_test

import (
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/paging"
)

// The lists the services page, so the seeds look like real tokens.
var lists = []string{"users", "teams", "mailboxes", "members", "sent", "tenants", "emails", "emails-by-3", "connectors", "sync-log", "entries", "records"}

// FuzzCursor: whatever a caller sends as page_token, Cursor never panics, and it accepts only a
// token Token would issue for that list: an accepted token is exactly Token(list, cursor) for
// the cursor it yields (no second spelling of an issued token, no token of another list), and
// a refused one is a page_token violation with the empty cursor.
func FuzzCursor(f *testing.F) {
	for _, l := range lists {
		f.Add(l, paging.Token(l, "max"))
		f.Add(l, paging.Token(l, "1767225600000|e-01JD4"))
	}
	f.Add("users", paging.Token("teams", "max"))
	f.Add("users", "")
	f.Add("users", "garbage!")
	f.Add("users", "cDF8dXNlcnN8bWF4")
	f.Add("users", strings.Repeat("A", paging.MaxTokenBytes+1))
	f.Fuzz(func(t *testing.T, list, token string) {
		var v errs.Violations
		c := paging.Cursor(&v, list, token)
		if len(v) > 0 {
			if c != "" || len(v) != 1 || v[0].Field != paging.TokenField {
				t.Fatalf("a refused token gives cursor %q and violations %v", c, v)
			}
			return
		}
		if token == "" {
			if c != "" {
				t.Fatalf("the empty token gives cursor %q", c)
			}
			return
		}
		if c == "" {
			t.Fatalf("token %q accepted with an empty cursor", token)
		}
		if again := paging.Token(list, c); again != token {
			t.Fatalf("token %q accepted for list %q with cursor %q, but Token issues %q for it", token, list, c, again)
		}
		if strings.Contains(list, "|") {
			return // a list name is a constant without "|"; with one, lists can share tokens
		}
		for _, other := range lists {
			if other != list {
				var ov errs.Violations
				if oc := paging.Cursor(&ov, other, token); len(ov) == 0 {
					t.Fatalf("a token of list %q is also accepted for list %q (cursor %q)", list, other, oc)
				}
			}
		}
	})
}

// FuzzTokenRoundTrip: a token the service issues is always accepted for its list and gives the
// cursor back, for every list name (without "|", up to 64 bytes) and cursor up to
// MaxCursorBytes; it is refused for every other list.
func FuzzTokenRoundTrip(f *testing.F) {
	f.Add("users", "max")
	f.Add("emails", "1767225600000|e-01JD4")
	f.Add("entries", "-5|x|y")
	f.Add("sync-log", "\x00\xff")
	f.Add("teams", strings.Repeat("z", paging.MaxCursorBytes))
	f.Fuzz(func(t *testing.T, list, cursor string) {
		// List names are constants of the services, without "|" and short; cursors are ids and
		// scores, shorter than MaxCursorBytes.
		if strings.Contains(list, "|") || len(list) > 64 || len(cursor) > paging.MaxCursorBytes {
			return
		}
		tok := paging.Token(list, cursor)
		if cursor == "" {
			if tok != "" {
				t.Fatalf("the empty cursor has token %q", tok)
			}
			return
		}
		if len(tok) > paging.MaxTokenBytes {
			t.Fatalf("Token(%q, %d bytes) is %d bytes, over MaxTokenBytes", list, len(cursor), len(tok))
		}
		var v errs.Violations
		if got := paging.Cursor(&v, list, tok); len(v) > 0 || got != cursor {
			t.Fatalf("Cursor(Token(%q, %q)) = %q, violations %v", list, cursor, got, v)
		}
		for _, other := range append(lists, list+"x", "") {
			if other == list {
				continue
			}
			var ov errs.Violations
			if paging.Cursor(&ov, other, tok); len(ov) == 0 {
				t.Fatalf("the token of list %q is accepted for list %q", list, other)
			}
		}
	})
}
