package app_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/testkit/authtest"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
)

// TestIDsAreValidated sends a malformed id to the calendar's RPCs that take one: each is
// INVALID_ARGUMENT naming the field, and no message repeats the raw id.
func TestIDsAreValidated(t *testing.T) {
	e := startEnv(t, envOptions{})
	ctx := e.admin()
	bad := "x\r\n" + strings.Repeat("a", 5000)
	calls := []struct {
		name, field string
		call        func() error
	}{
		{"CreateEntry", "entry.entry_id", func() error {
			_, err := e.calendar.CreateEntry(ctx, &calendarv1.CreateEntryRequest{Entry: appointment("../x", "huber", "x", 1, "Europe/Berlin")})
			return err
		}},
		{"UpdateEntry", "entry_id", func() error {
			_, err := e.calendar.UpdateEntry(ctx, &calendarv1.UpdateEntryRequest{Entry: appointment(bad, "huber", "x", 1, "Europe/Berlin")})
			return err
		}},
		{"CancelEntry", "entry_id", func() error {
			_, err := e.calendar.CancelEntry(ctx, &calendarv1.CancelEntryRequest{EntryId: bad})
			return err
		}},
		{"MarkDone", "entry_id", func() error {
			_, err := e.calendar.MarkDone(ctx, &calendarv1.MarkDoneRequest{EntryId: bad})
			return err
		}},
		{"GetEntry", "entry_id", func() error {
			_, err := e.calendar.GetEntry(ctx, &calendarv1.GetEntryRequest{EntryId: bad})
			return err
		}},
		{"ListEntries", "owner_user_id", func() error {
			_, err := e.calendar.ListEntries(ctx, &calendarv1.ListEntriesRequest{OwnerUserId: bad})
			return err
		}},
		{"GetUserSettings", "user_id", func() error {
			_, err := e.calendar.GetUserSettings(ctx, &calendarv1.GetUserSettingsRequest{UserId: bad})
			return err
		}},
		{"GetSyncStatus", "user_id", func() error {
			_, err := e.calendar.GetSyncStatus(ctx, &calendarv1.GetSyncStatusRequest{UserId: bad})
			return err
		}},
		{"ListSyncLog", "user_id", func() error {
			_, err := e.calendar.ListSyncLog(ctx, &calendarv1.ListSyncLogRequest{UserId: bad})
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
	e := startEnv(t, envOptions{})
	for _, tenant := range []string{"../x", "", strings.Repeat("t", 65), "kanzlei\n"} {
		_, err := e.calendar.GetTenantSettings(authtest.Forged(t, tenant, "admin"), &calendarv1.GetTenantSettingsRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("tenant %q: %v, want Unauthenticated", tenant, err)
		}
	}
}

// TestPaging: the calendar's lists follow the suite's paging rule.
func TestPaging(t *testing.T) {
	e := startEnv(t, envOptions{})
	ctx := e.admin()
	forged := "MS0x" // base64 of "1-1": a sync log id, the old token format
	lists := map[string]func(size int32, token string) error{
		"ListEntries": func(size int32, token string) error {
			_, err := e.calendar.ListEntries(ctx, &calendarv1.ListEntriesRequest{OwnerUserId: "huber", PageSize: size, PageToken: token})
			return err
		},
		"ListSyncLog": func(size int32, token string) error {
			_, err := e.calendar.ListSyncLog(ctx, &calendarv1.ListSyncLogRequest{UserId: "huber", PageSize: size, PageToken: token})
			return err
		},
	}
	for name, list := range lists {
		t.Run(name, func(t *testing.T) {
			for _, tok := range []string{forged, "1-1"} {
				err := list(0, tok)
				if got := fieldViolations(err); status.Code(err) != codes.InvalidArgument || len(got) != 1 || got[0] != "page_token" {
					t.Errorf("forged token %q: %v, fields %v", tok, err, got)
				}
			}
			if err := list(1_000_000, ""); err != nil {
				t.Errorf("page size above the maximum: %v, want clamped", err)
			}
			err := list(-1, "")
			if got := fieldViolations(err); status.Code(err) != codes.InvalidArgument || len(got) != 1 || got[0] != "page_size" {
				t.Errorf("negative page size: %v, fields %v", err, got)
			}
		})
	}
}
