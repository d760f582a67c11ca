package grpcserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/logtest"
)

const serviceName = "postamt.test.v1.TestService"

// testService answers Echo and Watch by the request's value: "panic" panics, "notfound" and
// "internal" return domain errors, "slow" blocks until released (or cut), "watch" until its
// context ends and then answers "ended" ("watch-err": its context's error), "request-id" answers with the request id, anything else
// is echoed.
type testService struct {
	started chan struct{} // receives when a slow call has started
	release chan struct{} // closed to let slow calls finish
}

func newTestService() *testService {
	return &testService{started: make(chan struct{}, 8), release: make(chan struct{})}
}

func (s *testService) handle(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	switch in.GetValue() {
	case "panic":
		panic("boom")
	case "notfound":
		return nil, errs.NotFound("mailbox", "mb-1")
	case "internal":
		return nil, fmt.Errorf("store: %w", errors.New("redis: connection pool exhausted at 10.0.0.7"))
	case "watch":
		s.started <- struct{}{}
		<-ctx.Done()
		return wrapperspb.String("ended"), nil
	case "watch-err":
		s.started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	case "slow":
		s.started <- struct{}{}
		select {
		case <-s.release:
			return wrapperspb.String("done"), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	case "request-id":
		return wrapperspb.String(grpcserver.RequestID(ctx)), nil
	}
	return in, nil
}

func (s *testService) desc() *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: serviceName,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Echo",
			Handler: func(_ any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.StringValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				h := func(ctx context.Context, req any) (any, error) { return s.handle(ctx, req.(*wrapperspb.StringValue)) }
				return ic(ctx, in, &grpc.UnaryServerInfo{FullMethod: "/" + serviceName + "/Echo"}, h)
			},
		}},
		Streams: []grpc.StreamDesc{{
			StreamName:    "Watch",
			ServerStreams: true,
			Handler: func(_ any, ss grpc.ServerStream) error {
				in := new(wrapperspb.StringValue)
				if err := ss.RecvMsg(in); err != nil {
					return err
				}
				out, err := s.handle(ss.Context(), in)
				if err != nil {
					return err
				}
				return ss.SendMsg(out)
			},
		}},
	}
}

// logLines returns the JSON log records written to b so far.
func logLines(t *testing.T, b *logtest.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// running is a started server and a connection to it.
type running struct {
	svc    *testService
	conn   *grpc.ClientConn
	addr   string
	reg    *prometheus.Registry
	logs   *logtest.Buffer
	cancel context.CancelFunc
	done   chan error // Serve's result

	once     sync.Once
	serveErr error
}

// wait returns Serve's result once it has returned.
func (r *running) wait() error {
	r.once.Do(func() { r.serveErr = <-r.done })
	return r.serveErr
}

// start serves opts (with the test service registered) on a loopback listener until the test
// ends or r.cancel is called.
func start(t *testing.T, opts grpcserver.Options) *running {
	t.Helper()
	r := &running{svc: newTestService(), reg: prometheus.NewRegistry(), logs: &logtest.Buffer{}, done: make(chan error, 1)}
	opts.Name = append(opts.Name, serviceName)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewJSONHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	opts.Metrics = r.reg
	opts.Register = func(s *grpc.Server) { s.RegisterService(r.svc.desc(), struct{}{}) }
	srv, err := grpcserver.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- srv.Serve(ctx, lis) }()
	r.conn = dial(t, r.addr)
	t.Cleanup(func() {
		cancel()
		close(r.svc.release)
		if err := r.wait(); err != nil {
			t.Errorf("Serve() = %v", err)
		}
	})
	return r
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func echo(ctx context.Context, conn *grpc.ClientConn, value string, opts ...grpc.CallOption) (string, error) {
	out := new(wrapperspb.StringValue)
	err := conn.Invoke(ctx, "/"+serviceName+"/Echo", wrapperspb.String(value), out, opts...)
	return out.GetValue(), err
}

func watch(ctx context.Context, conn *grpc.ClientConn, value string) (string, error) {
	s, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/"+serviceName+"/Watch")
	if err != nil {
		return "", err
	}
	if err := s.SendMsg(wrapperspb.String(value)); err != nil {
		return "", err
	}
	if err := s.CloseSend(); err != nil {
		return "", err
	}
	out := new(wrapperspb.StringValue)
	if err := s.RecvMsg(out); err != nil {
		return "", err
	}
	// Read to the end, so the call (and its log line) is complete when this returns.
	if err := s.RecvMsg(new(wrapperspb.StringValue)); !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("stream went on after one message: %w", err)
	}
	return out.GetValue(), nil
}

// testCtx is a context that ends well before the test binary's own timeout, so a stuck step
// fails with a message instead of a goroutine dump.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitHealth watches service's health until it reports want, and fails the test if ctx ends
// first. The server pushes every change, so nothing polls.
func waitHealth(ctx context.Context, t *testing.T, conn *grpc.ClientConn, service string, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatal(err)
	}
	var got healthpb.HealthCheckResponse_ServingStatus
	for got != want {
		resp, err := w.Recv()
		if err != nil {
			t.Fatalf("health %q: last status %v, want %v: %v", service, got, want, err)
		}
		got = resp.GetStatus()
	}
}

func TestReadinessFollowsProbes(t *testing.T) {
	var redisDown atomic.Bool
	r := start(t, grpcserver.Options{
		ReadinessInterval: 10 * time.Millisecond,
		Readiness: []grpcserver.Check{
			{Name: "redis", Probe: func(context.Context) error {
				if redisDown.Load() {
					return errors.New("connection refused")
				}
				return nil
			}},
			{Name: "nats", Probe: func(context.Context) error { return nil }},
		},
	})
	ctx := testCtx(t)
	serving, notServing := healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING
	steps := []struct {
		name      string
		down      bool
		wantReady healthpb.HealthCheckResponse_ServingStatus
	}{
		{name: "probes pass", down: false, wantReady: serving},
		{name: "a probe fails", down: true, wantReady: notServing},
		{name: "it recovers", down: false, wantReady: serving},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			redisDown.Store(st.down)
			waitHealth(ctx, t, r.conn, grpcserver.ReadinessService, st.wantReady)
			waitHealth(ctx, t, r.conn, serviceName, st.wantReady)
			// Liveness does not depend on the dependencies.
			resp, err := healthpb.NewHealthClient(r.conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.GetStatus(); got != serving {
				t.Errorf("liveness = %v, want %v", got, serving)
			}
		})
	}
}

func TestStuckProbeHoldsNeitherReadinessNorDrain(t *testing.T) {
	unblock := make(chan struct{})
	t.Cleanup(func() { close(unblock) }) // runs last: after the server has drained
	r := start(t, grpcserver.Options{
		ReadinessInterval: 10 * time.Millisecond,
		Readiness: []grpcserver.Check{
			{Name: "stuck", Probe: func(context.Context) error { <-unblock; return nil }},
			{Name: "fine", Probe: func(context.Context) error { return nil }},
		},
	})
	ctx := testCtx(t)
	waitHealth(ctx, t, r.conn, grpcserver.ReadinessService, healthpb.HealthCheckResponse_NOT_SERVING)
	if _, err := echo(ctx, r.conn, "still answers"); err != nil {
		t.Errorf("call while not ready: %v", err)
	}
	r.cancel()
	if err := r.wait(); err != nil {
		t.Errorf("Serve() = %v, want nil", err)
	}
}

func TestErrors(t *testing.T) {
	r := start(t, grpcserver.Options{})
	ctx := testCtx(t)
	tests := []struct {
		name        string
		call        func(context.Context, *grpc.ClientConn, string) (string, error)
		value       string
		wantCode    codes.Code
		wantMsg     string
		wantDetails []proto.Message
	}{
		{name: "unary domain error", call: unary, value: "notfound", wantCode: codes.NotFound, wantMsg: `mailbox "mb-1" not found`,
			wantDetails: []proto.Message{&errdetails.ResourceInfo{ResourceType: "mailbox", ResourceName: "mb-1"}}},
		{name: "stream domain error", call: watch, value: "notfound", wantCode: codes.NotFound, wantMsg: `mailbox "mb-1" not found`,
			wantDetails: []proto.Message{&errdetails.ResourceInfo{ResourceType: "mailbox", ResourceName: "mb-1"}}},
		{name: "unclassified error leaks nothing", call: unary, value: "internal", wantCode: codes.Internal, wantMsg: "internal error"},
		{name: "unary panic", call: unary, value: "panic", wantCode: codes.Internal, wantMsg: "internal error"},
		{name: "stream panic", call: watch, value: "panic", wantCode: codes.Internal, wantMsg: "internal error"},
		{name: "alive after the panics", call: unary, value: "hello", wantCode: codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.call(ctx, r.conn, tt.value)
			st := status.Convert(err)
			if got := st.Code(); got != tt.wantCode {
				t.Fatalf("code = %v, want %v (%v)", got, tt.wantCode, err)
			}
			if err == nil {
				return
			}
			if got := st.Message(); got != tt.wantMsg {
				t.Errorf("message = %q, want %q", got, tt.wantMsg)
			}
			var gotDetails []proto.Message
			for _, d := range st.Details() {
				gotDetails = append(gotDetails, d.(proto.Message))
			}
			if len(gotDetails) != len(tt.wantDetails) {
				t.Fatalf("details = %v, want %v", gotDetails, tt.wantDetails)
			}
			for i := range gotDetails {
				if !proto.Equal(gotDetails[i], tt.wantDetails[i]) {
					t.Errorf("detail %d = %v, want %v", i, gotDetails[i], tt.wantDetails[i])
				}
			}
		})
	}

	t.Run("metrics count by code", func(t *testing.T) {
		for _, tt := range []struct {
			method, code string
			want         float64
		}{
			{"Echo", "NotFound", 1}, {"Watch", "NotFound", 1}, {"Echo", "Internal", 2}, {"Watch", "Internal", 1}, {"Echo", "OK", 1},
		} {
			if got := handled(t, r.reg, tt.method, tt.code); got != tt.want {
				t.Errorf("grpc_server_handled_total{%s,%s} = %v, want %v", tt.method, tt.code, got, tt.want)
			}
		}
	})
	t.Run("panics are logged with their stack", func(t *testing.T) {
		var stacks int
		for _, l := range logLines(t, r.logs) {
			if s, _ := l["stack"].(string); strings.Contains(s, "testService") {
				stacks++
			}
		}
		if got, want := stacks, 2; got != want {
			t.Errorf("logged %d panic stacks, want %d", got, want)
		}
	})
}

func unary(ctx context.Context, conn *grpc.ClientConn, value string) (string, error) {
	return echo(ctx, conn, value)
}

// handled reads grpc_server_handled_total for a method of the test service and a code.
func handled(t *testing.T, reg *prometheus.Registry, method, code string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "grpc_server_handled_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["grpc_service"] == serviceName && labels["grpc_method"] == method && labels["grpc_code"] == code {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestRequestID(t *testing.T) {
	r := start(t, grpcserver.Options{})
	tests := []struct {
		name   string
		sent   string // "" sends none
		wantAs string // "" means a fresh id
	}{
		{name: "kept", sent: "req-42", wantAs: "req-42"},
		{name: "made when missing"},
		{name: "replaced when odd", sent: "two words"},
		{name: "replaced when too long", sent: strings.Repeat("x", 200)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			if tt.sent != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, grpcserver.RequestIDHeader, tt.sent)
			}
			var header metadata.MD
			got, err := echo(ctx, r.conn, "request-id", grpc.Header(&header))
			if err != nil {
				t.Fatal(err)
			}
			if h := header.Get(grpcserver.RequestIDHeader); len(h) != 1 || h[0] != got {
				t.Errorf("response header %v, want [%s]", h, got)
			}
			switch {
			case tt.wantAs != "" && got != tt.wantAs:
				t.Errorf("request id = %q, want %q", got, tt.wantAs)
			case tt.wantAs == "" && (got == "" || got == tt.sent):
				t.Errorf("request id = %q, want a fresh one", got)
			}
		})
	}
}

func TestRequestLogAndAuth(t *testing.T) {
	cfg := auth.Config{HS256Secret: "a-development-secret-of-32-bytes!"}
	v, err := auth.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := auth.NewSigner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := signer.Mint(auth.Principal{Tenant: "t1", User: "u1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, grpcserver.Options{Verifier: v})
	ctx := testCtx(t)
	withToken := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok, grpcserver.RequestIDHeader, "rid-1")

	tests := []struct {
		name     string
		ctx      context.Context
		call     func(context.Context, *grpc.ClientConn, string) (string, error)
		value    string
		wantCode codes.Code
		wantLog  map[string]any
	}{
		{name: "authenticated unary", ctx: withToken, call: unary, value: "a",
			wantLog: map[string]any{"method": "/" + serviceName + "/Echo", "code": "OK", "request_id": "rid-1", "tenant": "t1", "user": "u1", "level": "INFO"}},
		{name: "authenticated stream", ctx: withToken, call: watch, value: "b",
			wantLog: map[string]any{"method": "/" + serviceName + "/Watch", "code": "OK", "request_id": "rid-1", "tenant": "t1", "user": "u1"}},
		{name: "domain error", ctx: withToken, call: unary, value: "notfound", wantCode: codes.NotFound,
			wantLog: map[string]any{"code": "NotFound", "tenant": "t1"}},
		{name: "unclassified error is logged in full", ctx: withToken, call: unary, value: "internal", wantCode: codes.Internal,
			wantLog: map[string]any{"code": "Internal", "level": "ERROR", "error": "store: redis: connection pool exhausted at 10.0.0.7"}},
		{name: "no token", ctx: ctx, call: unary, value: "c", wantCode: codes.Unauthenticated,
			wantLog: map[string]any{"code": "Unauthenticated"}},
		{name: "no token, stream", ctx: ctx, call: watch, value: "d", wantCode: codes.Unauthenticated,
			wantLog: map[string]any{"code": "Unauthenticated"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(logLines(t, r.logs))
			_, err := tt.call(tt.ctx, r.conn, tt.value)
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("code = %v, want %v (%v)", got, tt.wantCode, err)
			}
			lines := logLines(t, r.logs)[before:]
			var rpc map[string]any
			for _, l := range lines {
				if l["msg"] == "rpc" {
					rpc = l
				}
			}
			if rpc == nil {
				t.Fatalf("no rpc log line in %v", lines)
			}
			for k, want := range tt.wantLog {
				if got := rpc[k]; !reflect.DeepEqual(got, want) {
					t.Errorf("log %s = %v, want %v", k, got, want)
				}
			}
			if _, ok := rpc["duration"]; !ok {
				t.Errorf("log line has no duration: %v", rpc)
			}
		})
	}
	if strings.Contains(r.logs.String(), tok) {
		t.Errorf("the token appears in the logs")
	}

	t.Run("health needs no token", func(t *testing.T) {
		waitHealth(ctx, t, r.conn, grpcserver.ReadinessService, healthpb.HealthCheckResponse_SERVING)
	})
}

func TestDrain(t *testing.T) {
	r := start(t, grpcserver.Options{DrainTimeout: time.Minute})
	ctx := testCtx(t)
	waitHealth(ctx, t, r.conn, grpcserver.ReadinessService, healthpb.HealthCheckResponse_SERVING)

	slow := make(chan error, 1)
	go func() {
		got, err := echo(ctx, r.conn, "slow")
		if err == nil && got != "done" {
			err = fmt.Errorf("slow call answered %q", got)
		}
		slow <- err
	}()
	<-r.svc.started

	// A watcher sees every status go NOT_SERVING before anything is refused.
	watchCtx, stopWatch := context.WithCancel(ctx)
	w, err := healthpb.NewHealthClient(r.conn).Watch(watchCtx, &healthpb.HealthCheckRequest{Service: ""})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := w.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("liveness before the drain = %v, %v; want SERVING", resp.GetStatus(), err)
	}

	r.cancel()

	if resp, err := w.Recv(); err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("liveness in the drain = %v, %v; want NOT_SERVING", resp.GetStatus(), err)
	}
	stopWatch() // an open watch would hold the drain like any other call

	t.Run("new calls are refused", func(t *testing.T) {
		// The drain starts right after NOT_SERVING; until the connection has its GOAWAY, a call
		// may still pass, so call until one is refused.
		for {
			_, err := echo(ctx, r.conn, "new")
			if status.Code(err) == codes.Unavailable {
				break
			}
			if err != nil {
				t.Fatalf("new call: %v, want Unavailable", err)
			}
		}
		if _, err := echo(ctx, dial(t, r.addr), "new"); status.Code(err) != codes.Unavailable {
			t.Errorf("call on a new connection: %v, want Unavailable", err)
		}
	})
	t.Run("the running call finishes", func(t *testing.T) {
		select {
		case err := <-r.done:
			t.Fatalf("Serve returned (%v) before the running call finished", err)
		default:
		}
		r.svc.release <- struct{}{} // unbuffered: the handler is waiting
		if err := <-slow; err != nil {
			t.Errorf("slow call: %v", err)
		}
		if err := r.wait(); err != nil {
			t.Errorf("Serve() = %v, want nil", err)
		}
	})
}

// TestDrainEndsWatches: a stream of EndOnDrain ends when the drain starts, so an open watch
// does not hold the drain until its timeout (an hour here: the test would time out first). A
// handler that answers then ends the stream as it answers; one that returns its context's error
// answers UNAVAILABLE (reconnect), not CANCELLED, which would say the client gave up (the
// gateway's test covers a forwarded stream, whose upstream call answers CANCELLED).
func TestDrainEndsWatches(t *testing.T) {
	for _, tc := range []struct {
		value string // the handler: "watch" answers "ended", "watch-err" returns ctx.Err()
		check func(got string, err error) error
	}{
		{"watch", func(got string, err error) error {
			if err == nil && got != "ended" {
				return fmt.Errorf("watch answered %q, want it ended by the drain (its handler answering)", got)
			}
			return err
		}},
		{"watch-err", func(_ string, err error) error {
			if status.Code(err) != codes.Unavailable {
				return fmt.Errorf("the watch ended with %v, want UNAVAILABLE", err)
			}
			return nil
		}},
	} {
		t.Run(tc.value, func(t *testing.T) {
			r := start(t, grpcserver.Options{DrainTimeout: time.Hour, EndOnDrain: []string{"/" + serviceName + "/Watch"}})
			ctx := testCtx(t)
			ended := make(chan error, 1)
			go func() {
				got, err := watch(ctx, r.conn, tc.value)
				ended <- tc.check(got, err)
			}()
			<-r.svc.started
			r.cancel()
			select {
			case err := <-ended:
				if err != nil {
					t.Error(err)
				}
			case <-ctx.Done():
				t.Fatal("the watch held the drain")
			}
			if err := r.wait(); err != nil {
				t.Errorf("Serve() = %v, want nil", err)
			}
			if strings.Contains(r.logs.String(), "drain timeout") {
				t.Error("the drain timed out")
			}
		})
	}
}

func TestDrainTimeoutCutsCalls(t *testing.T) {
	r := start(t, grpcserver.Options{DrainTimeout: 10 * time.Millisecond})
	ctx := testCtx(t)
	slow := make(chan error, 1)
	go func() {
		_, err := echo(ctx, r.conn, "slow")
		slow <- err
	}()
	<-r.svc.started
	r.cancel()
	if err := <-slow; status.Code(err) == codes.OK {
		t.Errorf("slow call succeeded, want it cut")
	}
}

func TestMaxRecvBytes(t *testing.T) {
	r := start(t, grpcserver.Options{MaxRecvBytes: 1024})
	ctx := testCtx(t)
	tests := []struct {
		name     string
		size     int
		wantCode codes.Code
	}{
		{name: "under the limit", size: 512, wantCode: codes.OK},
		{name: "over the limit", size: 4096, wantCode: codes.ResourceExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := echo(ctx, r.conn, strings.Repeat("x", tt.size))
			if got := status.Code(err); got != tt.wantCode {
				t.Errorf("code = %v, want %v", got, tt.wantCode)
			}
		})
	}
}

func TestServersShareARegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	for i := range 2 {
		if _, err := grpcserver.New(grpcserver.Options{Metrics: reg}); err != nil {
			t.Fatalf("server %d: %v", i, err)
		}
	}
}

func TestDialForwardsRequestID(t *testing.T) {
	r := start(t, grpcserver.Options{})
	conn, err := grpcserver.Dial(r.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	tests := []struct {
		name string
		ctx  context.Context
		want string
	}{
		{name: "from the request being served", ctx: grpcserver.WithRequestID(testCtx(t), "upstream-1"), want: "upstream-1"},
		{name: "set by the caller wins", ctx: metadata.AppendToOutgoingContext(grpcserver.WithRequestID(testCtx(t), "upstream-1"), grpcserver.RequestIDHeader, "explicit"), want: "explicit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := echo(tt.ctx, conn, "request-id")
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("request id at the server = %q, want %q", got, tt.want)
			}
		})
	}
}

// calls is how many calls a server's metrics counted.
func calls(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "grpc_server_handled_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// TestDialSpreadsCalls: a name that resolves to several servers (a headless Service) gets calls
// on each of them, not all on the first.
func TestDialSpreadsCalls(t *testing.T) {
	a, b := start(t, grpcserver.Options{}), start(t, grpcserver.Options{})
	res := manual.NewBuilderWithScheme("pods")
	res.InitialState(resolver.State{Addresses: []resolver.Address{{Addr: a.addr}, {Addr: b.addr}}})
	conn, err := grpcserver.Dial("pods:///outbox-headless", grpc.WithResolvers(res))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx := testCtx(t)
	for range 20 {
		if _, err := echo(ctx, conn, "x"); err != nil {
			t.Fatal(err)
		}
	}
	if na, nb := calls(t, a.reg), calls(t, b.reg); na == 0 || nb == 0 || na+nb != 20 {
		t.Errorf("calls per server: %v and %v, want both used", na, nb)
	}
}
