package auth

import (
	"context"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/postamt/postamt/internal/errs"
)

// Open reports whether a method needs no token: health checks (for probes) and reflection (for
// grpcurl) stay open; they reveal nothing of any tenant.
func Open(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

func (v *Verifier) authenticate(ctx context.Context) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return nil, errs.Unauthenticated("missing authorization metadata (Bearer token)", nil)
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return nil, errs.Unauthenticated("authorization must be \"Bearer <token>\"", nil)
	}
	p, err := v.Verify(strings.TrimSpace(token))
	if err != nil {
		return nil, err
	}
	return NewContext(ctx, p), nil
}

// UnaryServerInterceptor authenticates every unary call but the open ones.
func UnaryServerInterceptor(v *Verifier) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if Open(info.FullMethod) {
			return handler(ctx, req)
		}
		ctx, err := v.authenticate(ctx)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor authenticates every stream but the open ones.
func StreamServerInterceptor(v *Verifier) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if Open(info.FullMethod) {
			return handler(srv, ss)
		}
		ctx, err := v.authenticate(ss.Context())
		if err != nil {
			return err
		}
		return handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
	}
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

// serviceTokenTTL is the life of a minted service token; it is reused until a minute before it ends.
const serviceTokenTTL = 10 * time.Minute

// ServiceCredentials authenticate one Postamt service to another: each call carries a short-lived
// token for the service name within the tenant of the call (WithTenant, or the principal of the
// request being served). Tokens are cached per tenant.
//
// It does not require transport security: inside the cluster, traffic runs on a private network
// and mTLS, where wanted, is the mesh's job.
func ServiceCredentials(s *Signer, service string) credentials.PerRPCCredentials {
	return &serviceCreds{signer: s, service: service, cache: map[string]cachedToken{}}
}

type cachedToken struct {
	token   string
	renewAt time.Time
}

type serviceCreds struct {
	signer  *Signer
	service string
	mu      sync.Mutex
	cache   map[string]cachedToken
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (c *serviceCreds) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tenant := tenantOf(ctx)
	if tenant == "" {
		return nil, errs.Unauthenticated("service call without a tenant: use auth.WithTenant", nil)
	}
	now := c.signer.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.cache[tenant]; ok && now.Before(t.renewAt) {
		return map[string]string{"authorization": "Bearer " + t.token}, nil
	}
	tok, err := c.signer.Mint(Principal{Tenant: tenant, Service: c.service}, serviceTokenTTL)
	if err != nil {
		return nil, err
	}
	c.cache[tenant] = cachedToken{token: tok, renewAt: now.Add(serviceTokenTTL - time.Minute)}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (c *serviceCreds) RequireTransportSecurity() bool { return false }
