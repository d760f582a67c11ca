package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// OIDC configures sign-in with the deployment's identity provider: the OpenID Connect
// authorization code flow with PKCE, the gateway as the client. The access token the provider
// issues must be a token the suite verifies (AUTH_JWKS_FILE, its tid/sub/roles/teams claims,
// aud postamt); it goes into the session cookie as a pasted token would.
type OIDC struct {
	// Issuer is the provider's issuer URL; its discovery document is read from
	// Issuer + "/.well-known/openid-configuration" at the first sign-in.
	Issuer string
	// ClientID is the gateway's client id at the provider.
	ClientID string
	// ClientSecret authenticates a confidential client at the token endpoint (HTTP Basic);
	// empty for a public client, which PKCE alone protects.
	ClientSecret string
	// RedirectURL is this gateway's callback, https://<gateway>/console/callback, as registered.
	RedirectURL string
	// Scopes requested; "openid" is always among them.
	Scopes []string
	// HTTPClient talks to the provider; nil means a client with a 10 s timeout.
	HTTPClient *http.Client
}

// oidcCookie carries state, nonce and the PKCE verifier from the redirect to the callback.
// SameSite=Lax, because the callback is a top-level navigation from the provider's site.
const oidcCookie = "postamt_oidc"

// oidcFlow runs the flow; it caches the provider's endpoints once discovered.
type oidcFlow struct {
	cfg  OIDC
	now  func() time.Time
	mu   sync.Mutex
	meta *discovery
}

type discovery struct {
	Issuer                string `json:"issuer"`
	AuthorizationEndpoint string `json:"authorization_endpoint"`
	TokenEndpoint         string `json:"token_endpoint"`
}

func newOIDCFlow(cfg OIDC, now func() time.Time) *oidcFlow {
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if !slices.Contains(cfg.Scopes, "openid") {
		cfg.Scopes = append([]string{"openid"}, cfg.Scopes...)
	}
	return &oidcFlow{cfg: cfg, now: now}
}

// discover reads (once) the provider's discovery document.
func (f *oidcFlow) discover(ctx context.Context) (*discovery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.meta != nil {
		return f.meta, nil
	}
	u := strings.TrimSuffix(f.cfg.Issuer, "/") + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil) //nolint:gosec // G704: the operator's configured issuer, not a request's
	if err != nil {
		return nil, fmt.Errorf("oidc discovery: %w", err)
	}
	resp, err := f.cfg.HTTPClient.Do(req) //nolint:gosec // G704: as above
	if err != nil {
		return nil, fmt.Errorf("oidc discovery: %w", err)
	}
	defer resp.Body.Close() //nolint:errcheck // a read-only body: nothing to do about a failed close
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("oidc discovery: %s answered %s", u, resp.Status)
	}
	var d discovery
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&d); err != nil {
		return nil, fmt.Errorf("oidc discovery: %w", err)
	}
	if d.Issuer != f.cfg.Issuer || d.AuthorizationEndpoint == "" || d.TokenEndpoint == "" {
		return nil, fmt.Errorf("oidc discovery: issuer %q (want %q) or endpoints missing", d.Issuer, f.cfg.Issuer)
	}
	f.meta = &d
	return f.meta, nil
}

func random() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// start redirects the browser to the provider with a fresh state, nonce and PKCE challenge.
func (f *oidcFlow) start(w http.ResponseWriter, r *http.Request) error {
	d, err := f.discover(r.Context())
	if err != nil {
		return err
	}
	state, nonce, verifier := random(), random(), random()
	sum := sha256.Sum256([]byte(verifier))
	q := url.Values{
		"response_type": {"code"}, "client_id": {f.cfg.ClientID}, "redirect_uri": {f.cfg.RedirectURL},
		"scope": {strings.Join(f.cfg.Scopes, " ")}, "state": {state}, "nonce": {nonce},
		"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"},
	}
	http.SetCookie(w, &http.Cookie{ //nolint:gosec // G124: HttpOnly; Lax because the provider's redirect back is cross-site; Secure as the session cookie
		Name: oidcCookie, Value: state + "." + nonce + "." + verifier, Path: Path + "callback", MaxAge: 600,
		HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteLaxMode,
	})
	sep := "?"
	if strings.Contains(d.AuthorizationEndpoint, "?") {
		sep = "&"
	}
	http.Redirect(w, r, d.AuthorizationEndpoint+sep+q.Encode(), http.StatusSeeOther)
	return nil
}

// errOIDC is a callback the flow refuses; the cause is logged, the browser sees the sign-in page.
var errOIDC = errors.New("oidc sign-in refused")

// finish checks the callback's state, redeems the code with the PKCE verifier and returns the
// access token, after checking the ID token's issuer, audience, nonce and expiry. The ID token
// comes straight from the token endpoint over TLS, so its signature need not be checked (OpenID
// Connect Core 3.1.3.7); the access token is verified by the caller with the suite's keys.
func (f *oidcFlow) finish(w http.ResponseWriter, r *http.Request) (string, error) {
	ck, err := r.Cookie(oidcCookie)
	http.SetCookie(w, &http.Cookie{ //nolint:gosec // G124: clears the flow's cookie
		Name: oidcCookie, Value: "", Path: Path + "callback", MaxAge: -1, HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteLaxMode,
	})
	if err != nil {
		return "", fmt.Errorf("%w: no flow cookie (expired, or another browser)", errOIDC)
	}
	parts := strings.Split(ck.Value, ".")
	q := r.URL.Query()
	if len(parts) != 3 || subtle.ConstantTimeCompare([]byte(parts[0]), []byte(q.Get("state"))) != 1 {
		return "", fmt.Errorf("%w: state does not match", errOIDC)
	}
	if e := q.Get("error"); e != "" {
		return "", fmt.Errorf("%w: the provider answered %s", errOIDC, e)
	}
	nonce, verifier := parts[1], parts[2]
	d, err := f.discover(r.Context())
	if err != nil {
		return "", err
	}
	form := url.Values{
		"grant_type": {"authorization_code"}, "code": {q.Get("code")}, "redirect_uri": {f.cfg.RedirectURL},
		"client_id": {f.cfg.ClientID}, "code_verifier": {verifier},
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, d.TokenEndpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("oidc token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if f.cfg.ClientSecret != "" {
		req.SetBasicAuth(url.QueryEscape(f.cfg.ClientID), url.QueryEscape(f.cfg.ClientSecret))
	}
	resp, err := f.cfg.HTTPClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("oidc token request: %w", err)
	}
	defer resp.Body.Close() //nolint:errcheck // a read-only body: nothing to do about a failed close
	var tok struct {
		AccessToken string `json:"access_token"`
		IDToken     string `json:"id_token"`
		Error       string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&tok); err != nil {
		return "", fmt.Errorf("oidc token response: %w", err)
	}
	if resp.StatusCode != http.StatusOK || tok.AccessToken == "" {
		return "", fmt.Errorf("%w: token endpoint answered %s %s", errOIDC, resp.Status, tok.Error)
	}
	if err := f.checkIDToken(tok.IDToken, nonce); err != nil {
		return "", err
	}
	return tok.AccessToken, nil
}

func (f *oidcFlow) checkIDToken(idToken, nonce string) error {
	parts := strings.Split(idToken, ".")
	if len(parts) != 3 {
		return fmt.Errorf("%w: no ID token", errOIDC)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return fmt.Errorf("%w: ID token: %w", errOIDC, err)
	}
	var c struct {
		Iss   string          `json:"iss"`
		Aud   json.RawMessage `json:"aud"`
		Nonce string          `json:"nonce"`
		Exp   int64           `json:"exp"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return fmt.Errorf("%w: ID token: %w", errOIDC, err)
	}
	var auds []string
	if json.Unmarshal(c.Aud, &auds) != nil {
		var one string
		_ = json.Unmarshal(c.Aud, &one) // neither form: no audience, refused below
		auds = []string{one}
	}
	switch {
	case c.Iss != f.cfg.Issuer:
		return fmt.Errorf("%w: ID token issuer %q", errOIDC, c.Iss)
	case !slices.Contains(auds, f.cfg.ClientID):
		return fmt.Errorf("%w: ID token not for this client", errOIDC)
	case subtle.ConstantTimeCompare([]byte(c.Nonce), []byte(nonce)) != 1:
		return fmt.Errorf("%w: ID token nonce does not match", errOIDC)
	case !f.now().Before(time.Unix(c.Exp, 0)):
		return fmt.Errorf("%w: ID token expired", errOIDC)
	}
	return nil
}
