package auth

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
)

// claims is the token body: registered claims (sub is the user) plus the tenant, teams, roles and,
// for service credentials, the service name.
type claims struct {
	jwt.RegisteredClaims
	Tenant  string   `json:"tid,omitempty"`
	Teams   []string `json:"teams,omitempty"`
	Roles   []string `json:"roles,omitempty"`
	Service string   `json:"svc,omitempty"`
}

// maxTokenBytes bounds what is parsed at all; real tokens are far smaller.
const maxTokenBytes = 8 << 10

// Verifier checks tokens. It accepts only the algorithms whose keys are configured (HS256 for a
// secret, RS256 and EdDSA for a JWKS), so a token cannot choose a weaker algorithm, "none", or
// have a public key used as an HMAC secret. The keys of a JWKS file or URL are kept current
// while it runs (keySource): a rotation needs no restart.
type Verifier struct {
	secret  []byte
	sources []*keySource
	parser  *jwt.Parser
	cache   *verifiedCache
}

// VerifierOption adjusts what NewVerifier builds.
type VerifierOption func(*verifierOptions)

type verifierOptions struct {
	log    *slog.Logger
	client *http.Client
	now    func() time.Time
}

// WithLogger makes the verifier log key reloads and failed fetches to l (default: nowhere).
func WithLogger(l *slog.Logger) VerifierOption {
	return func(o *verifierOptions) { o.log = l }
}

// WithHTTPClient fetches AUTH_JWKS_URL with c (default: a client with a 10 s timeout), for a
// private CA or a proxy.
func WithHTTPClient(c *http.Client) VerifierOption {
	return func(o *verifierOptions) { o.client = c }
}

// NewVerifier builds a Verifier from cfg: HS256 from the secret and/or the RS256/EdDSA keys of
// the JWKS file and URL; at least one must be configured. The file must be readable at start;
// a URL that cannot be fetched at start is logged and fetched again at the next token.
func NewVerifier(cfg Config, opts ...VerifierOption) (*Verifier, error) {
	o := verifierOptions{log: slog.New(slog.DiscardHandler), client: &http.Client{Timeout: fetchTimeout}, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	v := &Verifier{cache: newVerifiedCache(o.now)}
	var methods []string
	if cfg.HS256Secret != "" {
		if len(cfg.HS256Secret) < MinSecretBytes {
			return nil, fmt.Errorf("AUTH_HS256_SECRET must be at least %d bytes", MinSecretBytes)
		}
		v.secret = []byte(cfg.HS256Secret)
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	if cfg.JWKSFile != "" {
		s := &keySource{name: "AUTH_JWKS_FILE", path: cfg.JWKSFile, now: o.now, log: o.log, changed: v.cache.reset}
		if _, err := s.loadFile(true); err != nil {
			return nil, err
		}
		v.sources = append(v.sources, s)
	}
	if cfg.JWKSURL != "" {
		if !strings.HasPrefix(cfg.JWKSURL, "https://") && !strings.HasPrefix(cfg.JWKSURL, "http://") {
			return nil, fmt.Errorf("AUTH_JWKS_URL %q: want an https:// (or http://) URL", cfg.JWKSURL)
		}
		refresh := cfg.JWKSRefresh
		if refresh <= 0 {
			refresh = 5 * time.Minute
		}
		s := &keySource{name: "AUTH_JWKS_URL", url: cfg.JWKSURL, client: o.client, refresh: refresh, now: o.now, log: o.log, changed: v.cache.reset}
		if _, err := s.fetch(); err != nil {
			o.log.Warn("auth: the JWKS URL could not be fetched at start; fetching again at the next token", "error", err)
		}
		v.sources = append(v.sources, s)
	}
	if len(v.sources) > 0 {
		// Both, whatever the keys are now: a rotation may bring the other kind.
		methods = append(methods, jwt.SigningMethodRS256.Alg(), jwt.SigningMethodEdDSA.Alg())
	}
	if len(methods) == 0 {
		return nil, errors.New("no token keys configured: set AUTH_JWKS_FILE or AUTH_JWKS_URL or, for development, AUTH_HS256_SECRET")
	}
	aud := cfg.Audience
	if aud == "" {
		aud = DefaultAudience
	}
	popts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		// iat in the future (beyond the leeway) is refused like nbf: such a token was minted by a
		// clock that cannot be trusted, or made to outlive its issuer's intent.
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithAudience(aud),
	}
	if cfg.Issuer != "" {
		popts = append(popts, jwt.WithIssuer(cfg.Issuer))
	}
	v.parser = jwt.NewParser(popts...)
	return v, nil
}

// Verify checks a token (signature, algorithm, exp, nbf, iat, aud, iss, a well-formed tenant
// id: ids.ValidTenant) and returns its principal.
// Every failure is an errs.Unauthenticated error that says "expired" or "invalid", never which
// check failed; the cause is kept for logs.
func (v *Verifier) Verify(token string) (Principal, error) {
	if len(token) > maxTokenBytes {
		return Principal{}, errs.Unauthenticated("invalid token", errors.New("token too long"))
	}
	for _, s := range v.sources {
		s.poll() // may reload the keys and empty the cache
	}
	if p, ok := v.cache.get(token); ok {
		return p, nil
	}
	var c claims
	if _, err := v.parser.ParseWithClaims(token, &c, v.key); err != nil {
		msg := "invalid token"
		if errors.Is(err, jwt.ErrTokenExpired) {
			msg = "token expired"
		}
		return Principal{}, errs.Unauthenticated(msg, err)
	}
	if c.Tenant == "" {
		return Principal{}, errs.Unauthenticated("invalid token", errors.New("no tenant (tid) claim"))
	}
	// A tenant id scopes every Redis key and event of the request: a malformed one ("../x", a
	// control character, 5,000 bytes) is refused here, once for every service, rather than by
	// whichever service happens to check (mailbox did, the others stored it).
	if !ids.ValidTenant(c.Tenant) {
		return Principal{}, errs.Unauthenticated("invalid token", errors.New("malformed tenant (tid) claim"))
	}
	if c.Service == "" && c.Subject == "" {
		return Principal{}, errs.Unauthenticated("invalid token", errors.New("neither a user (sub) nor a service (svc) claim"))
	}
	p := Principal{Tenant: c.Tenant, Teams: c.Teams, Roles: c.Roles, Service: c.Service}
	if c.Service == "" {
		p.User = c.Subject
	}
	// Cached until exp without the leeway: the cache never extends a token's life.
	v.cache.put(token, p, c.ExpiresAt.Time)
	return p, nil
}

// key picks the verification key by algorithm, then by kid, from every JWKS source. A token
// without a kid is accepted only when exactly one key of its algorithm is configured. A kid no
// key has makes the sources reload (rate-limited) before the token is refused: it may be the
// first token signed with a new key.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	kid, _ := t.Header["kid"].(string)
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		return v.secret, nil
	case *jwt.SigningMethodRSA:
		return pickReloading(v, kid, func(s *keySet) map[string]*rsa.PublicKey { return s.rsa })
	case *jwt.SigningMethodEd25519:
		return pickReloading(v, kid, func(s *keySet) map[string]ed25519.PublicKey { return s.ed })
	}
	return nil, fmt.Errorf("unexpected signing method %v", t.Header["alg"])
}

func pickReloading[K any](v *Verifier, kid string, of func(*keySet) map[string]K) (K, error) {
	if k, ok := pick(v.sources, kid, of); ok || kid == "" {
		return k, errIf(!ok, kid)
	}
	changed := false
	for _, s := range v.sources {
		if s.reload() {
			changed = true
		}
	}
	if !changed {
		var zero K
		return zero, errIf(true, kid)
	}
	k, ok := pick(v.sources, kid, of)
	return k, errIf(!ok, kid)
}

func errIf(missing bool, kid string) error {
	if missing {
		return fmt.Errorf("no key with kid %q for the token's algorithm", kid)
	}
	return nil
}

func pick[K any](sources []*keySource, kid string, of func(*keySet) map[string]K) (K, bool) {
	var zero K
	if kid == "" {
		var only K
		n := 0
		for _, s := range sources {
			for _, k := range of(s.current()) {
				only = k
				n++
			}
		}
		return only, n == 1
	}
	for _, s := range sources {
		if k, ok := of(s.current())[kid]; ok {
			return k, true
		}
	}
	return zero, false
}

// Signer mints tokens: development tokens (`postamt token`) and service credentials. It signs
// with the private key file (RS256 or EdDSA by the key's type) when configured, else with the
// HS256 secret. The key file is read again every 2 s when tokens are minted and reloaded when
// it changed (a Secret update swaps a symlink, like a ConfigMap's), so a service's key rotates
// without a restart; a file that cannot be read keeps the key loaded before.
type Signer struct {
	cur      atomic.Pointer[signingKey]
	path     string // AUTH_SIGNING_KEY_FILE; empty for HS256
	fixedKid string // AUTH_SIGNING_KEY_ID
	nextPoll atomic.Int64
	mu       sync.Mutex // serialises reloads
	content  []byte     // the key file's content at the last load
	audience string
	issuer   string
	now      func() time.Time
}

// signingKey is what a Signer signs with.
type signingKey struct {
	method jwt.SigningMethod
	key    any
	pub    any // public key of an asymmetric signer, for MarshalJWKS
	kid    string
}

// NewSigner builds a Signer from cfg: AUTH_SIGNING_KEY_FILE (PEM, PKCS#8 or PKCS#1, RSA of at
// least 2048 bits or Ed25519) when set, else AUTH_HS256_SECRET.
func NewSigner(cfg Config) (*Signer, error) {
	s := &Signer{audience: cfg.Audience, issuer: cfg.Issuer, fixedKid: cfg.SigningKeyID, now: time.Now}
	if s.audience == "" {
		s.audience = DefaultAudience
	}
	switch {
	case cfg.SigningKeyFile != "":
		s.path = cfg.SigningKeyFile
		if _, err := s.loadKey(); err != nil {
			return nil, err
		}
	case cfg.HS256Secret != "":
		if len(cfg.HS256Secret) < MinSecretBytes {
			return nil, fmt.Errorf("AUTH_HS256_SECRET must be at least %d bytes", MinSecretBytes)
		}
		s.cur.Store(&signingKey{method: jwt.SigningMethodHS256, key: []byte(cfg.HS256Secret)})
	default:
		return nil, errors.New("no signing key: set AUTH_SIGNING_KEY_FILE or, for development, AUTH_HS256_SECRET")
	}
	return s, nil
}

// loadKey reads the key file and loads it when its content changed since the last load, and
// reports whether it did.
func (s *Signer) loadKey() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := os.ReadFile(s.path)
	if err != nil {
		return false, fmt.Errorf("read AUTH_SIGNING_KEY_FILE: %w", err)
	}
	if s.content != nil && bytes.Equal(b, s.content) {
		return false, nil
	}
	key, err := parsePrivateKey(s.path, b)
	if err != nil {
		return false, err
	}
	k := &signingKey{kid: s.fixedKid}
	switch pk := key.(type) {
	case *rsa.PrivateKey:
		k.method, k.key, k.pub = jwt.SigningMethodRS256, pk, &pk.PublicKey
	case ed25519.PrivateKey:
		k.method, k.key, k.pub = jwt.SigningMethodEdDSA, pk, pk.Public()
	}
	if k.kid == "" {
		k.kid = thumbprint(k.pub)
	}
	s.content = b
	s.cur.Store(k)
	return true, nil
}

// key returns the key to sign with, re-reading the key file first when its poll is due.
func (s *Signer) key() *signingKey {
	if s.path != "" {
		now := s.now().UnixNano()
		next := s.nextPoll.Load()
		if now >= next && s.nextPoll.CompareAndSwap(next, now+int64(filePollInterval)) {
			_, _ = s.loadKey() // a file that cannot be read now keeps the key loaded before
		}
	}
	return s.cur.Load()
}

// Algorithm is the JWT alg the signer writes: HS256, RS256 or EdDSA.
func (s *Signer) Algorithm() string { return s.key().method.Alg() }

// KeyID is the kid the signer writes; empty for HS256.
func (s *Signer) KeyID() string { return s.key().kid }

// Mint signs a token for p, valid from now for ttl. A user principal needs Tenant and User, a
// service principal Tenant and Service; anything else would be rejected by every Verifier, so it
// is refused here already.
func (s *Signer) Mint(p Principal, ttl time.Duration) (string, error) {
	switch {
	case p.Tenant == "":
		return "", errors.New("mint token: principal has no tenant")
	case !ids.ValidTenant(p.Tenant):
		return "", fmt.Errorf("mint token: malformed tenant id %s", errs.Quote(p.Tenant))
	case p.User == "" && p.Service == "":
		return "", errors.New("mint token: principal has neither a user nor a service")
	case ttl <= 0:
		return "", fmt.Errorf("mint token: ttl %s is not positive", ttl)
	}
	now := s.now()
	c := claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   p.User,
			Issuer:    s.issuer,
			Audience:  jwt.ClaimStrings{s.audience},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Tenant: p.Tenant, Teams: p.Teams, Roles: p.Roles, Service: p.Service,
	}
	if p.Service != "" {
		c.Subject = ""
	}
	k := s.key()
	t := jwt.NewWithClaims(k.method, c)
	if k.kid != "" {
		t.Header["kid"] = k.kid
	}
	signed, err := t.SignedString(k.key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return signed, nil
}
