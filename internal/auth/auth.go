// Package auth verifies the JWTs every Postamt request carries and mints the ones the suite needs
// itself (development tokens, service credentials). Every service verifies tokens on its own, so a
// request that bypasses the gateway is held to the same rules.
package auth

import (
	"context"
	"slices"
	"time"
)

// Principal is who a request acts for: a user of a tenant, or a service working within a tenant.
type Principal struct {
	// Tenant scopes every read and write of the request.
	Tenant string
	// User is the acting user; empty for service principals.
	User string
	// Teams are the user's teams, from the identity provider; mailbox membership can name them.
	Teams []string
	// Roles are the user's roles in the tenant, from the identity provider (RoleAdmin, ...).
	Roles []string
	// Service names the calling service for service credentials ("outbox"); empty for users.
	Service string
}

// RoleAdmin is the role that manages a tenant's directory and mailboxes.
const RoleAdmin = "admin"

// IsAdmin reports whether the principal administers its tenant.
func (p Principal) IsAdmin() bool { return p.HasRole(RoleAdmin) }

// IsService reports whether the principal is another Postamt service, trusted within its tenant.
func (p Principal) IsService() bool { return p.Service != "" }

// HasRole reports whether the principal holds role.
func (p Principal) HasRole(role string) bool { return slices.Contains(p.Roles, role) }

// MinSecretBytes is the shortest HS256 secret accepted: shorter ones can be brute-forced from a
// single token.
const MinSecretBytes = 32

// DefaultAudience is the aud claim tokens for Postamt carry when Config.Audience is empty.
const DefaultAudience = "postamt"

// Config says which keys verify and sign tokens. Fields are read from the environment by the
// service's config (internal/config embeds it in config.Common); the zero value of each field is
// its documented default.
type Config struct {
	// HS256Secret enables HS256 with a shared secret: for development and tests only.
	HS256Secret string `env:"AUTH_HS256_SECRET" desc:"shared HS256 secret, at least 32 bytes (development only); empty disables HS256"`
	// JWKSFile holds the RS256/EdDSA public keys of the identity provider, selected by kid.
	// It is re-read when it changes (checked every 2 s; a ConfigMap update, which swaps a
	// symlink, is a change), so keys rotate without a restart.
	JWKSFile string `env:"AUTH_JWKS_FILE" desc:"JWKS file with the RS256/EdDSA public keys tokens are verified with (the services' own, from postamt jwks, and/or the identity provider's); re-read within 2s of a change, so keys rotate without a restart"`
	// JWKSURL is the identity provider's JWKS endpoint, fetched at start, every JWKSRefresh, and
	// at once (at most every 10 s) for a token whose kid no key has: a new key of the provider
	// is trusted at its first token.
	JWKSURL string `env:"AUTH_JWKS_URL" desc:"URL of the identity provider's JWKS (https), used beside AUTH_JWKS_FILE; fetched at start, every AUTH_JWKS_REFRESH, and for a token with an unknown kid (at most every 10s)"`
	// JWKSRefresh is how old the keys fetched from JWKSURL may get before they are fetched again.
	JWKSRefresh time.Duration `env:"AUTH_JWKS_REFRESH, default=5m" desc:"how often the keys of AUTH_JWKS_URL are fetched again (a removed key is refused after at most this long)"`
	// Audience must be in every token's aud claim; empty means DefaultAudience.
	Audience string `env:"AUTH_AUDIENCE, default=postamt" desc:"audience every token must name"`
	// Issuer, when set, must be every token's iss claim.
	Issuer string `env:"AUTH_ISSUER" desc:"issuer every token must name; empty accepts any"`
	// SigningKeyFile is a PEM private key (RSA or Ed25519) for minting service tokens in production.
	// It is re-read when it changes (checked every 2 s while tokens are minted).
	SigningKeyFile string `env:"AUTH_SIGNING_KEY_FILE" desc:"PEM private key (RSA or Ed25519) this service signs service tokens with; its public key must be in the JWKS (postamt jwks builds it); re-read within 2s of a change, so it rotates without a restart"`
	// SigningKeyID is the kid written into tokens signed with SigningKeyFile; empty means the key's
	// RFC 7638 thumbprint, which is also what MarshalJWKS writes.
	SigningKeyID string `env:"AUTH_SIGNING_KEY_ID" desc:"kid of the signing key; empty uses its RFC 7638 thumbprint (leave it empty to rotate keys: two keys must not share a kid)"`
	// Leeway tolerates clock skew on exp and nbf.
	Leeway time.Duration `env:"AUTH_LEEWAY, default=30s" desc:"clock skew tolerated on exp and nbf"`
}

type ctxKey struct{}

// NewContext returns ctx carrying p; the auth interceptors call it for every authenticated call,
// and tests of handlers call it to act as someone.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext returns the principal of the request, if authenticated; handlers take the tenant
// from it, never from the request message.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(ctxKey{}).(Principal)
	return p, ok
}

type tenantKey struct{}

// WithTenant marks ctx as acting within tenant, for service credentials of background work that
// has no incoming request to take the tenant from.
func WithTenant(ctx context.Context, tenant string) context.Context {
	return context.WithValue(ctx, tenantKey{}, tenant)
}

// tenantOf returns the tenant a service call acts within: WithTenant first, else the principal's.
func tenantOf(ctx context.Context) string {
	if t, ok := ctx.Value(tenantKey{}).(string); ok {
		return t
	}
	if p, ok := FromContext(ctx); ok {
		return p.Tenant
	}
	return ""
}
