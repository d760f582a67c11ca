package auth

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/postamt/postamt/internal/errs"
)

// OpenMethod reports whether a method needs no token: health checks (for Kubernetes probes and
// load balancers) and server reflection (for grpcurl). Neither reveals anything of a tenant.
func OpenMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// Authenticate verifies the bearer token of an incoming call's metadata and returns ctx carrying
// its principal. Errors are errs.Unauthenticated. The interceptors use it; so can a server that
// authenticates in its own way (the gateway).
func (v *Verifier) Authenticate(ctx context.Context) (context.Context, error) {
	// ValueFromIncomingContext reads one key without copying the whole metadata map, which
	// FromIncomingContext does on every call (it was the largest allocation of the hot path).
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	if len(vals) == 0 {
		return nil, errs.Unauthenticated("missing authorization metadata (Bearer token)", nil)
	}
	if len(vals) > 1 {
		return nil, errs.Unauthenticated("more than one authorization value", nil)
	}
	token, err := BearerToken(vals[0])
	if err != nil {
		return nil, err
	}
	p, err := v.Verify(token)
	if err != nil {
		return nil, err
	}
	return NewContext(ctx, p), nil
}

// BearerToken returns the token of an Authorization value, "Bearer <token>" with the scheme in
// any case (RFC 7235 §2.1), for the gRPC side and the gateway's HTTP side alike. Any other value
// is an errs.Unauthenticated error whose message never repeats it.
func BearerToken(authorization string) (string, error) {
	scheme, token, ok := strings.Cut(authorization, " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", errs.Unauthenticated(`authorization must be "Bearer <token>"`, nil)
	}
	return token, nil
}

// UnaryServerInterceptor authenticates every unary call but the open ones (OpenMethod) and puts
// the principal into the handler's context. A failure is returned as an Unauthenticated status,
// so the interceptor also works on a server without the suite's error mapping.
func UnaryServerInterceptor(v *Verifier) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if OpenMethod(info.FullMethod) {
			return handler(ctx, req)
		}
		ctx, err := v.Authenticate(ctx)
		if err != nil {
			return nil, errs.ToStatus(err).Err()
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor is UnaryServerInterceptor for streams: the handler sees the principal
// in the stream's context.
func StreamServerInterceptor(v *Verifier) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if OpenMethod(info.FullMethod) {
			return handler(srv, ss)
		}
		ctx, err := v.Authenticate(ss.Context())
		if err != nil {
			return errs.ToStatus(err).Err()
		}
		return handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
	}
}

// ctxStream is a server stream with a replaced context.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

const (
	// serviceTokenTTL is the life of a minted service token: short, so a leaked one is soon useless.
	serviceTokenTTL = 10 * time.Minute
	// serviceTokenRenew is how long before its expiry a cached token is replaced, so a token never
	// expires in flight or on a server whose clock runs ahead.
	serviceTokenRenew = 2 * time.Minute
	// maxCachedTenants bounds the token cache; beyond it, expired entries are dropped.
	maxCachedTenants = 4096
)

// ErrNoTenant is returned (as the cause of an Unauthenticated error) by service credentials used on
// a context that names no tenant: every service call acts within one.
var ErrNoTenant = errors.New("service call without a tenant: use auth.WithTenant or call within an authenticated request")

// ServiceCredentials authenticate one Postamt service to another (grpc.WithPerRPCCredentials):
// each call carries a short-lived token for serviceName within the tenant of the call — the one
// set with WithTenant, else the one of the request being served (FromContext). Tokens are minted
// by signer and cached per tenant until shortly before they expire.
//
// RequireTransportSecurity is false: inside the cluster the services talk plaintext gRPC on a
// private network, and mTLS, where wanted, is the service mesh's job. Do not use these
// credentials across an untrusted network without transport security.
func ServiceCredentials(signer *Signer, serviceName string) credentials.PerRPCCredentials {
	return &serviceCreds{signer: signer, service: serviceName, cache: map[string]cachedToken{}}
}

type cachedToken struct {
	header  string
	renewAt time.Time
}

type serviceCreds struct {
	signer  *Signer
	service string

	mu    sync.Mutex
	cache map[string]cachedToken // by tenant
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (c *serviceCreds) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tenant := tenantOf(ctx)
	if tenant == "" {
		return nil, errs.Unauthenticated("service call without a tenant", ErrNoTenant)
	}
	now := c.signer.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.cache[tenant]; ok && now.Before(t.renewAt) {
		return map[string]string{"authorization": t.header}, nil
	}
	tok, err := c.signer.Mint(Principal{Tenant: tenant, Service: c.service}, serviceTokenTTL)
	if err != nil {
		return nil, err
	}
	if len(c.cache) >= maxCachedTenants {
		for k, t := range c.cache {
			if !now.Before(t.renewAt) {
				delete(c.cache, k)
			}
		}
		if len(c.cache) >= maxCachedTenants {
			clear(c.cache)
		}
	}
	h := "Bearer " + tok
	c.cache[tenant] = cachedToken{header: h, renewAt: now.Add(serviceTokenTTL - serviceTokenRenew)}
	return map[string]string{"authorization": h}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials; see ServiceCredentials.
func (c *serviceCreds) RequireTransportSecurity() bool { return false }
