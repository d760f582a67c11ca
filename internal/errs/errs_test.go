package errs_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/errs"
)

func TestToStatus(t *testing.T) {
	var v errs.Violations
	v.Add("to[0]", "bad address")
	v.Add("subject", "contains CR")
	tests := []struct {
		name    string
		err     error
		code    codes.Code
		msg     string
		details int
	}{
		{"not found, wrapped", fmt.Errorf("get: %w", errs.NotFound("mailbox", "m1")), codes.NotFound, `mailbox "m1" not found`, 1},
		{"invalid with two fields", v.Err(), codes.InvalidArgument, "invalid request: to[0], subject", 1},
		{"already exists", errs.AlreadyExists("user", "u1"), codes.AlreadyExists, `user "u1" already exists`, 1},
		{"permission denied", errs.PermissionDenied("ADMIN_REQUIRED", "needs admin"), codes.PermissionDenied, "needs admin", 1},
		{"failed precondition", errs.FailedPrecondition("TENANT_NOT_EMPTY", "has users"), codes.FailedPrecondition, "has users", 1},
		{"unavailable with retry", errs.Unavailable("redis down", time.Second, errors.New("dial")), codes.Unavailable, "redis down", 1},
		{"exhausted, with ErrorInfo and QuotaFailure", errs.ResourceExhausted("MESSAGE_SIZE", "too big", 0), codes.ResourceExhausted, "too big", 2},
		{"unauthenticated", errs.Unauthenticated("token expired", nil), codes.Unauthenticated, "token expired", 0},
		{"plain error leaks nothing", errors.New("redis: secret detail"), codes.Internal, "internal error", 0},
		{"canceled", fmt.Errorf("x: %w", context.Canceled), codes.Canceled, "request canceled", 0},
		{"a dependency's status passes through, without our wrapping", fmt.Errorf("mailbox CheckSend: %w", status.Error(codes.NotFound, "user u1")), codes.NotFound, "user u1", 0},
		{"ours wins over a dependency's status in its cause", fmt.Errorf("x: %w", errs.Unavailable("mailbox down", time.Second, fmt.Errorf("GetUser: %w", status.Error(codes.Internal, "secret")))), codes.Unavailable, "mailbox down", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := errs.ToStatus(tt.err)
			if s.Code() != tt.code || s.Message() != tt.msg || len(s.Details()) != tt.details {
				t.Errorf("ToStatus = %s %q %d details, want %s %q %d", s.Code(), s.Message(), len(s.Details()), tt.code, tt.msg, tt.details)
			}
		})
	}
	t.Run("field violations in order", func(t *testing.T) {
		br := errs.ToStatus(v.Err()).Details()[0].(*errdetails.BadRequest)
		if got := br.GetFieldViolations()[1].GetField(); got != "subject" {
			t.Errorf("second field = %q", got)
		}
	})
}

func TestSentinels(t *testing.T) {
	err := fmt.Errorf("store: %w", errs.NotFound("user", "u1"))
	if !errors.Is(err, errs.ErrNotFound) || errors.Is(err, errs.ErrAlreadyExists) {
		t.Error("errors.Is does not follow the kind")
	}
	if errs.KindOf(err) != errs.KindNotFound || errs.KindOf(errors.New("x")) != errs.KindInternal {
		t.Error("KindOf is wrong")
	}
	var none errs.Violations
	if none.Err() != nil {
		t.Error("empty violations are an error")
	}
}

func TestQuote(t *testing.T) {
	long := strings.Repeat("x", 5000)
	tests := []struct{ name, in, want string }{
		{"plain", "m1", `"m1"`},
		{"CR LF escaped", "a\r\nb", `"a\r\nb"`},
		{"long cut", long, `"` + long[:64] + `"… (5000 characters)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := errs.Quote(tt.in); got != tt.want {
				t.Errorf("Quote = %s, want %s", got, tt.want)
			}
		})
	}
	s := errs.ToStatus(errs.NotFound("user", "a\r\n"+long))
	if strings.ContainsAny(s.Message(), "\r\n") || len(s.Message()) > 200 {
		t.Errorf("NotFound message %q echoes raw input", s.Message())
	}
}

func TestLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    string
		max  int
		want string // the description, empty when s passes
	}{
		{"empty", "", 10, ""},
		{"plain", "Hallo Welt", 10, ""},
		{"umlauts count as characters", "Grüße aus Köln", 14, ""},
		{"tab", "a\tb", 10, ""},
		{"CR", "a\rb", 10, errs.LineRule},
		{"LF", "a\nb", 10, errs.LineRule},
		{"CRLF header injection", "Hallo\r\nBcc: x@example.com", 100, errs.LineRule},
		{"NUL", "a\x00b", 10, errs.LineRule},
		{"DEL", "a\x7fb", 10, errs.LineRule},
		{"escape", "a\x1b[31mb", 10, errs.LineRule},
		{"C1 NEL", "a\u0085b", 10, errs.LineRule},
		{"line separator", "a\u2028b", 10, errs.LineRule},
		{"paragraph separator", "a\u2029b", 10, errs.LineRule},
		{"invalid UTF-8", "a\xffb", 10, "must be valid UTF-8"},
		{"too long", "abcdefghijk", 10, "must be at most 10 characters"},
		{"too long with a control character names the control character", strings.Repeat("a", 20) + "\n", 10, errs.LineRule},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v errs.Violations
			ok := v.Line("subject", tc.s, tc.max)
			if ok != (tc.want == "") {
				t.Fatalf("Line = %v, violations %v", ok, v)
			}
			if tc.want == "" {
				return
			}
			if len(v) != 1 || v[0].Field != "subject" || v[0].Description != tc.want {
				t.Errorf("violations %+v, want subject: %s", v, tc.want)
			}
		})
	}
}

func TestLines(t *testing.T) {
	var v errs.Violations
	if !v.Lines("references", []string{"a@b", "c@d"}, 2, 10) || len(v) != 0 {
		t.Fatalf("two good lines: %v", v)
	}
	if v.Lines("references", []string{"a@b", "c@d", "e@f"}, 2, 10) || len(v) != 1 || v[0].Field != "references" {
		t.Fatalf("three lines of at most two: %v", v)
	}
	v = nil
	if v.Lines("references", []string{"a@b", "c\r\n@d", "e\x00f"}, 5, 10) || len(v) != 2 || v[0].Field != "references[1]" || v[1].Field != "references[2]" {
		t.Fatalf("bad elements: %v", v)
	}
}
