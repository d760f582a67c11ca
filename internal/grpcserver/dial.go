package grpcserver

import (
	"context"
	"fmt"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
)

// Dial makes the client connection one Postamt service uses to call another, with the same
// conventions as the servers: OpenTelemetry client spans (global provider and propagator, see
// telemetry.SetupTracing), the caller's request id forwarded in x-request-id, keepalive pings
// that the servers' enforcement policy accepts, and the same message size limit.
//
// Calls are spread over every address the name resolves to (round_robin): behind a headless
// Kubernetes Service that is every ready pod, where gRPC's default (pick_first) would send all
// of a client's calls to one pod for the life of the connection. A single address behaves as
// before.
//
// It dials plaintext by default (in-cluster traffic; mTLS is the mesh's job): pass
// grpc.WithTransportCredentials to override, and grpc.WithPerRPCCredentials with
// auth.ServiceCredentials to authenticate. Options given are applied after the defaults. Like
// grpc.NewClient, it does not connect until the first call.
func Dial(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	defaults := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: clientPingInterval, Timeout: pingTimeout, PermitWithoutStream: true}),
		grpc.WithChainUnaryInterceptor(forwardRequestIDUnary),
		grpc.WithChainStreamInterceptor(forwardRequestIDStream),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(DefaultMaxRecvBytes)),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
	}
	conn, err := grpc.NewClient(target, append(defaults, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("grpc client for %s: %w", target, err)
	}
	return conn, nil
}

// outgoing adds the request id of ctx to the outgoing metadata, unless the caller set one.
func outgoing(ctx context.Context) context.Context {
	id := RequestID(ctx)
	if id == "" {
		return ctx
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(RequestIDHeader)) > 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, RequestIDHeader, id)
}

func forwardRequestIDUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(outgoing(ctx), method, req, reply, cc, opts...)
}

func forwardRequestIDStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(outgoing(ctx), desc, cc, method, opts...)
}
