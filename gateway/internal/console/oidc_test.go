package console

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/testkit/authtest"
)

// fakeIdP is an OpenID provider that signs everyone in at once: it answers the authorization
// request with a code, and redeems the code only with the PKCE verifier of its challenge.
type fakeIdP struct {
	srv         *httptest.Server
	accessToken string
	mu          sync.Mutex
	grants      map[string][2]string // code -> challenge, nonce
	badNonce    bool
}

func startIdP(t *testing.T, accessToken string) *fakeIdP {
	t.Helper()
	idp := &fakeIdP{accessToken: accessToken, grants: map[string][2]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{
			"issuer": idp.srv.URL, "authorization_endpoint": idp.srv.URL + "/authorize", "token_endpoint": idp.srv.URL + "/token",
		})
	})
	mux.HandleFunc("GET /authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("code_challenge_method") != "S256" || q.Get("response_type") != "code" || q.Get("client_id") != "console" {
			http.Error(w, "bad authorization request", http.StatusBadRequest)
			return
		}
		idp.mu.Lock()
		idp.grants["c0de"] = [2]string{q.Get("code_challenge"), q.Get("nonce")}
		idp.mu.Unlock()
		http.Redirect(w, r, q.Get("redirect_uri")+"?code=c0de&state="+url.QueryEscape(q.Get("state")), http.StatusFound) //nolint:gosec // G710: the fake provider of a test
	})
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		idp.mu.Lock()
		g, ok := idp.grants[r.PostForm.Get("code")]
		delete(idp.grants, r.PostForm.Get("code"))
		idp.mu.Unlock()
		sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
		if user, pass, _ := r.BasicAuth(); !ok || base64.RawURLEncoding.EncodeToString(sum[:]) != g[0] || user != "console" || pass != "s3cret" {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_grant"}`))
			return
		}
		nonce := g[1]
		if idp.badNonce {
			nonce = "other"
		}
		claims, _ := json.Marshal(map[string]any{"iss": idp.srv.URL, "aud": "console", "nonce": nonce, "exp": time.Now().Add(time.Hour).Unix()})
		id := "e30." + base64.RawURLEncoding.EncodeToString(claims) + ".sig"
		_ = json.NewEncoder(w).Encode(map[string]string{"access_token": idp.accessToken, "id_token": id, "token_type": "Bearer"})
	})
	idp.srv = httptest.NewServer(mux)
	t.Cleanup(idp.srv.Close)
	return idp
}

func TestOIDCSignIn(t *testing.T) {
	v, s := authtest.Keys(t)
	token, err := s.Mint(auth.Principal{Tenant: "kanzlei", User: "max"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		badNonce bool
		signedIn bool
	}{
		{"code flow with PKCE", false, true},
		{"an ID token for another sign-in", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idp := startIdP(t, token)
			idp.badNonce = tc.badNonce
			var gw *httptest.Server
			var c *Console
			gw = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { c.ServeHTTP(w, r) }))
			t.Cleanup(gw.Close)
			c, err = New(Options{Verifier: v, OIDC: &OIDC{Issuer: idp.srv.URL, ClientID: "console", ClientSecret: "s3cret", RedirectURL: gw.URL + "/console/callback"}})
			if err != nil {
				t.Fatal(err)
			}
			jar, _ := cookiejar.New(nil)
			browser := &http.Client{Jar: jar}
			resp, err := browser.Get(gw.URL + "/console/signin")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.Request.URL.Path; (got == "/console/") != tc.signedIn || (!tc.signedIn && got != "/console/signin.html") {
				t.Fatalf("the flow ended at %s", resp.Request.URL)
			}
			req, _ := http.NewRequest(http.MethodGet, gw.URL+"/console/session", nil)
			req.Header.Set(CSRFHeader, "1")
			resp, err = browser.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var sess Session
			_ = json.NewDecoder(resp.Body).Decode(&sess)
			if got := resp.StatusCode == http.StatusOK && sess.User == "max"; got != tc.signedIn {
				t.Errorf("session: %s %+v; signed in %v, want %v", resp.Status, sess, got, tc.signedIn)
			}
		})
	}
}

func TestOIDCCallbackNeedsItsState(t *testing.T) {
	v, _ := authtest.Keys(t)
	idp := startIdP(t, "unused")
	c, err := New(Options{Verifier: v, OIDC: &OIDC{Issuer: idp.srv.URL, ClientID: "console", RedirectURL: "http://127.0.0.1/console/callback"}})
	if err != nil {
		t.Fatal(err)
	}
	// A callback the browser did not start (no flow cookie): login CSRF with someone else's code.
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://127.0.0.1/console/callback?code=c0de&state=x", nil))
	if loc := rec.Header().Get("Location"); !strings.Contains(loc, "error=oidc") || sessionCookie(t, rec) != nil && sessionCookie(t, rec).Value != "" {
		t.Errorf("callback without the flow's cookie: Location %q, cookie %+v", loc, sessionCookie(t, rec))
	}
}
