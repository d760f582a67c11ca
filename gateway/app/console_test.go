package app_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/postamt/postamt/gateway/app"
	"github.com/postamt/postamt/internal/auth"
)

// TestConsoleCookie: the HTTP API takes the console's session cookie in place of a bearer token
// only from the console's own scripts (its header, its origin), and a bearer token wins.
func TestConsoleCookie(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the suite")
	}
	e := startEnv(t, func(c *app.Config) { c.Console = true })
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, e.httpURL+"/console/signin",
		strings.NewReader(url.Values{"token": {e.admin()}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", e.httpURL)
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var session *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "postamt_session" {
			session = c
		}
	}
	if resp.StatusCode != http.StatusSeeOther || session == nil || !session.HttpOnly {
		t.Fatalf("sign-in: %s, cookie %+v; want 303 and an HttpOnly session cookie", resp.Status, session)
	}
	bad := e.token(auth.Principal{Tenant: "kanzlei", User: "admin"}) + "x"
	for _, tc := range []struct {
		name                 string
		cookie, header       bool
		origin, site, bearer string
		want                 int
	}{
		{"the console's call", true, true, e.httpURL, "same-origin", "", http.StatusOK},
		{"a GET without Origin from the console", true, true, "", "same-origin", "", http.StatusOK},
		{"without the console's header", true, false, e.httpURL, "same-origin", "", http.StatusForbidden},
		{"from another site", true, true, "https://evil.example", "cross-site", "", http.StatusForbidden},
		{"from another origin of the same site", true, true, "http://127.0.0.1:1", "same-site", "", http.StatusForbidden},
		{"no cookie, no token", false, true, e.httpURL, "same-origin", "", http.StatusUnauthorized},
		{"a bad bearer token beside a good cookie", true, true, e.httpURL, "same-origin", bad, http.StatusUnauthorized},
		{"a good bearer token without the console's header", true, false, "", "", e.admin(), http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, e.httpURL+"/v1/outbox/emails:count", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.cookie {
				req.AddCookie(session)
			}
			if tc.header {
				req.Header.Set("X-Postamt-Console", "1")
			}
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			if tc.site != "" {
				req.Header.Set("Sec-Fetch-Site", tc.site)
			}
			if tc.bearer != "" {
				req.Header.Set("Authorization", "Bearer "+tc.bearer)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status %s, want %d", resp.Status, tc.want)
			}
		})
	}
}
