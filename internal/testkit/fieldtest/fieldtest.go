// Package fieldtest gives the services' input tests one list of the characters that break a
// header or a line-oriented protocol, and one check that a request with one of them was refused
// as INVALID_ARGUMENT naming the field (errs.Violations.Line is the rule they test).
package fieldtest

import (
	"slices"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Breaker is a character (or pair) that ends a header line early or a C string.
type Breaker struct {
	Name string
	Char string
}

// Breakers are CR, LF, CRLF and NUL: every header-bound field of every RPC refuses each.
var Breakers = []Breaker{{"CR", "\r"}, {"LF", "\n"}, {"CRLF", "\r\n"}, {"NUL", "\x00"}}

// Break returns s with b's character in its middle, where a lenient check that looks only at
// the ends would miss it; for a header the rest reads as an injected header.
func (b Breaker) Break(s string) string {
	i := len(s) / 2
	return s[:i] + b.Char + s[i:]
}

// Inject returns s followed by b's character and an injected Bcc header.
func (b Breaker) Inject(s string) string { return s + b.Char + "Bcc: attacker@evil.example" }

// WantViolation fails tb unless err is INVALID_ARGUMENT with a BadRequest detail naming field.
func WantViolation(tb testing.TB, err error, field string) {
	tb.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		tb.Fatalf("code %s (%q), want InvalidArgument naming %s", st.Code(), st.Message(), field)
	}
	if got := Fields(st); !slices.Contains(got, field) {
		tb.Fatalf("field violations %v (%q), want one of %s", got, st.Message(), field)
	}
}

// Fields are the fields of st's BadRequest details.
func Fields(st *status.Status) []string {
	var out []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, v.GetField())
			}
		}
	}
	return out
}

// Unchanged fails tb unless before and after (snapshots of what a service stores, taken with
// the same list calls) are equal: a refused request stored nothing.
func Unchanged(tb testing.TB, before, after []proto.Message) {
	tb.Helper()
	if len(before) != len(after) {
		tb.Fatalf("%d snapshot messages before, %d after", len(before), len(after))
	}
	for i := range before {
		if !proto.Equal(before[i], after[i]) {
			tb.Fatalf("the refused request changed what is stored:\nbefore %v\nafter  %v", before[i], after[i])
		}
	}
}
