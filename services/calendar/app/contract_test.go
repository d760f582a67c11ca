package app_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

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

// TestPageTokensBelongToTheirQuery: a page token continues the query that issued it (AIP-158):
// used with another owner, range, include_cancelled or user it is INVALID_ARGUMENT naming
// page_token, instead of a page of one list continued at another's cursor.
func TestPageTokensBelongToTheirQuery(t *testing.T) {
	e := startEnv(t, envOptions{})
	ctx := e.admin()
	for _, owner := range []string{"huber", "anwalt"} {
		for _, day := range []int{10, 11} {
			en := deadline(fmt.Sprintf("%s-%d", owner, day), owner, "Frist", day)
			if _, err := e.calendar.CreateEntry(ctx, &calendarv1.CreateEntryRequest{Entry: en}); err != nil {
				t.Fatal(err)
			}
		}
	}
	march := func(owner string) *calendarv1.ListEntriesRequest {
		return &calendarv1.ListEntriesRequest{
			OwnerUserId: owner, StartTime: timestamppb.New(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)),
			EndTime: timestamppb.New(time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)), PageSize: 1,
		}
	}
	first, err := e.calendar.ListEntries(ctx, march("huber"))
	if err != nil || first.GetNextPageToken() == "" {
		t.Fatalf("ListEntries(huber, page size 1) = %v, %v; want a next page", first, err)
	}
	tok := first.GetNextPageToken()

	t.Run("ListEntries", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			ctx  context.Context
			req  func() *calendarv1.ListEntriesRequest
			ok   bool
		}{
			{"the same query", ctx, func() *calendarv1.ListEntriesRequest { return march("huber") }, true},
			{"the same owner as the caller", e.as("huber"), func() *calendarv1.ListEntriesRequest { return march("") }, true},
			{"another owner", ctx, func() *calendarv1.ListEntriesRequest { return march("anwalt") }, false},
			{"another start", ctx, func() *calendarv1.ListEntriesRequest {
				r := march("huber")
				r.StartTime = timestamppb.New(time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC))
				return r
			}, false},
			{"another end", ctx, func() *calendarv1.ListEntriesRequest {
				r := march("huber")
				r.EndTime = nil
				return r
			}, false},
			{"cancelled ones included", ctx, func() *calendarv1.ListEntriesRequest {
				r := march("huber")
				r.IncludeCancelled = true
				return r
			}, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				req := tc.req()
				req.PageToken = tok
				r, err := e.calendar.ListEntries(tc.ctx, req)
				if tc.ok {
					if err != nil || len(r.GetEntries()) != 1 || r.GetEntries()[0].GetEntryId() != "huber-11" {
						t.Errorf("ListEntries = %v, %v; want the second page, huber-11", r, err)
					}
					return
				}
				if got := fieldViolations(err); status.Code(err) != codes.InvalidArgument || len(got) != 1 || got[0] != "page_token" {
					t.Errorf("ListEntries = %v, %v (fields %v); want InvalidArgument on page_token", r, err, got)
				}
			})
		}
	})
	t.Run("ListSyncLog", func(t *testing.T) {
		r, err := e.calendar.ListSyncLog(ctx, &calendarv1.ListSyncLogRequest{UserId: "huber", PageSize: 1})
		if err != nil || r.GetNextPageToken() == "" {
			t.Fatalf("ListSyncLog(huber, page size 1) = %v, %v; want a next page", r, err)
		}
		if _, err := e.calendar.ListSyncLog(ctx, &calendarv1.ListSyncLogRequest{UserId: "huber", PageSize: 1, PageToken: r.GetNextPageToken()}); err != nil {
			t.Errorf("ListSyncLog(huber, its own token) = %v", err)
		}
		_, err = e.calendar.ListSyncLog(ctx, &calendarv1.ListSyncLogRequest{UserId: "anwalt", PageSize: 1, PageToken: r.GetNextPageToken()})
		if got := fieldViolations(err); status.Code(err) != codes.InvalidArgument || len(got) != 1 || got[0] != "page_token" {
			t.Errorf("ListSyncLog(anwalt, huber's token) = %v (fields %v), want InvalidArgument on page_token", err, got)
		}
	})
}

// TestUnknownUserIsNotFound: every call about a user who is not in the tenant answers
// NOT_FOUND alike; the sync log too, rather than an empty log.
func TestUnknownUserIsNotFound(t *testing.T) {
	e := startEnv(t, envOptions{})
	ctx := e.admin()
	for name, call := range map[string]func() error{
		"ListSyncLog": func() error {
			_, err := e.calendar.ListSyncLog(ctx, &calendarv1.ListSyncLogRequest{UserId: "nobody"})
			return err
		},
		"GetSyncStatus": func() error {
			_, err := e.calendar.GetSyncStatus(ctx, &calendarv1.GetSyncStatusRequest{UserId: "nobody"})
			return err
		},
		"GetUserSettings": func() error {
			_, err := e.calendar.GetUserSettings(ctx, &calendarv1.GetUserSettingsRequest{UserId: "nobody"})
			return err
		},
		"ListEntries": func() error {
			_, err := e.calendar.ListEntries(ctx, &calendarv1.ListEntriesRequest{OwnerUserId: "nobody"})
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			if err := call(); status.Code(err) != codes.NotFound {
				t.Errorf("%s(nobody) = %v, want NotFound", name, err)
			}
		})
	}
}
