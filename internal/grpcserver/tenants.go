package grpcserver

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
)

// TenantExists answers whether a tenant exists; mailbox owns tenants, so the other services ask
// it (MailboxService/GetTenant with their service credentials).
type TenantExists func(ctx context.Context, tenant string) (bool, error)

// tenantTTL is how long a "the tenant exists" answer is kept: a deleted tenant's writes are
// refused within it. A "no" is never kept, so a tenant created a moment ago works at once.
const tenantTTL = time.Minute

// tenantGuard refuses writes into a tenant that does not exist with FAILED_PRECONDITION
// TENANT_NOT_FOUND, in every service the same way (docs/architecture.md "One contract for every
// API"). Reads pass: an unknown tenant reads as an empty one. A method is a read when its proto
// says `idempotency_level = NO_SIDE_EFFECTS`, so a new RPC is classified by its own declaration.
type tenantGuard struct {
	exists TenantExists
	writes map[string]bool // full method name ("/pkg.Service/Method") → a write

	mu    sync.Mutex
	known map[string]time.Time // tenant → until when it is known to exist
}

func newTenantGuard(exists TenantExists, services []string) (*tenantGuard, error) {
	g := &tenantGuard{exists: exists, writes: make(map[string]bool), known: make(map[string]time.Time)}
	for _, name := range services {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
		if err != nil {
			return nil, fmt.Errorf("grpcserver: service %s for the tenant check: %w", name, err)
		}
		sd, ok := d.(protoreflect.ServiceDescriptor)
		if !ok {
			return nil, fmt.Errorf("grpcserver: %s is not a service", name)
		}
		for i := range sd.Methods().Len() {
			m := sd.Methods().Get(i)
			opts, _ := m.Options().(*descriptorpb.MethodOptions)
			g.writes["/"+name+"/"+string(m.Name())] = opts.GetIdempotencyLevel() != descriptorpb.MethodOptions_NO_SIDE_EFFECTS
		}
	}
	return g, nil
}

func (g *tenantGuard) check(ctx context.Context, method string) error {
	if !g.writes[method] {
		return nil
	}
	p, ok := auth.FromContext(ctx)
	if !ok || p.Tenant == "" {
		return nil // open methods; auth refused the rest
	}
	now := time.Now()
	g.mu.Lock()
	until, known := g.known[p.Tenant]
	g.mu.Unlock()
	if known && now.Before(until) {
		return nil
	}
	ok, err := g.exists(ctx, p.Tenant)
	if err != nil {
		return fmt.Errorf("check tenant %s: %w", p.Tenant, err)
	}
	if !ok {
		return errs.FailedPrecondition("TENANT_NOT_FOUND", fmt.Sprintf("tenant %s does not exist; an operator creates it with MailboxService/CreateTenant", errs.Quote(p.Tenant)))
	}
	g.mu.Lock()
	if len(g.known) > 100_000 {
		clear(g.known) // bounded; it fills again from the answers
	}
	g.known[p.Tenant] = now.Add(tenantTTL)
	g.mu.Unlock()
	return nil
}

func (g *tenantGuard) unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := g.check(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

//nolint:contextcheck // a stream interceptor's context is the stream's (ss.Context()), not its builder's
func (g *tenantGuard) stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := g.check(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// TenantLookup makes a TenantExists of a call that reads the tenant from its owner (mailbox's
// GetTenant): a NOT_FOUND answer means it does not exist; any other error is the owner's outage.
func TenantLookup(get func(ctx context.Context, tenant string) error) TenantExists {
	return func(ctx context.Context, tenant string) (bool, error) {
		err := get(ctx, tenant)
		switch status.Code(err) {
		case codes.OK:
			return true, nil
		case codes.NotFound:
			return false, nil
		}
		return false, err
	}
}
