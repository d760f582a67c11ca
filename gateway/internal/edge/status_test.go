package edge

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/errs"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
)

func TestHTTPStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   *status.Status
		want int
	}{
		{"invalid", errs.ToStatus(errs.Invalid("to[0]", "bad")), http.StatusBadRequest},
		{"failed precondition", errs.ToStatus(errs.FailedPrecondition("CONNECTOR_IN_USE", "x")), http.StatusBadRequest},
		{"version mismatch", errs.ToStatus(errs.Aborted("VERSION_MISMATCH", "x")), http.StatusConflict},
		{"message size", errs.ToStatus(errs.ResourceExhausted("MESSAGE_SIZE", "x", 0)), http.StatusRequestEntityTooLarge},
		{"body too large", errs.ToStatus(errs.ResourceExhausted("BODY_TOO_LARGE", "x", 0)), http.StatusRequestEntityTooLarge},
		{"rate limited", errs.ToStatus(errs.ResourceExhausted("RATE_LIMITED", "x", time.Second)), http.StatusTooManyRequests},
		{"per-request limit", errs.ToStatus(errs.ResourceExhausted("SELECTION", "x", 0)), http.StatusBadRequest},
		{"unavailable", errs.ToStatus(errs.Unavailable("x", time.Second, nil)), http.StatusServiceUnavailable},
		{"unimplemented", status.New(codes.Unimplemented, "x"), http.StatusNotImplemented},
		{"internal", status.New(codes.Internal, "x"), http.StatusInternalServerError},
		{"data loss", status.New(codes.DataLoss, "x"), http.StatusInternalServerError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := HTTPStatus(tc.st); got != tc.want {
				t.Errorf("HTTPStatus(%s) = %d, want %d", tc.st.Code(), got, tc.want)
			}
		})
	}
}

func TestBodyFieldErrorRoundTrip(t *testing.T) {
	for _, path := range []string{"mailbox.all_user", `labels[a"b]`, "rights[1]"} {
		err := &bodyFieldError{path: path, desc: "unknown field"}
		got, desc, ok := parseBodyFieldError(status.New(codes.InvalidArgument, err.Error()).Message())
		if !ok || got != path || desc != "unknown field" {
			t.Errorf("parse(%q) = %q %q %v", err.Error(), got, desc, ok)
		}
	}
	if _, _, ok := parseBodyFieldError("proto: syntax error"); ok {
		t.Error("a message of another form parsed")
	}
}

func TestProtojsonWords(t *testing.T) {
	for in, want := range map[string]string{
		`proto: (line 1:17): duplicate field "to"`:              `at line 1, column 17: duplicate field "to"`,
		"proto:\u00a0syntax error (line 1:5): unexpected token": `at line 1, column 5: syntax error: unexpected token`,
		`proto: invalid UTF-8`:                                  `(invalid UTF-8)`,
	} {
		if got := protojsonWords(errors.New(in)); got != want {
			t.Errorf("protojsonWords(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestBodyValueErrors: a body value of the wrong type names its field by proto path (list elements
// [i]) with what the field takes; a body protojson refuses for no one field names none.
func TestBodyValueErrors(t *testing.T) {
	for body, want := range map[string]string{
		`{"startTime": "nope"}`:                               `body field "start_time": not a valid timestamp (RFC 3339, e.g. 2026-12-08T09:00:00Z)`,
		`{"except_start_times": ["2026-12-08T09:00:00Z", 1]}`: `body field "except_start_times[1]": not a valid timestamp (RFC 3339, e.g. 2026-12-08T09:00:00Z)`,
		`{"day": {"year": 1.5}}`:                              `body field "day.year": not an integer`,
		`{"day": {"year": "3000000000"}}`:                     `body field "day.year": out of range for a 32-bit integer`,
		`{"done": "yes"}`:                                     `body field "done": not true or false`,
		`{"summary": 5}`:                                      `body field "summary": not a string`,
		`{"kind": true}`:                                      `body field "kind": not a value of EntryKind (a name or a number)`,
		`{"summary": "a", "summary": "b"}`:                    `body field "": not valid JSON for this request at line 1, column 18: duplicate field "summary"`,
	} {
		var m calendarv1.Entry
		err := NewJSON().NewDecoder(strings.NewReader(body)).Decode(&m)
		if err == nil || err.Error() != want {
			t.Errorf("%s: %v, want %s", body, err, want)
		}
	}
	for _, body := range []string{`{"summary": `, `{"summary" "a"}`} {
		var fe *bodyFieldError
		if err := NewJSON().NewDecoder(strings.NewReader(body)).Decode(&calendarv1.Entry{}); !errors.As(err, &fe) || fe.path != "" {
			t.Errorf("%s: %v, want an error of the whole body", body, err)
		}
	}
}
