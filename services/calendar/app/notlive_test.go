package app_test

import (
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/app"
)

// reason is the reason of a status error: the PreconditionFailure violation's type, or the
// ErrorInfo reason.
func reason(err error) string {
	for _, d := range status.Convert(err).Details() {
		switch d := d.(type) {
		case *errdetails.PreconditionFailure:
			if len(d.GetViolations()) > 0 {
				return d.GetViolations()[0].GetType()
			}
		case *errdetails.ErrorInfo:
			return d.GetReason()
		}
	}
	return ""
}

// TestWhyNoLiveAgent (issue 15): an agent refused by Connect learns why — server push, mode
// OFF, the tenant's switch, or usernames that differ are different reasons — and GetUserSettings
// reports OFF, never LIVE_AGENT, as the mode in effect for a user whose agent may not connect.
func TestWhyNoLiveAgent(t *testing.T) {
	e := startEnv(t, envOptions{cfg: func(c *app.Config) { c.Push = false }})
	set := func(user string, mode calendarv1.SyncMode) {
		t.Helper()
		s := &calendarv1.UserSettings{UserId: user, Mode: mode}
		if mode == calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH {
			s.Caldav = &calendarv1.CalDAVTarget{CalendarUrl: "https://dav.invalid/" + user + "/", Username: user, PasswordRef: "env:POSTAMT_CALDAV_KANZLEI__X"}
		}
		if _, err := e.calendar.UpdateUserSettings(e.admin(), &calendarv1.UpdateUserSettingsRequest{Settings: s}); err != nil {
			t.Fatal(err)
		}
	}
	set("anwalt", calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH)
	effective := func(user string) calendarv1.SyncMode {
		t.Helper()
		r, err := e.calendar.GetUserSettings(e.admin(), &calendarv1.GetUserSettingsRequest{UserId: user})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetSettings().GetEffectiveMode()
	}
	for _, tc := range []struct {
		name, user string
		prepare    func()
		reason     string
		effective  calendarv1.SyncMode
	}{
		{"usernames differ", "maier", nil, "LIVE_SYNC_NOT_APPLICABLE", calendarv1.SyncMode_SYNC_MODE_OFF},
		{"server push", "anwalt", nil, "SERVER_PUSH_MODE", calendarv1.SyncMode_SYNC_MODE_SERVER_PUSH},
		{"mode off", "huber", func() { set("huber", calendarv1.SyncMode_SYNC_MODE_OFF) }, "SYNC_OFF", calendarv1.SyncMode_SYNC_MODE_OFF},
		{"tenant switched off", "huber", func() {
			set("huber", calendarv1.SyncMode_SYNC_MODE_LIVE_AGENT)
			if _, err := e.calendar.UpdateTenantSettings(e.admin(), &calendarv1.UpdateTenantSettingsRequest{Settings: &calendarv1.TenantSettings{}}); err != nil {
				t.Fatal(err)
			}
		}, "LIVE_SYNC_TENANT_DISABLED", calendarv1.SyncMode_SYNC_MODE_OFF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.prepare != nil {
				tc.prepare()
			}
			_, _, err := e.connect(tc.user, &calendarv1.Hello{AgentId: "pc"})
			if status.Code(err) != codes.FailedPrecondition || reason(err) != tc.reason {
				t.Errorf("Connect as %s = %v (reason %q), want FailedPrecondition %s", tc.user, err, reason(err), tc.reason)
			}
			if got := effective(tc.user); got != tc.effective {
				t.Errorf("GetUserSettings(%s).effective_mode = %v, want %v", tc.user, got, tc.effective)
			}
		})
	}
}
