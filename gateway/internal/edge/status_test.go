package edge

import (
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/errs"
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
