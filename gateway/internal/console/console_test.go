package console

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/testkit/authtest"
)

func newConsole(t *testing.T) (*Console, string) {
	t.Helper()
	v, s := authtest.Keys(t)
	token, err := s.Mint(auth.Principal{Tenant: "kanzlei", User: "max", Roles: []string{"admin"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Options{Verifier: v, Codes: NewCodes(nil)})
	if err != nil {
		t.Fatal(err)
	}
	return c, token
}

func sessionCookie(t *testing.T, rec *httptest.ResponseRecorder) *http.Cookie {
	t.Helper()
	for _, c := range rec.Result().Cookies() {
		if c.Name == CookieName {
			return c
		}
	}
	return nil
}

func TestSignInWithCodeOnce(t *testing.T) {
	c, token := newConsole(t)
	code := c.o.Codes.Issue(token, time.Minute)
	for i, want := range []bool{true, false} {
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://127.0.0.1:8080/console/signin?code="+code, nil))
		ck := sessionCookie(t, rec)
		if got := ck != nil; got != want {
			t.Fatalf("use %d of the code: cookie set = %v, want %v", i+1, got, want)
		}
		if rec.Code != http.StatusSeeOther {
			t.Errorf("use %d: status %d, want 303", i+1, rec.Code)
		}
		if ck == nil {
			continue
		}
		if ck.Value != token || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure {
			t.Errorf("cookie on loopback http = %+v; want the token, HttpOnly, SameSite=Strict, not Secure", ck)
		}
	}
}

func TestCookieSecureOffLoopbackOnly(t *testing.T) {
	c, token := newConsole(t)
	for _, tc := range []struct {
		url, proto string
		secure     bool
	}{
		{"http://127.0.0.1:8080", "", false},
		{"http://localhost:8080", "", false},
		{"http://[::1]:8080", "", false},
		{"http://postamt.kanzlei.example", "", true},
		{"http://postamt.kanzlei.example", "https", true},
		{"http://127.0.0.1:8080", "https", true},
	} {
		code := c.o.Codes.Issue(token, time.Minute)
		r := httptest.NewRequest(http.MethodGet, tc.url+"/console/signin?code="+code, nil)
		if tc.proto != "" {
			r.Header.Set("X-Forwarded-Proto", tc.proto)
		}
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, r)
		ck := sessionCookie(t, rec)
		if ck == nil || ck.Secure != tc.secure {
			t.Errorf("%s (forwarded %q): cookie %+v, want Secure=%v", tc.url, tc.proto, ck, tc.secure)
		}
	}
}

func TestSignInWithTokenForm(t *testing.T) {
	c, token := newConsole(t)
	for _, tc := range []struct {
		name, origin, token string
		status              int
		cookie              bool
	}{
		{"same origin", "http://127.0.0.1:8080", token, http.StatusSeeOther, true},
		{"another site", "https://evil.example", token, http.StatusForbidden, false},
		{"no origin", "", token, http.StatusForbidden, false},
		{"bad token", "http://127.0.0.1:8080", "not-a-token", http.StatusSeeOther, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:8080/console/signin", strings.NewReader(url.Values{"token": {tc.token}}.Encode()))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tc.origin != "" {
				r.Header.Set("Origin", tc.origin)
			}
			rec := httptest.NewRecorder()
			c.ServeHTTP(rec, r)
			if rec.Code != tc.status || (sessionCookie(t, rec) != nil) != tc.cookie {
				t.Errorf("status %d, cookie %v; want %d, %v", rec.Code, sessionCookie(t, rec) != nil, tc.status, tc.cookie)
			}
		})
	}
}

func TestTokenNeedsSameOriginProof(t *testing.T) {
	c, token := newConsole(t)
	for _, tc := range []struct {
		name          string
		header        bool
		origin, fetch string
		wantToken     bool
	}{
		{"console fetch", true, "http://127.0.0.1:8080", "same-origin", true},
		{"console GET without Origin", true, "", "same-origin", true},
		{"no header", false, "http://127.0.0.1:8080", "same-origin", false},
		{"other origin", true, "https://evil.example", "cross-site", false},
		{"cross-site fetch", true, "", "cross-site", false},
		{"same-site sibling", true, "http://127.0.0.1:9999", "same-site", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:8080/v1/outbox/emails:retry", nil)
			r.AddCookie(&http.Cookie{Name: CookieName, Value: token}) //nolint:gosec // G124: a request's cookie has no attributes
			if tc.header {
				r.Header.Set(CSRFHeader, "1")
			}
			if tc.origin != "" {
				r.Header.Set("Origin", tc.origin)
			}
			r.Header.Set("Sec-Fetch-Site", tc.fetch)
			got, err := c.Token(r)
			if (got == token) != tc.wantToken || (err == nil) != tc.wantToken {
				t.Errorf("Token = %q, %v; want the token: %v", got, err, tc.wantToken)
			}
		})
	}
	if got, err := c.Token(httptest.NewRequest(http.MethodGet, "/v1/outbox/emails", nil)); got != "" || err != nil {
		t.Errorf("no cookie: Token = %q, %v; want none and no error", got, err)
	}
}

func TestPagesCarryCSP(t *testing.T) {
	c, _ := newConsole(t)
	for _, p := range []string{"/console/", "/console/signin.html", "/console/app.js"} {
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		if rec.Code != http.StatusOK {
			t.Errorf("%s: status %d", p, rec.Code)
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("%s: CSP %q", p, csp)
		}
	}
}

func TestCodesExpire(t *testing.T) {
	now := time.Now()
	codes := NewCodes(func() time.Time { return now })
	code := codes.Issue("t", time.Minute)
	now = now.Add(time.Minute)
	if _, ok := codes.Take(code); ok {
		t.Error("an expired code signed in")
	}
	var none *Codes
	if _, ok := none.Take("x"); ok {
		t.Error("nil Codes took a code")
	}
}
