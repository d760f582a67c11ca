package authtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/auth"
)

// MatrixPrincipal is who every token of BadTokens claims to be, apart from the claims a case
// breaks: an admin and operator of the tenant "matrix". A test that wants to see the RPC reached
// with a good token (so that the refusals are the verifier's, not a missing route's) mints one for
// it with auth.NewSigner(cfg).
var MatrixPrincipal = auth.Principal{Tenant: "matrix", User: "matrix-admin", Roles: []string{auth.RoleAdmin, "operator"}}

// MatrixIssuer is the issuer JWKSConfig requires.
const MatrixIssuer = "https://idp.authtest.example"

// keyPair are the asymmetric keys of JWKSConfig, made once per test binary: RSA key generation
// takes a noticeable part of a second.
type keyPair struct {
	rsa *rsa.PrivateKey
	ed  ed25519.PrivateKey
}

var matrixKeys = sync.OnceValues(func() (keyPair, error) {
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return keyPair{}, err
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return keyPair{}, err
	}
	return keyPair{rsa: r, ed: ed}, nil
})

// foreignKeys sign tokens no configuration trusts.
var foreignKeys = sync.OnceValues(func() (keyPair, error) {
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return keyPair{}, err
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return keyPair{}, err
	}
	return keyPair{rsa: r, ed: ed}, nil
})

// JWKSConfig returns a production-like configuration: no HS256 secret, a JWKS file (in
// tb.TempDir()) with an RSA and an Ed25519 public key, the RSA private key as the signing key (so
// auth.NewSigner(cfg) mints tokens the verifier accepts), an issuer and a leeway. It is the
// configuration the services' token-matrix tests run with: the one where "HS256 keyed with the
// public key" is the attack that matters.
func JWKSConfig(tb testing.TB) auth.Config {
	tb.Helper()
	k, err := matrixKeys()
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	rsaFile := writeKey(tb, dir, "rsa.pem", k.rsa)
	edFile := writeKey(tb, dir, "ed.pem", k.ed)
	cfg := auth.Config{
		Audience: auth.DefaultAudience, Issuer: MatrixIssuer, Leeway: 30 * time.Second,
		SigningKeyFile: rsaFile, SigningKeyID: "authtest-rsa",
	}
	rs, err := auth.NewSigner(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ed, err := auth.NewSigner(auth.Config{SigningKeyFile: edFile, SigningKeyID: "authtest-ed"})
	if err != nil {
		tb.Fatal(err)
	}
	jwks, err := auth.MarshalJWKS(rs, ed)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.JWKSFile = filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(cfg.JWKSFile, jwks, 0o600); err != nil {
		tb.Fatal(err)
	}
	return cfg
}

func writeKey(tb testing.TB, dir, name string, key any) string {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// BadToken is one credential every authenticated Postamt endpoint must refuse with
// UNAUTHENTICATED (HTTP 401), with a message that does not repeat it.
type BadToken struct {
	// Name says what is wrong with it.
	Name string
	// Authorization is the whole Authorization value sent; empty sends none at all.
	Authorization string
	// Secret is what an answer must never repeat: the token, or another scheme's credentials.
	Secret string
}

// Outgoing returns ctx with the token in its outgoing gRPC metadata.
func (b BadToken) Outgoing(ctx context.Context) context.Context {
	if b.Authorization == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", b.Authorization)
}

// SetHeader puts the token on an HTTP request's header.
func (b BadToken) SetHeader(h http.Header) {
	if b.Authorization != "" {
		h.Set("Authorization", b.Authorization)
	}
}

// Echoes reports whether s repeats the secret or any sizeable part of it (a JWT's header,
// payload or signature segment). Secrets of a few characters ("a.b.c") are not looked for.
func (b BadToken) Echoes(s string) bool {
	if len(b.Secret) < 8 {
		return false
	}
	if strings.Contains(s, b.Secret) {
		return true
	}
	for part := range strings.SplitSeq(b.Secret, ".") {
		if len(part) >= 16 && strings.Contains(s, part) {
			return true
		}
	}
	return false
}

// CheckRefused fails tb unless err is an UNAUTHENTICATED status whose message does not echo the
// token.
func (b BadToken) CheckRefused(tb testing.TB, err error) {
	tb.Helper()
	st, _ := status.FromError(err)
	if st.Code() != codes.Unauthenticated {
		tb.Fatalf("%s: code %v (%v), want Unauthenticated", b.Name, st.Code(), err)
	}
	if b.Echoes(st.Message()) {
		tb.Errorf("%s: the message %q repeats the token", b.Name, st.Message())
	}
	for _, d := range st.Details() {
		if raw, err := json.Marshal(d); err == nil && b.Echoes(string(raw)) {
			tb.Errorf("%s: a detail repeats the token: %s", b.Name, raw)
		}
	}
}

// GoodToken is a one-hour token of cfg for MatrixPrincipal: the control of a matrix test.
func GoodToken(tb testing.TB, cfg auth.Config) string {
	tb.Helper()
	s, err := auth.NewSigner(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tok, err := s.Mint(MatrixPrincipal, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// CheckMatrix runs a service's side of the token matrix: call, made with the credential in ctx's
// outgoing metadata, first with GoodToken (it may fail, a tenant "matrix" has nothing, but not
// as unauthenticated: the call reaches the verifier configured with cfg and passes it), then once
// per BadTokens case in a subtest, each of which must be refused (BadToken.CheckRefused).
func CheckMatrix(t *testing.T, cfg auth.Config, call func(ctx context.Context) error) {
	t.Helper()
	good := BadToken{Authorization: "Bearer " + GoodToken(t, cfg)}
	if err := call(good.Outgoing(context.Background())); status.Code(err) == codes.Unauthenticated {
		t.Fatalf("a good token is refused: %v", err)
	}
	for _, b := range BadTokens(t, cfg) {
		t.Run(b.Name, func(t *testing.T) {
			b.CheckRefused(t, call(b.Outgoing(context.Background())))
		})
	}
}

// BadTokens is the token matrix: every way a credential can be wrong, minted from cfg's own keys
// (its HS256 secret or signing key for tokens that are well signed but claim the wrong thing, its
// JWKS public keys for algorithm confusion), so a verifier configured with cfg must refuse each
// one. The cases: no credential, another scheme, malformed tokens, a bad signature, alg none,
// HS256 keyed with a public key's bytes (and the reverse), an unknown kid, exp, nbf and iat out
// of range, a wrong or missing audience and issuer, and claims no principal can be made of.
// Every service's test sends the same list; tokens are valid for an hour from now.
func BadTokens(tb testing.TB, cfg auth.Config) []BadToken {
	tb.Helper()
	m := newMinter(tb, cfg)
	now := time.Now()
	leeway := cfg.Leeway
	claims := func(edit func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{
			"sub": MatrixPrincipal.User, "tid": MatrixPrincipal.Tenant, "roles": MatrixPrincipal.Roles,
			"aud": m.audience, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		}
		if cfg.Issuer != "" {
			c["iss"] = cfg.Issuer
		}
		if edit != nil {
			edit(c)
		}
		return c
	}
	good := m.sign(claims(nil))
	bearer := func(name, tok string) BadToken {
		return BadToken{Name: name, Authorization: "Bearer " + tok, Secret: tok}
	}
	bad := func(name string, edit func(jwt.MapClaims)) BadToken { return bearer(name, m.sign(claims(edit))) }
	parts := strings.Split(good, ".")
	foreign, err := foreignKeys()
	if err != nil {
		tb.Fatal(err)
	}

	out := []BadToken{
		// No credential, or not a bearer token.
		{Name: "missing token"},
		{Name: "empty bearer", Authorization: "Bearer "},
		{Name: "scheme only", Authorization: "Bearer"},
		{Name: "wrong scheme Basic", Authorization: "Basic bWF0cml4OnBhc3N3b3Jk", Secret: "bWF0cml4OnBhc3N3b3Jk"},
		{Name: "good token under Basic", Authorization: "Basic " + good, Secret: good},
		{Name: "good token under another scheme", Authorization: "Token " + good, Secret: good},
		{Name: "good token without a scheme", Authorization: good, Secret: good},
		{Name: "two tokens", Authorization: "Bearer " + good + " " + good, Secret: good},

		// Malformed.
		bearer("malformed: not a JWT", "not-a-jwt-at-all"),
		bearer("malformed: three dots", "a.b.c"),
		bearer("malformed: empty segments", ".."),
		bearer("malformed: header not base64", "!!!."+parts[1]+"."+parts[2]),
		bearer("malformed: header not JSON", b64("{not json")+"."+parts[1]+"."+parts[2]),
		bearer("malformed: payload not JSON", parts[0]+"."+b64("[1,2")+"."+parts[2]),
		bearer("malformed: two segments", parts[0]+"."+parts[1]),
		bearer("malformed: four segments", good+"."+parts[2]),
		bearer("malformed: longer than any real token", parts[0]+"."+strings.Repeat("A", 9<<10)+"."+parts[2]),

		// Bad signatures.
		bearer("bad signature: flipped", parts[0]+"."+parts[1]+"."+flip(parts[2])),
		bearer("bad signature: stripped", parts[0]+"."+parts[1]+"."),
		bearer("bad signature: payload of another token", parts[0]+"."+strings.Split(m.sign(claims(func(c jwt.MapClaims) { c["tid"] = "other" })), ".")[1]+"."+parts[2]),
		bearer("bad signature: HS256 with another secret", raw(tb, jwt.SigningMethodHS256, []byte("another-secret-another-secret-another"), "", claims(nil))),
		bearer("bad signature: RS256 by a foreign key with a trusted kid", raw(tb, jwt.SigningMethodRS256, foreign.rsa, m.kidOf("RS256"), claims(nil))),
		bearer("bad signature: EdDSA by a foreign key with a trusted kid", raw(tb, jwt.SigningMethodEdDSA, foreign.ed, m.kidOf("EdDSA"), claims(nil))),
		bearer("bad signature: foreign key embedded as jwk", embeddedJWK(tb, foreign.rsa, claims(nil))),

		// alg none.
		bearer("alg none", unsigned("none", claims(nil), "")),
		bearer("alg None", unsigned("None", claims(nil), "")),
		bearer("alg NONE with the good signature", unsigned("NONE", claims(nil), parts[2])),
		bearer("alg empty", unsigned("", claims(nil), parts[2])),
		bearer("alg unknown", unsigned("HS1024", claims(nil), parts[2])),

		// exp, nbf, iat.
		bad("expired", func(c jwt.MapClaims) { c["exp"] = now.Add(-leeway - time.Hour).Unix() }),
		bad("expired beyond the leeway", func(c jwt.MapClaims) { c["exp"] = now.Add(-leeway - time.Minute).Unix() }),
		bad("no expiry", func(c jwt.MapClaims) { delete(c, "exp") }),
		bad("expiry not a number", func(c jwt.MapClaims) { c["exp"] = "tomorrow" }),
		bad("not yet valid: nbf in the future", func(c jwt.MapClaims) { c["nbf"] = now.Add(leeway + time.Hour).Unix() }),
		bad("not yet valid: iat in the future", func(c jwt.MapClaims) { c["iat"] = now.Add(leeway + time.Hour).Unix() }),

		// Audience.
		bad("wrong audience", func(c jwt.MapClaims) { c["aud"] = "someone-else" }),
		bad("wrong audiences", func(c jwt.MapClaims) { c["aud"] = []string{"someone-else", "another"} }),
		bad("no audience", func(c jwt.MapClaims) { delete(c, "aud") }),

		// Claims no principal can be made of.
		bad("no tenant", func(c jwt.MapClaims) { delete(c, "tid") }),
		bad("tenant with a path", func(c jwt.MapClaims) { c["tid"] = "../matrix" }),
		bad("tenant with CR LF", func(c jwt.MapClaims) { c["tid"] = "matrix\r\nx-injected: 1" }),
		bad("neither user nor service", func(c jwt.MapClaims) { delete(c, "sub") }),
	}
	if m.method != jwt.SigningMethodHS256 {
		// A kid selects among asymmetric keys; HS256 has one secret and no kid to get wrong.
		out = append(out,
			bearer("unknown kid", m.signKid("no-such-kid", claims(nil))),
			bearer("kid of a path", m.signKid("../../../../dev/null", claims(nil))),
		)
	}
	if cfg.Issuer != "" {
		out = append(out,
			bad("wrong issuer", func(c jwt.MapClaims) { c["iss"] = "https://evil.example" }),
			bad("no issuer", func(c jwt.MapClaims) { delete(c, "iss") }),
		)
	}

	// Algorithm confusion: a verifier with asymmetric keys must never take their public bytes
	// as an HMAC secret, nor check an asymmetric algorithm's signature as an HMAC.
	jwks := auth.JWKS{}
	if cfg.JWKSFile != "" {
		if jwks, err = auth.ReadJWKS(cfg.JWKSFile); err != nil {
			tb.Fatal(err)
		}
	}
	for kid, pub := range jwks.RSA {
		pkix, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			tb.Fatal(err)
		}
		pkcs1 := x509.MarshalPKCS1PublicKey(pub)
		for _, s := range []struct {
			name   string
			secret []byte
		}{
			{"PEM", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix})},
			{"PKIX DER", pkix},
			{"PKCS#1 PEM", pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: pkcs1})},
			{"PKCS#1 DER", pkcs1},
		} {
			out = append(out, bearer("HS256 keyed with the RSA public key ("+s.name+") of kid "+kid, raw(tb, jwt.SigningMethodHS256, s.secret, kid, claims(nil))))
		}
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix})
		out = append(out, bearer("RS256 signed as HMAC with the RSA public key of kid "+kid, hmacAs(tb, "RS256", kid, pemBytes, claims(nil))))
		if cfg.HS256Secret != "" {
			out = append(out, bearer("RS256 signed as HMAC with the HS256 secret, kid "+kid, hmacAs(tb, "RS256", kid, []byte(cfg.HS256Secret), claims(nil))))
		}
	}
	for kid, pub := range jwks.Ed25519 {
		pkix, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out,
			bearer("HS256 keyed with the Ed25519 public key (raw) of kid "+kid, raw(tb, jwt.SigningMethodHS256, []byte(pub), kid, claims(nil))),
			bearer("HS256 keyed with the Ed25519 public key (PEM) of kid "+kid, raw(tb, jwt.SigningMethodHS256, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix}), kid, claims(nil))),
			bearer("EdDSA signed as HMAC with the Ed25519 public key of kid "+kid, hmacAs(tb, "EdDSA", kid, []byte(pub), claims(nil))),
		)
	}
	if cfg.HS256Secret != "" && len(jwks.RSA) == 0 {
		// The reverse without a JWKS: an asymmetric algorithm where only a secret is trusted.
		out = append(out,
			bearer("RS256 signed as HMAC with the HS256 secret", hmacAs(tb, "RS256", "", []byte(cfg.HS256Secret), claims(nil))),
			bearer("RS256 on a verifier without RSA keys", raw(tb, jwt.SigningMethodRS256, foreign.rsa, "", claims(nil))),
		)
	}
	return out
}

// minter signs claims with cfg's trusted key: the signing key file (as auth.NewSigner does),
// else the HS256 secret.
type minter struct {
	tb       testing.TB
	method   jwt.SigningMethod
	key      any
	kid      string
	audience string
	kids     map[string]string // a trusted kid per asymmetric algorithm
}

func newMinter(tb testing.TB, cfg auth.Config) *minter {
	tb.Helper()
	s, err := auth.NewSigner(cfg)
	if err != nil {
		tb.Fatalf("authtest.BadTokens: the configuration signs nothing: %v", err)
	}
	m := &minter{tb: tb, kid: s.KeyID(), audience: cfg.Audience, kids: map[string]string{}}
	if m.audience == "" {
		m.audience = auth.DefaultAudience
	}
	switch s.Algorithm() {
	case jwt.SigningMethodHS256.Alg():
		m.method, m.key = jwt.SigningMethodHS256, []byte(cfg.HS256Secret)
	default:
		key, err := readPrivateKey(cfg.SigningKeyFile)
		if err != nil {
			tb.Fatal(err)
		}
		switch key.(type) {
		case *rsa.PrivateKey:
			m.method = jwt.SigningMethodRS256
		case ed25519.PrivateKey:
			m.method = jwt.SigningMethodEdDSA
		}
		m.key = key
	}
	if cfg.JWKSFile != "" {
		set, err := auth.ReadJWKS(cfg.JWKSFile)
		if err != nil {
			tb.Fatal(err)
		}
		for kid := range set.RSA {
			m.kids["RS256"] = kid
		}
		for kid := range set.Ed25519 {
			m.kids["EdDSA"] = kid
		}
	}
	return m
}

func (m *minter) sign(c jwt.MapClaims) string { return m.signKid(m.kid, c) }

func (m *minter) signKid(kid string, c jwt.MapClaims) string {
	return raw(m.tb, m.method, m.key, kid, c)
}

// kidOf is a trusted kid of alg, or a made-up one where the configuration has none.
func (m *minter) kidOf(alg string) string {
	if kid, ok := m.kids[alg]; ok {
		return kid
	}
	return "authtest-" + alg
}

func readPrivateKey(path string) (any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("authtest: no PEM block in the signing key file")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		return k, nil
	}
	return x509.ParsePKCS1PrivateKey(block.Bytes)
}

// raw signs c with method and key, with kid in the header when set.
func raw(tb testing.TB, method jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
	tb.Helper()
	t := jwt.NewWithClaims(method, c)
	if kid != "" {
		t.Header["kid"] = kid
	}
	s, err := t.SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// embeddedJWK signs with key and carries its public half in the header's jwk, as if the token
// could bring its own trust.
func embeddedJWK(tb testing.TB, key *rsa.PrivateKey, c jwt.MapClaims) string {
	tb.Helper()
	t := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	t.Header["kid"] = "attacker"
	t.Header["jwk"] = map[string]string{
		"kty": "RSA", "kid": "attacker",
		"n": base64.RawURLEncoding.EncodeToString(key.N.Bytes()),
		"e": base64.RawURLEncoding.EncodeToString([]byte{1, 0, 1}),
	}
	s, err := t.SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// hmacAs makes a token whose header says alg but whose signature is HMAC-SHA256 with secret.
func hmacAs(tb testing.TB, alg, kid string, secret []byte, c jwt.MapClaims) string {
	tb.Helper()
	h := map[string]any{"alg": alg, "typ": "JWT"}
	if kid != "" {
		h["kid"] = kid
	}
	input := b64JSON(tb, h) + "." + b64JSON(tb, c)
	sig, err := jwt.SigningMethodHS256.Sign(input, secret)
	if err != nil {
		tb.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// unsigned makes a token with the given alg and signature segment (empty for none).
func unsigned(alg string, c jwt.MapClaims, sig string) string {
	hb, _ := json.Marshal(map[string]any{"alg": alg, "typ": "JWT"})
	cb, _ := json.Marshal(c)
	return b64(string(hb)) + "." + b64(string(cb)) + "." + sig
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func b64JSON(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// flip changes the signature's first character, keeping it valid base64url.
func flip(sig string) string {
	if sig == "" {
		return "A"
	}
	c := byte('A')
	if sig[0] == 'A' {
		c = 'B'
	}
	return string(c) + sig[1:]
}
