package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/postamt/postamt/internal/errs"
)

// claims is the token body: registered claims plus the tenant, teams, roles and service name.
type claims struct {
	jwt.RegisteredClaims
	Tenant  string   `json:"tid,omitempty"`
	Teams   []string `json:"teams,omitempty"`
	Roles   []string `json:"roles,omitempty"`
	Service string   `json:"svc,omitempty"`
}

// Verifier checks tokens. Only algorithms whose keys are configured are accepted, so a token
// cannot pick a weaker algorithm (or "none") than the operator chose.
type Verifier struct {
	secret  []byte
	keys    map[string]crypto.PublicKey // by kid
	methods []string
	parser  *jwt.Parser
}

// NewVerifier builds a Verifier from cfg; at least one key source must be configured.
func NewVerifier(cfg Config) (*Verifier, error) {
	v := &Verifier{keys: map[string]crypto.PublicKey{}}
	if cfg.HS256Secret != "" {
		if len(cfg.HS256Secret) < 32 {
			return nil, errors.New("AUTH_HS256_SECRET must be at least 32 bytes")
		}
		v.secret = []byte(cfg.HS256Secret)
		v.methods = append(v.methods, jwt.SigningMethodHS256.Alg())
	}
	if cfg.JWKSFile != "" {
		keys, err := loadJWKS(cfg.JWKSFile)
		if err != nil {
			return nil, err
		}
		v.keys = keys
		var hasRSA, hasEd bool
		for _, k := range keys {
			switch k.(type) {
			case *rsa.PublicKey:
				hasRSA = true
			case ed25519.PublicKey:
				hasEd = true
			}
		}
		if hasRSA {
			v.methods = append(v.methods, jwt.SigningMethodRS256.Alg())
		}
		if hasEd {
			v.methods = append(v.methods, jwt.SigningMethodEdDSA.Alg())
		}
	}
	if len(v.methods) == 0 {
		return nil, errors.New("no token keys configured: set AUTH_HS256_SECRET (development) or AUTH_JWKS_FILE")
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(v.methods),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithAudience(cfg.Audience),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// Verify checks a token and returns its principal; every failure is errs.Unauthenticated.
func (v *Verifier) Verify(token string) (Principal, error) {
	var c claims
	_, err := v.parser.ParseWithClaims(token, &c, v.key)
	if err != nil {
		msg := "invalid token"
		if errors.Is(err, jwt.ErrTokenExpired) {
			msg = "token expired"
		}
		return Principal{}, errs.Unauthenticated(msg, err)
	}
	if c.Tenant == "" {
		return Principal{}, errs.Unauthenticated("token has no tenant (tid)", nil)
	}
	if c.Service == "" && c.Subject == "" {
		return Principal{}, errs.Unauthenticated("token has neither a user (sub) nor a service (svc)", nil)
	}
	p := Principal{Tenant: c.Tenant, Teams: c.Teams, Roles: c.Roles, Service: c.Service}
	if c.Service == "" {
		p.User = c.Subject
	}
	return p, nil
}

// key picks the verification key by algorithm and kid.
func (v *Verifier) key(t *jwt.Token) (any, error) {
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		return v.secret, nil
	case *jwt.SigningMethodRSA, *jwt.SigningMethodEd25519:
		kid, _ := t.Header["kid"].(string)
		k, ok := v.keys[kid]
		if !ok {
			return nil, fmt.Errorf("unknown key id %q", kid)
		}
		return k, nil
	}
	return nil, fmt.Errorf("unexpected signing method %v", t.Header["alg"])
}

// jwk is the part of RFC 7517/8037 keys Postamt reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
	Use string `json:"use"`
}

// loadJWKS reads RSA and Ed25519 public keys from a JWKS file. Keys of other types are skipped;
// a key without a kid, or a malformed one, is an error so a typo does not silently drop a key.
func loadJWKS(path string) (map[string]crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read AUTH_JWKS_FILE: %w", err)
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("parse AUTH_JWKS_FILE %s: %w", path, err)
	}
	out := map[string]crypto.PublicKey{}
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if k.Kid == "" {
			return nil, fmt.Errorf("AUTH_JWKS_FILE key %d has no kid", i)
		}
		switch k.Kty {
		case "RSA":
			n, err1 := base64.RawURLEncoding.DecodeString(k.N)
			e, err2 := base64.RawURLEncoding.DecodeString(k.E)
			if err := errors.Join(err1, err2); err != nil || len(n) == 0 || len(e) == 0 || len(e) > 4 {
				return nil, fmt.Errorf("AUTH_JWKS_FILE key %q: bad RSA n or e", k.Kid)
			}
			out[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		case "OKP":
			x, err := base64.RawURLEncoding.DecodeString(k.X)
			if k.Crv != "Ed25519" || err != nil || len(x) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("AUTH_JWKS_FILE key %q: only Ed25519 OKP keys are supported", k.Kid)
			}
			out[k.Kid] = ed25519.PublicKey(x)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("AUTH_JWKS_FILE %s holds no RSA or Ed25519 signing key", path)
	}
	return out, nil
}

// Signer mints tokens: development tokens (`postamt token`) and service credentials.
type Signer struct {
	method   jwt.SigningMethod
	key      any
	kid      string
	audience string
	issuer   string
	now      func() time.Time
}

// NewSigner builds a Signer from cfg: the private key file when set (RS256 or EdDSA by key type),
// else the HS256 secret.
func NewSigner(cfg Config) (*Signer, error) {
	s := &Signer{audience: cfg.Audience, issuer: cfg.Issuer, kid: cfg.SigningKeyID, now: time.Now}
	switch {
	case cfg.SigningKeyFile != "":
		b, err := os.ReadFile(cfg.SigningKeyFile)
		if err != nil {
			return nil, fmt.Errorf("read AUTH_SIGNING_KEY_FILE: %w", err)
		}
		block, _ := pem.Decode(b)
		if block == nil {
			return nil, errors.New("AUTH_SIGNING_KEY_FILE holds no PEM block")
		}
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			if rk, rerr := x509.ParsePKCS1PrivateKey(block.Bytes); rerr == nil {
				key, err = rk, nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("parse AUTH_SIGNING_KEY_FILE: %w", err)
		}
		switch k := key.(type) {
		case *rsa.PrivateKey:
			s.method, s.key = jwt.SigningMethodRS256, k
		case ed25519.PrivateKey:
			s.method, s.key = jwt.SigningMethodEdDSA, k
		default:
			return nil, fmt.Errorf("AUTH_SIGNING_KEY_FILE: unsupported key type %T", key)
		}
	case cfg.HS256Secret != "":
		s.method, s.key = jwt.SigningMethodHS256, []byte(cfg.HS256Secret)
	default:
		return nil, errors.New("no signing key: set AUTH_SIGNING_KEY_FILE or AUTH_HS256_SECRET")
	}
	return s, nil
}

// Mint signs a token for p valid for ttl.
func (s *Signer) Mint(p Principal, ttl time.Duration) (string, error) {
	now := s.now()
	c := claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   p.User,
			Issuer:    s.issuer,
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Tenant: p.Tenant, Teams: p.Teams, Roles: p.Roles, Service: p.Service,
	}
	if s.audience != "" {
		c.Audience = jwt.ClaimStrings{s.audience}
	}
	t := jwt.NewWithClaims(s.method, c)
	if s.kid != "" {
		t.Header["kid"] = s.kid
	}
	signed, err := t.SignedString(s.key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return signed, nil
}
