// Package console serves the outbox console, the browser page of seed 003, at /console/: its
// assets (embedded, so the binary needs no files and the page loads nothing from another host),
// the sign-in that turns a token into an HttpOnly session cookie, and the check that lets the
// gateway's HTTP API accept that cookie from the console's own scripts only. The page never sees
// the token: a script on it (or injected into it) cannot read or send it anywhere.
package console

import (
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/auth"
)

// Path is where the console is served; every path below it is the console's.
const Path = "/console/"

// CookieName is the session cookie's name. It holds the caller's token, HttpOnly.
const CookieName = "postamt_session"

// CSRFHeader must be on every API request that authenticates with the session cookie. A page of
// another origin cannot send it without a CORS preflight, which the gateway does not grant for
// it, so its presence shows the request came from the console's own scripts.
const CSRFHeader = "X-Postamt-Console"

// securityHeaders go on every console response: scripts and styles only from the console's own
// files (no inline script), calls only to its own origin, never framed.
var securityHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
		"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
	"X-Content-Type-Options":       "nosniff",
	"Referrer-Policy":              "same-origin",
	"X-Frame-Options":              "DENY",
	"Cross-Origin-Opener-Policy":   "same-origin",
	"Cross-Origin-Resource-Policy": "same-origin",
}

//go:embed static
var static embed.FS

// Options configure the console.
type Options struct {
	// Verifier checks the tokens a sign-in presents, with the API's own rules.
	Verifier *auth.Verifier
	// Codes are the one-time sign-in codes of development (`postamt up`); nil offers none.
	Codes *Codes
	// Logger receives sign-in failures; nil discards them.
	Logger *slog.Logger
	// Now is the clock of cookie lifetimes; nil means time.Now.
	Now func() time.Time
	// OIDC, when set, signs people in with the identity provider (code flow with PKCE).
	OIDC *OIDC
}

// Console is the console's HTTP handler and the session check the API edge uses.
type Console struct {
	o      Options
	assets http.Handler
	oidc   *oidcFlow
}

// New returns the console.
func New(o Options) (*Console, error) {
	if o.Verifier == nil {
		return nil, errors.New("console: a verifier is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	sub, err := fs.Sub(static, "static")
	if err != nil {
		return nil, fmt.Errorf("console assets: %w", err)
	}
	c := &Console{o: o, assets: http.StripPrefix(Path, http.FileServerFS(sub))}
	if o.OIDC != nil {
		if o.OIDC.Issuer == "" || o.OIDC.ClientID == "" || o.OIDC.RedirectURL == "" {
			return nil, errors.New("console: OIDC needs an issuer, a client id and a redirect URL")
		}
		c.oidc = newOIDCFlow(*o.OIDC, o.Now)
	}
	return c, nil
}

// ServeHTTP serves the console's pages and its sign-in and sign-out.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	for k, v := range securityHeaders {
		w.Header().Set(k, v)
	}
	switch r.URL.Path {
	case Path + "signin":
		c.signIn(w, r)
	case Path + "callback":
		c.callback(w, r)
	case Path + "signout":
		c.signOut(w, r)
	case Path + "session":
		c.session(w, r)
	case Path + "providers":
		// Which sign-ins the sign-in page offers; no secret in it.
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"oidc":%t}`, c.oidc != nil) //nolint:gosec // G705: a constant JSON document with a bool
	default:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		// The page changes with every release of the binary: revalidate, never cache blindly.
		w.Header().Set("Cache-Control", "no-cache")
		c.assets.ServeHTTP(w, r)
	}
}

// signIn exchanges a one-time code (GET ?code=, the URL `postamt up` prints) or a pasted token
// (POST, form field "token") for the session cookie. A GET without a code starts the identity
// provider's sign-in when one is configured, and shows the sign-in page otherwise.
func (c *Console) signIn(w http.ResponseWriter, r *http.Request) {
	var token string
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		code := r.URL.Query().Get("code")
		if code == "" && c.oidc != nil && r.URL.Query().Get("form") == "" {
			if err := c.oidc.start(w, r); err != nil {
				c.o.Logger.LogAttrs(r.Context(), slog.LevelWarn, "console sign-in: identity provider unreachable", slog.Any("error", err))
				http.Redirect(w, r, Path+"signin.html?error=oidc", http.StatusSeeOther)
			}
			return
		}
		if code == "" {
			http.Redirect(w, r, Path+"signin.html", http.StatusSeeOther)
			return
		}
		t, ok := c.o.Codes.Take(code)
		if !ok {
			http.Redirect(w, r, Path+"signin.html?error=code", http.StatusSeeOther)
			return
		}
		token = t
	case http.MethodPost:
		// A sign-in from another site would sign the browser in as someone else (login CSRF).
		if !sameOrigin(r, true) {
			http.Error(w, "sign-in only from the console's own page", http.StatusForbidden)
			return
		}
		if err := r.ParseForm(); err != nil {
			http.Redirect(w, r, Path+"signin.html?error=token", http.StatusSeeOther)
			return
		}
		token = strings.TrimSpace(r.PostForm.Get("token"))
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	c.setSession(w, r, token)
}

// callback finishes the identity provider's sign-in.
func (c *Console) callback(w http.ResponseWriter, r *http.Request) {
	if c.oidc == nil || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	token, err := c.oidc.finish(w, r)
	if err != nil {
		c.o.Logger.LogAttrs(r.Context(), slog.LevelInfo, "console sign-in refused", slog.Any("error", err))
		http.Redirect(w, r, Path+"signin.html?error=oidc", http.StatusSeeOther)
		return
	}
	c.setSession(w, r, token)
}

// setSession puts a verified user token into the session cookie and sends the browser to the
// console; a token the suite does not accept sends it back to the sign-in page.
func (c *Console) setSession(w http.ResponseWriter, r *http.Request, token string) {
	p, err := c.o.Verifier.Verify(token)
	if err != nil || p.IsService() {
		c.o.Logger.LogAttrs(r.Context(), slog.LevelInfo, "console sign-in refused", slog.Any("error", err))
		http.Redirect(w, r, Path+"signin.html?error=token", http.StatusSeeOther)
		return
	}
	exp := expiry(token)
	maxAge := int(exp.Sub(c.o.Now()).Seconds())
	if exp.IsZero() || maxAge <= 0 {
		maxAge = 0 // a session cookie, gone with the browser
	}
	http.SetCookie(w, &http.Cookie{ //nolint:gosec // G124: HttpOnly and SameSite=Strict; Secure is off only on plain HTTP to a loopback host (secure)
		Name: CookieName, Value: token, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode,
	})
	// 303: the code (or the form) is spent; reloading the next page does not send it again.
	http.Redirect(w, r, Path, http.StatusSeeOther)
}

// signOut clears the cookie. Only the console's own page may sign the browser out.
func (c *Console) signOut(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !sameOrigin(r, true) {
		http.Error(w, "sign-out only from the console's own page", http.StatusForbidden)
		return
	}
	http.SetCookie(w, &http.Cookie{ //nolint:gosec // G124: as in signIn
		Name: CookieName, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode,
	})
	http.Redirect(w, r, Path+"signin.html?signedout=1", http.StatusSeeOther)
}

// Session is what the page learns about its caller: who they are, never their token.
type Session struct {
	Tenant  string    `json:"tenant"`
	User    string    `json:"user"`
	Roles   []string  `json:"roles"`
	Teams   []string  `json:"teams"`
	Admin   bool      `json:"admin"`
	Expires time.Time `json:"expires,omitzero"`
}

// session answers who is signed in, for the page's first call (401 when nobody is).
func (c *Console) session(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	token, err := c.Token(r)
	if err != nil || token == "" {
		http.Error(w, "not signed in", http.StatusUnauthorized)
		return
	}
	p, err := c.o.Verifier.Verify(token)
	if err != nil {
		http.Error(w, "not signed in", http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(Session{ //nolint:errchkjson // a failed write to the client has no one to tell
		Tenant: p.Tenant, User: p.User, Roles: p.Roles, Teams: p.Teams, Admin: p.IsAdmin(), Expires: expiry(token),
	})
}

// ErrCrossSite is returned by Token for a request that carries the session cookie but not the
// proof that the console's own scripts sent it.
var ErrCrossSite = errors.New("the session cookie is accepted only from the console's own page (X-Postamt-Console header, same origin)")

// Token returns the session cookie's token of a request that may use it: one with CSRFHeader
// whose Origin (when sent) is the gateway's own and whose Sec-Fetch-Site (when sent) is
// same-origin. No cookie is "", nil; a cookie without that proof is ErrCrossSite.
func (c *Console) Token(r *http.Request) (string, error) {
	ck, err := r.Cookie(CookieName)
	if errors.Is(err, http.ErrNoCookie) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("session cookie: %w", err)
	}
	if ck.Value == "" {
		return "", nil
	}
	if r.Header.Get(CSRFHeader) != "1" || !sameOrigin(r, false) {
		return "", ErrCrossSite
	}
	return ck.Value, nil
}

// sameOrigin reports whether the browser says the request came from the gateway's own origin.
// Browsers send Origin on every POST and Sec-Fetch-Site on every request; a check that requires
// Origin (form posts) refuses requests without it.
func sameOrigin(r *http.Request, requireOrigin bool) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return !requireOrigin
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	scheme := "http"
	if isHTTPS(r) {
		scheme = "https"
	}
	return subtle.ConstantTimeCompare([]byte(u.Scheme+"://"+u.Host), []byte(scheme+"://"+r.Host)) == 1
}

// isHTTPS reports whether the browser reached the gateway over TLS: directly, or through an
// ingress that terminates it (X-Forwarded-Proto).
func isHTTPS(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// secure reports whether the cookie must be Secure: always, except on plain HTTP to a loopback
// host (`postamt up` on a laptop), where a Secure cookie would never be sent back.
func secure(r *http.Request) bool {
	if isHTTPS(r) {
		return true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return false
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip == nil || !ip.IsLoopback()
}

// expiry reads a verified token's exp claim; zero when it has none.
func expiry(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}
	}
	var c struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(b, &c) != nil || c.Exp == 0 {
		return time.Time{}
	}
	return time.Unix(c.Exp, 0)
}
