package app_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/testkit/authtest"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
)

// TestIDsAreValidated sends a malformed id to the tracker's RPCs that take one: each is
// INVALID_ARGUMENT naming the field, and no message repeats the raw id.
func TestIDsAreValidated(t *testing.T) {
	e := startEnv(t)
	ctx := e.admin()
	bad := "x\r\n" + strings.Repeat("a", 5000)
	calls := []struct {
		name, field string
		call        func() error
	}{
		{"GetUserSettings", "user_id", func() error {
			_, err := e.tracker.GetUserSettings(ctx, &trackerv1.GetUserSettingsRequest{UserId: bad})
			return err
		}},
		{"DeleteRecord", "record_id", func() error {
			_, err := e.tracker.DeleteRecord(ctx, &trackerv1.DeleteRecordRequest{RecordId: bad})
			return err
		}},
		{"UpsertRecord", "record.record_id", func() error {
			_, err := e.tracker.UpsertRecord(ctx, &trackerv1.UpsertRecordRequest{Record: &trackerv1.Record{RecordId: "../x", Kind: trackerv1.RecordKind_RECORD_KIND_CONTACT, DisplayName: "x"}})
			return err
		}},
		{"IssueTrackingToken", "regarding_record_id", func() error {
			_, err := e.tracker.IssueTrackingToken(ctx, &trackerv1.IssueTrackingTokenRequest{RegardingRecordId: bad})
			return err
		}},
		{"ListTrackedEmails", "record_id", func() error {
			_, err := e.tracker.ListTrackedEmails(ctx, &trackerv1.ListTrackedEmailsRequest{RecordId: bad})
			return err
		}},
	}
	for _, tt := range calls {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("code = %s (%q), want InvalidArgument", st.Code(), st.Message())
			}
			if got := fieldViolations(err); len(got) == 0 || got[0] != tt.field {
				t.Errorf("fields = %v, want %s", got, tt.field)
			}
			if strings.ContainsAny(st.Message(), "\r\n") || strings.Contains(st.Message(), strings.Repeat("a", 100)) {
				t.Errorf("message echoes the raw id: %.200q", st.Message())
			}
		})
	}
}

// TestMalformedTenantInToken: a correctly signed token whose tenant is malformed is
// UNAUTHENTICATED.
func TestMalformedTenantInToken(t *testing.T) {
	e := startEnv(t)
	for _, tenant := range []string{"../x", "", strings.Repeat("t", 65), "kanzlei\n"} {
		_, err := e.tracker.GetOrgSettings(authtest.Forged(t, tenant, "admin"), &trackerv1.GetOrgSettingsRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("tenant %q: %v, want Unauthenticated", tenant, err)
		}
	}
}

// TestPaging: the tracker's lists follow the suite's paging rule.
func TestPaging(t *testing.T) {
	e := startEnv(t)
	ctx := e.admin()
	forged := "YWJj" // base64 of "abc": the old token format, made by hand
	lists := map[string]func(size int32, token string) error{
		"ListRecords": func(size int32, token string) error {
			_, err := e.tracker.ListRecords(ctx, &trackerv1.ListRecordsRequest{PageSize: size, PageToken: token})
			return err
		},
		"ListTrackedEmails": func(size int32, token string) error {
			_, err := e.tracker.ListTrackedEmails(ctx, &trackerv1.ListTrackedEmailsRequest{RecordId: "r1", PageSize: size, PageToken: token})
			return err
		},
	}
	for name, list := range lists {
		t.Run(name, func(t *testing.T) {
			err := list(0, forged)
			if got := fieldViolations(err); status.Code(err) != codes.InvalidArgument || len(got) != 1 || got[0] != "page_token" {
				t.Errorf("forged token: %v, fields %v", err, got)
			}
			if err := list(1_000_000, ""); err != nil {
				t.Errorf("page size above the maximum: %v, want clamped", err)
			}
			err = list(-1, "")
			if got := fieldViolations(err); status.Code(err) != codes.InvalidArgument || len(got) != 1 || got[0] != "page_size" {
				t.Errorf("negative page size: %v, fields %v", err, got)
			}
		})
	}
}
