package app_test

import (
	"encoding/json"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/postamt/postamt/gateway/app"
	"github.com/postamt/postamt/internal/testkit/poll"
)

// fieldViolations are the fields a status's BadRequest names.
func (s rpcStatus) fieldViolations() []string {
	var out []string
	for _, d := range s.Details {
		var br struct {
			FieldViolations []struct {
				Field string `json:"field"`
			} `json:"fieldViolations"`
		}
		if json.Unmarshal(d, &br) == nil {
			for _, v := range br.FieldViolations {
				out = append(out, v.Field)
			}
		}
	}
	return out
}

// TestHTTPStrictInput: over HTTP an unknown JSON field, an unknown enum value (by name or number,
// in the body or the query) and an unknown query parameter are 400 INVALID_ARGUMENT with a
// BadRequest naming the field, instead of a 200 that ignored them; nothing is created.
func TestHTTPStrictInput(t *testing.T) {
	e := startEnv(t, nil)
	e.seed()
	admin, eva := e.admin(), e.as("eva")
	shared := map[string]any{"mailboxId": "s-info", "address": "info@kanzlei.example", "displayName": "Info", "kind": "MAILBOX_KIND_SHARED"}
	withField := func(k string, v any) map[string]any {
		m := map[string]any{k: v}
		for k, v := range shared {
			m[k] = v
		}
		return map[string]any{"mailbox": m}
	}
	for _, tc := range []struct {
		name, method, path, token string
		body                      any
		wantField                 string
	}{
		{"a typo in a body field", http.MethodPost, "/v1/mailboxes", admin, withField("all_user", true), "mailbox.all_user"},
		{"a typo in camelCase", http.MethodPost, "/v1/mailboxes", admin, withField("allUser", true), "mailbox.allUser"},
		{"an unknown top-level field", http.MethodPost, "/v1/mailboxes", admin, map[string]any{"mailbox": shared, "dryRun": true}, "dryRun"},
		{"an unknown enum name among known ones", http.MethodPost, "/v1/mailboxes/p-eva/members", admin,
			map[string]any{"userId": "eva", "rights": []string{"RIGHT_READ", "RIGHT_SEND_AS_TYPO"}}, "rights[1]"},
		{"only an unknown enum name", http.MethodPost, "/v1/mailboxes/p-eva/members", admin,
			map[string]any{"userId": "eva", "rights": []string{"RIGHT_BOGUS"}}, "rights[0]"},
		{"an enum number the enum does not define", http.MethodPost, "/v1/mailboxes/p-eva/members", admin,
			map[string]any{"userId": "eva", "rights": []int{1, 99}}, "rights[1]"},
		{"a body field of a body-field route names the request field", http.MethodPatch, "/v1/users/eva", admin,
			map[string]any{"displayNme": "Eva B."}, "user.displayNme"},
		{"an unknown enum in the query", http.MethodGet, "/v1/outbox/emails?view=VIEW_BOGUS", eva, nil, "view"},
		{"an unknown query parameter", http.MethodGet, "/v1/outbox/emails?veiw=VIEW_ALL", eva, nil, "veiw"},
		{"a query parameter on a route that takes the body", http.MethodPost, "/v1/mailboxes?validate_only=true", admin,
			map[string]any{"mailbox": shared}, "validate_only"},
		{"a query parameter that is a path field", http.MethodGet, "/v1/users/eva?user_id=max", admin, nil, "user_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st rpcStatus
			resp := e.call(tc.method, tc.path, tc.token, tc.body, &st)
			if resp.StatusCode != http.StatusBadRequest || codes.Code(st.Code) != codes.InvalidArgument {
				t.Fatalf("%s %+v, want 400 INVALID_ARGUMENT", resp.Status, st)
			}
			if got := st.fieldViolations(); !slices.Contains(got, tc.wantField) {
				t.Errorf("field violations %v, want %s (message %q)", got, tc.wantField, st.Message)
			}
		})
	}
	var st rpcStatus
	if resp := e.call(http.MethodGet, "/v1/mailboxes/s-info", admin, nil, &st); resp.StatusCode != http.StatusNotFound {
		t.Errorf("the refused mailbox exists: %s", resp.Status)
	}
	// Known names in either spelling still work, in the body and the query.
	if resp := e.call(http.MethodGet, "/v1/outbox/emails?view=VIEW_ALL&page_size=5&filter.text=x", eva, nil, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("a good query: %s", resp.Status)
	}
	if resp := e.call(http.MethodPost, "/v1/mailboxes", admin, map[string]any{"mailbox": map[string]any{
		"mailbox_id": "s-info", "address": "info@kanzlei.example", "display_name": "Info", "kind": "MAILBOX_KIND_SHARED", "all_users": true,
	}}, &st); resp.StatusCode != http.StatusOK {
		t.Errorf("a good body with proto names: %s %+v", resp.Status, st)
	}
}

// TestHTTPMalformedValues: a query or body value that does not parse as its field's type is 400
// INVALID_ARGUMENT with a BadRequest naming the field by its proto path and saying what it takes,
// not grpc-gateway's parser error ("strconv.ParseInt: ...", "proto: (line 1:97): ...") without
// details; a body that is not JSON at all names the body.
func TestHTTPMalformedValues(t *testing.T) {
	e := startEnv(t, nil)
	e.seed()
	eva := e.as("eva")
	const timestamp = "not a valid timestamp (RFC 3339, e.g. 2026-12-08T09:00:00Z)"
	entry := func(k string, v any) map[string]any {
		return map[string]any{"entryId": "t-1", "kind": "ENTRY_KIND_APPOINTMENT", "summary": "Termin", "timeZone": "Europe/Vienna",
			"startTime": "2026-12-08T09:00:00Z", "endTime": "2026-12-08T10:00:00Z", k: v}
	}
	for _, tc := range []struct {
		name, method, path string
		body               any
		wantField          string
		wantDesc           string
	}{
		{"a timestamp in the query", http.MethodGet, "/v1/calendar/users/me/entries?startTime=yesterday", nil, "start_time", timestamp},
		{"an integer in the query", http.MethodGet, "/v1/calendar/users/me/entries?pageSize=abc", nil, "page_size", "not an integer"},
		{"an integer out of range in the query", http.MethodGet, "/v1/calendar/users/me/entries?page_size=99999999999", nil, "page_size", "out of range for a 32-bit integer"},
		{"a bool in the query", http.MethodGet, "/v1/calendar/users/me/entries?includeCancelled=maybe", nil, "include_cancelled", "not true or false"},
		{"an enum number in the query", http.MethodGet, "/v1/outbox/emails?view=99", nil, "view", `unknown value "99" of View`},
		{"a singular query field twice", http.MethodGet, "/v1/calendar/users/me/entries?pageSize=1&pageSize=2", nil, "page_size", "given 2 times; it takes one value"},
		{"a query field under both names", http.MethodGet, "/v1/calendar/users/me/entries?pageSize=1&page_size=2", nil, "page_size", "given twice, as pageSize and page_size"},
		{"a timestamp in a body field's message", http.MethodPost, "/v1/calendar/entries", entry("startTime", "nope"), "entry.start_time", timestamp},
		{"a timestamp in a list", http.MethodPost, "/v1/calendar/entries", entry("exceptStartTimes", []string{"2026-12-15T09:00:00Z", "nope"}),
			"entry.except_start_times[1]", timestamp},
		{"a nested message that is not an object", http.MethodPost, "/v1/calendar/entries", entry("day", 5), "entry.day", "not a JSON object"},
		{"a timestamp in a whole-request body", http.MethodPost, "/v1/outbox/emails",
			map[string]any{"to": []string{"client@example.com"}, "subject": "Hallo", "send_at": "nope"}, "send_at", timestamp},
		{"a bool in a whole-request body", http.MethodPost, "/v1/outbox/emails",
			map[string]any{"to": []string{"client@example.com"}, "subject": "Hallo", "systemGenerated": "yes"}, "system_generated", "not true or false"},
		{"an integer in a nested message", http.MethodPost, "/v1/calendar/entries", entry("day", map[string]any{"year": "abc"}), "entry.day.year", "not an integer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st rpcStatus
			resp := e.call(tc.method, tc.path, eva, tc.body, &st)
			if resp.StatusCode != http.StatusBadRequest || codes.Code(st.Code) != codes.InvalidArgument {
				t.Fatalf("%s %+v, want 400 INVALID_ARGUMENT", resp.Status, st)
			}
			if got := st.violations(); got[tc.wantField] != tc.wantDesc {
				t.Errorf("field violations %q, want %s: %q (message %q)", got, tc.wantField, tc.wantDesc, st.Message)
			}
			for _, internal := range []string{"strconv", "parsing", "proto:", "2006-01-02"} {
				if strings.Contains(st.Message, internal) {
					t.Errorf("message %q says %q", st.Message, internal)
				}
			}
		})
	}

	// A body that is no JSON, or repeats a key, names the body: its field on a body-field route,
	// no field (and "the request body" in the message) on a whole-request one.
	for _, tc := range []struct{ name, path, body, wantField, wantMessage string }{
		{"not JSON, whole-request body", "/v1/outbox/emails", `{"to": [`, "", "the request body is not valid JSON"},
		{"a repeated key, whole-request body", "/v1/outbox/emails", `{"subject": "a", "subject": "b"}`, "", "the request body is not valid JSON"},
		{"not JSON, body field", "/v1/calendar/entries", `{"entryId" "t-1"}`, "entry", "invalid request: entry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, e.httpURL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+eva)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var st rpcStatus
			if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
				t.Fatal(err)
			}
			got := st.violations()
			if _, ok := got[tc.wantField]; resp.StatusCode != http.StatusBadRequest || codes.Code(st.Code) != codes.InvalidArgument ||
				!ok || !strings.HasPrefix(st.Message, tc.wantMessage) {
				t.Errorf("%s %+v, want 400 INVALID_ARGUMENT naming %q, message %q...", resp.Status, st, tc.wantField, tc.wantMessage)
			}
		})
	}

	// Good values in either spelling still pass.
	for _, path := range []string{
		"/v1/calendar/users/me/entries?startTime=2026-12-08T09:00:00Z&page_size=5&includeCancelled=true",
		"/v1/outbox/emails?view=1&pageSize=5",
	} {
		if resp := e.call(http.MethodGet, path, eva, nil, nil); resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s", path, resp.Status)
		}
	}
}

// violations are the field violations of a status's BadRequest, by field.
func (s rpcStatus) violations() map[string]string {
	out := map[string]string{}
	for _, d := range s.Details {
		var br struct {
			FieldViolations []struct {
				Field       string `json:"field"`
				Description string `json:"description"`
			} `json:"fieldViolations"`
		}
		if json.Unmarshal(d, &br) == nil {
			for _, v := range br.FieldViolations {
				out[v.Field] = v.Description
			}
		}
	}
	return out
}

// TestHTTPInvalidUTF8: invalid UTF-8 in a path variable or a query value is 400 naming the
// parameter (it was a 500 from the client's proto encoding).
func TestHTTPInvalidUTF8(t *testing.T) {
	e := startEnv(t, nil)
	e.seed()
	for _, tc := range []struct{ name, path, wantField string }{
		{"path", "/v1/users/%ff%fe", "user_id"},
		{"query", "/v1/outbox/emails?page_token=%00%ff", "page_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st rpcStatus
			resp := e.call(http.MethodGet, tc.path, e.admin(), nil, &st)
			if resp.StatusCode != http.StatusBadRequest || !slices.Contains(st.fieldViolations(), tc.wantField) {
				t.Fatalf("%s %+v, want 400 naming %s", resp.Status, st, tc.wantField)
			}
		})
	}
}

// TestHTTPMethodNotAllowed: a known path with another method is 405 with an Allow header listing
// the methods the path has (grpc-gateway said 501 UNIMPLEMENTED); an unknown path stays 404.
func TestHTTPMethodNotAllowed(t *testing.T) {
	e := startEnv(t, nil)
	for _, tc := range []struct {
		method, path, wantAllow string
	}{
		{http.MethodPut, "/v1/outbox/emails", "GET, POST"},
		{http.MethodPut, "/v1/users/eva", "GET, PATCH, DELETE"},
		{http.MethodDelete, "/v1/outbox/emails:watch", "GET"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			var st rpcStatus
			resp := e.call(tc.method, tc.path, e.as("eva"), nil, &st)
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != tc.wantAllow {
				t.Fatalf("%s Allow %q %+v, want 405 Allow %q", resp.Status, resp.Header.Get("Allow"), st, tc.wantAllow)
			}
		})
	}
	if resp := e.call(http.MethodPut, "/v1/nothing", e.as("eva"), nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown path: %s, want 404", resp.Status)
	}
}

// upstream is a gRPC server standing in for a service: every call fails with the status the
// caller names in its x-want metadata (over HTTP: the Grpc-Metadata-X-Want header), so the
// gateway's mapping of codes no real service returns on demand can be seen over real HTTP.
func upstream(t *testing.T, statuses map[string]*status.Status) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		if want := md.Get("x-want"); len(want) == 1 && statuses[want[0]] != nil {
			return statuses[want[0]].Err()
		}
		return status.Error(codes.Unimplemented, "no status asked for")
	}))
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

func withDetails(t *testing.T, code codes.Code, msg string, details ...*errdetails.RetryInfo) *status.Status {
	t.Helper()
	st := status.New(code, msg)
	for _, d := range details {
		var err error
		if st, err = st.WithDetails(d); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// TestHTTPStatusCodes: the HTTP side follows docs/architecture.md's table: a message over the
// size limit is 413 and too many recipients 400 (RESOURCE_EXHAUSTED that waiting does not fix is
// never 429), a version mismatch is 409, UNAVAILABLE is 503 with Retry-After from its RetryInfo,
// a quota with RetryInfo stays 429, and every 5xx is logged at ERROR.
func TestHTTPStatusCodes(t *testing.T) {
	retry := &errdetails.RetryInfo{RetryDelay: durationpb.New(2500 * time.Millisecond)}
	fake := upstream(t, map[string]*status.Status{
		"unavailable": withDetails(t, codes.Unavailable, "redis is down", retry),
		"internal":    status.New(codes.Internal, "internal error"),
		"quota":       withDetails(t, codes.ResourceExhausted, "daily quota", retry),
	})
	e := startEnv(t, func(c *app.Config) { c.MaxBodyBytes, c.TrackerAddr = 4<<20, fake })
	e.seed()
	eva, admin := e.as("eva"), e.admin()
	recipients := make([]string, 51)
	for i := range recipients {
		recipients[i] = "r" + strings.Repeat("x", i%5) + "@example.com"
	}
	for _, tc := range []struct {
		name, method, path, token string
		body                      any
		header                    []string
		wantHTTP                  int
		wantRetryAfter            string
	}{
		{"message over the size limit", http.MethodPost, "/v1/outbox/emails", eva,
			map[string]any{"fromAddress": "eva@kanzlei.example", "to": []string{"a@example.com"}, "subject": "gross", "textBody": strings.Repeat("x", 3<<19)},
			nil, http.StatusRequestEntityTooLarge, ""},
		{"too many recipients", http.MethodPost, "/v1/outbox/emails", eva,
			map[string]any{"fromAddress": "eva@kanzlei.example", "to": recipients, "subject": "viele", "textBody": "x"},
			nil, http.StatusBadRequest, ""},
		{"version mismatch", http.MethodPatch, "/v1/outbox/connectors/default?update_mask=host", admin,
			map[string]any{"host": "127.0.0.1", "version": 99},
			nil, http.StatusConflict, ""},
		{"unavailable with RetryInfo", http.MethodGet, "/v1/tracker/settings", admin, nil,
			[]string{"Grpc-Metadata-X-Want", "unavailable"}, http.StatusServiceUnavailable, "3"},
		{"a quota that frees up", http.MethodGet, "/v1/tracker/settings", admin, nil,
			[]string{"Grpc-Metadata-X-Want", "quota"}, http.StatusTooManyRequests, "3"},
		{"internal", http.MethodGet, "/v1/tracker/settings", admin, nil,
			[]string{"Grpc-Metadata-X-Want", "internal"}, http.StatusInternalServerError, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st rpcStatus
			resp := e.call(tc.method, tc.path, tc.token, tc.body, &st, tc.header...)
			if resp.StatusCode != tc.wantHTTP || resp.Header.Get("Retry-After") != tc.wantRetryAfter {
				t.Fatalf("%s Retry-After %q %+v, want %d Retry-After %q", resp.Status, resp.Header.Get("Retry-After"), st, tc.wantHTTP, tc.wantRetryAfter)
			}
		})
	}
	// Every 5xx is logged at ERROR with its code; a 4xx stays INFO.
	poll.Eventually(t, "the log lines of the 5xx", func() bool {
		var n int
		for _, line := range strings.Split(e.logs.String(), "\n") {
			var l struct {
				Level  string `json:"level"`
				Status int    `json:"status"`
				Code   string `json:"code"`
			}
			if json.Unmarshal([]byte(line), &l) != nil || l.Status == 0 {
				continue
			}
			if (l.Status >= 500) != (l.Level == "ERROR") {
				t.Errorf("status %d logged at %s", l.Status, l.Level)
			}
			if l.Status >= 500 && l.Code != "" {
				n++
			}
		}
		return n == 2
	})
}

// TestHTTPMe: "me" in a user-id path variable is the caller, in every service that has such a
// path; a service without the caller's own user (an admin reading someone else) is unaffected.
func TestHTTPMe(t *testing.T) {
	e := startEnv(t, nil)
	e.seed()
	eva := e.as("eva")
	for _, tc := range []struct{ path, jsonPath string }{
		{"/v1/users/me", "user"},
		{"/v1/outbox/users/me/settings", "settings"},
		{"/v1/tracker/users/me/settings", "settings"},
		{"/v1/calendar/users/me/settings", "settings"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			var got map[string]struct {
				UserID string `json:"userId"`
			}
			var raw json.RawMessage
			resp := e.call(http.MethodGet, tc.path, eva, nil, &raw)
			if err := json.Unmarshal(raw, &got); err != nil || resp.StatusCode != http.StatusOK || got[tc.jsonPath].UserID != "eva" {
				t.Fatalf("%s %s, want eva's", resp.Status, raw)
			}
		})
	}
	t.Run("sent items", func(t *testing.T) {
		var st rpcStatus
		if resp := e.call(http.MethodGet, "/v1/users/me/sentItems", eva, nil, &st); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %+v", resp.Status, st)
		}
	})
	t.Run("an update", func(t *testing.T) {
		var got struct {
			Settings struct {
				UserID    string `json:"userId"`
				UndoDelay string `json:"undoDelay"`
			} `json:"settings"`
		}
		resp := e.call(http.MethodPatch, "/v1/outbox/users/me/settings", eva, map[string]any{"undoDelay": "5s"}, &got)
		if resp.StatusCode != http.StatusOK || got.Settings.UserID != "eva" || got.Settings.UndoDelay != "5s" {
			t.Fatalf("%s %+v", resp.Status, got)
		}
	})
}

// TestHTTPUpdateMask: what the README says about update_mask over HTTP: a PATCH changes the
// fields its body names, or those of ?update_mask= (proto names, comma-separated); an
// "updateMask" inside the body of such a route is an unknown field of the resource.
func TestHTTPUpdateMask(t *testing.T) {
	e := startEnv(t, nil)
	e.seed()
	admin := e.admin()
	type user struct {
		User struct {
			DisplayName string `json:"displayName"`
			Email       string `json:"email"`
		} `json:"user"`
	}
	var got user
	if resp := e.call(http.MethodPatch, "/v1/users/eva", admin, map[string]any{"displayName": "Eva B."}, &got); resp.StatusCode != http.StatusOK ||
		got.User.DisplayName != "Eva B." || got.User.Email != "eva@kanzlei.example" {
		t.Fatalf("mask from the body: %s %+v", resp.Status, got)
	}
	if resp := e.call(http.MethodPatch, "/v1/users/eva?update_mask=display_name", admin, map[string]any{"displayName": "Eva C.", "email": "x@kanzlei.example"}, &got); resp.StatusCode != http.StatusOK ||
		got.User.DisplayName != "Eva C." || got.User.Email != "eva@kanzlei.example" {
		t.Fatalf("mask in the query: %s %+v", resp.Status, got)
	}
	var st rpcStatus
	if resp := e.call(http.MethodPatch, "/v1/users/eva", admin, map[string]any{"displayName": "Eva D.", "updateMask": "displayName"}, &st); resp.StatusCode != http.StatusBadRequest ||
		!slices.Contains(st.fieldViolations(), "user.updateMask") {
		t.Fatalf("mask in the body: %s %+v", resp.Status, st)
	}
}
