// Package proxy forwards gRPC calls to the suite's services unchanged, so that a client needs one
// address. Messages pass as opaque frames (never decoded), so a proxy built today forwards methods
// added tomorrow; metadata (the caller's token, the request id) goes along, and the service's
// headers, trailers and status come back as the service sent them.
package proxy

import (
	"context"
	"errors"
	"io"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// frame is one message on its way through, still encoded.
type frame struct{ payload []byte }

// Codec passes frames through as they are and encodes everything else (the gateway's own health
// and reflection services) with the standard proto codec. It is the gateway server's codec and
// the one of its forwarded calls.
type Codec struct{ proto encoding.CodecV2 }

// NewCodec returns the gateway's codec.
func NewCodec() Codec { return Codec{proto: encoding.GetCodecV2("proto")} }

// Marshal returns a frame's bytes as they came; other messages are proto-encoded.
func (c Codec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*frame); ok {
		return mem.BufferSlice{mem.SliceBuffer(f.payload)}, nil
	}
	return c.proto.Marshal(v)
}

// Unmarshal keeps a frame's bytes; other messages are proto-decoded.
func (c Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if f, ok := v.(*frame); ok {
		f.payload = data.Materialize()
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

// Name is "proto": to both ends the gateway speaks the ordinary protobuf content type.
func (Codec) Name() string { return "proto" }

// Proxy routes calls by service name to the connection of the service's server.
type Proxy struct {
	routes map[string]*grpc.ClientConn
	codec  Codec
}

// New returns a Proxy for routes, keyed by full service name (e.g.
// "postamt.outbox.v1.OutboxService").
func New(routes map[string]*grpc.ClientConn) *Proxy {
	return &Proxy{routes: routes, codec: NewCodec()}
}

// Services are the names the proxy forwards.
func (p *Proxy) Services() []string {
	out := make([]string, 0, len(p.routes))
	for n := range p.routes {
		out = append(out, n)
	}
	return out
}

// dropped are request metadata keys that belong to the hop, not to the call: the client
// connection to the service sets its own.
var dropped = map[string]bool{":authority": true, "content-type": true, "user-agent": true, "te": true, "grpc-timeout": true, "grpc-encoding": true, "grpc-accept-encoding": true}

// Handler is the gateway server's handler for every method it does not implement itself (pass it
// to grpc.UnknownServiceHandler). The deadline and cancellation of the caller's context carry
// over; an unknown service is Unimplemented, as from any gRPC server.
func (p *Proxy) Handler(_ any, in grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(in)
	if !ok {
		return status.Error(codes.Internal, "no method on the stream")
	}
	service, _, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	conn := p.routes[service]
	if conn == nil {
		return status.Errorf(codes.Unimplemented, "unknown service %s", service)
	}
	md, _ := metadata.FromIncomingContext(in.Context())
	out := metadata.MD{}
	for k, v := range md {
		if !dropped[k] && !strings.HasPrefix(k, ":") {
			out[k] = v
		}
	}
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(in.Context(), out))
	defer cancel()
	up, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method, grpc.ForceCodecV2(p.codec))
	if err != nil {
		return err
	}
	// Caller to service, until the caller closes its side; a failure cancels the call.
	go func() {
		for {
			f := &frame{}
			if err := in.RecvMsg(f); err != nil {
				if errors.Is(err, io.EOF) {
					_ = up.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if err := up.SendMsg(f); err != nil {
				return // the service ended the call: its status comes from RecvMsg below
			}
		}
	}()
	// The service's header as soon as it comes (a stream may send it long before a message).
	header := make(chan error, 1)
	go func() {
		h, err := up.Header()
		if err == nil {
			h.Delete("x-request-id") // the gateway's own interceptor set it already
			err = in.SendHeader(h)
		}
		header <- err
	}()
	// Service to caller, until the service ends the call.
	for first := true; ; first = false {
		f := &frame{}
		err := up.RecvMsg(f)
		if first {
			<-header //nolint:errcheck // a sync point: no message overtakes the header; after the end of the call, Header returns too (a failed header fails RecvMsg or SendMsg as well)
		}
		if err != nil {
			in.SetTrailer(up.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err // the service's status, unchanged
		}
		if err := in.SendMsg(f); err != nil {
			return err
		}
	}
}
