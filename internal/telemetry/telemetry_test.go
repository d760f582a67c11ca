package telemetry_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/telemetry"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestOpsServer(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "postamt_test_total", Help: "A test counter."})
	reg.MustRegister(c)
	c.Inc()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() { done <- telemetry.NewOpsServer("unused", reg, nil).Serve(ctx, lis) }()
	base := "http://" + lis.Addr().String()

	tests := []struct {
		path, wantBody string
		wantStatus     int
	}{
		{path: "/metrics", wantStatus: http.StatusOK, wantBody: "postamt_test_total 1"},
		{path: "/debug/pprof/", wantStatus: http.StatusOK, wantBody: "goroutine"},
		{path: "/debug/pprof/goroutine?debug=1", wantStatus: http.StatusOK, wantBody: "goroutine profile"},
		{path: "/healthz", wantStatus: http.StatusOK, wantBody: "ok"},
		{path: "/nothing", wantStatus: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			if !strings.Contains(string(body), tt.wantBody) {
				t.Errorf("body does not contain %q:\n%.500s", tt.wantBody, body)
			}
		})
	}
	t.Run("metrics come from the given registry only", func(t *testing.T) {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if strings.Contains(string(body), "go_goroutines") {
			t.Errorf("/metrics exports the default registry's collectors")
		}
	})

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve() = %v, want nil", err)
	}
}

func TestOpsServerDisabled(t *testing.T) {
	ctx, cancel := context.WithCancel(testCtx(t))
	cancel()
	if err := telemetry.NewOpsServer("", prometheus.NewRegistry(), nil).Run(ctx); err != nil {
		t.Errorf("Run() = %v, want nil", err)
	}
}

// collector is a fake OTLP trace collector that hands over what it receives.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	got chan *coltracepb.ExportTraceServiceRequest
}

func (c *collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.got <- req
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// httpCollector is a fake OTLP/HTTP trace collector: it hands over what arrives at path.
func httpCollector(t *testing.T, path string, got chan<- *coltracepb.ExportTraceServiceRequest) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != path {
			http.NotFound(w, r)
			return
		}
		b, _ := io.ReadAll(r.Body)
		req := &coltracepb.ExportTraceServiceRequest{}
		if err := proto.Unmarshal(b, req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		got <- req
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestTracerProviderExports: spans reach a collector over gRPC and over HTTP/protobuf, from the
// base endpoint (/v1/traces appended over HTTP) or the traces endpoint (used as it is), under the
// configured service name.
func TestTracerProviderExports(t *testing.T) {
	got := make(chan *coltracepb.ExportTraceServiceRequest, 16)
	col := &collector{got: got}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, col)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	httpAddr := httpCollector(t, "/v1/traces", got)
	customAddr := httpCollector(t, "/otlp/traces", got)

	tests := []struct {
		name string
		e    telemetry.Export
	}{
		{name: "gRPC host:port", e: telemetry.Export{Endpoint: lis.Addr().String()}},
		{name: "gRPC http URL", e: telemetry.Export{Endpoint: "http://" + lis.Addr().String(), Protocol: telemetry.ProtocolGRPC}},
		{name: "gRPC traces endpoint wins", e: telemetry.Export{Endpoint: "127.0.0.1:1", TracesEndpoint: lis.Addr().String()}},
		{name: "HTTP base endpoint", e: telemetry.Export{Endpoint: "http://" + httpAddr, Protocol: telemetry.ProtocolHTTP}},
		{name: "HTTP host:port", e: telemetry.Export{Endpoint: httpAddr, Protocol: telemetry.ProtocolHTTP}},
		{name: "HTTP traces endpoint as it is", e: telemetry.Export{Endpoint: "http://127.0.0.1:1", TracesEndpoint: "http://" + customAddr + "/otlp/traces", Protocol: telemetry.ProtocolHTTP}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testCtx(t)
			tt.e.ServiceName = "postamt-mailbox"
			tp, err := telemetry.NewTracerProvider(ctx, tt.e)
			if err != nil {
				t.Fatal(err)
			}
			_, span := tp.Tracer("test").Start(ctx, "SubmitEmail")
			span.End()
			if err := tp.Shutdown(ctx); err != nil { // flushes
				t.Fatal(err)
			}
			var req *coltracepb.ExportTraceServiceRequest
			select {
			case req = <-got:
			case <-ctx.Done():
				t.Fatal("the collector received nothing")
			}
			var service, name string
			for _, rs := range req.GetResourceSpans() {
				for _, a := range rs.GetResource().GetAttributes() {
					if a.GetKey() == "service.name" {
						service = a.GetValue().GetStringValue()
					}
				}
				for _, ss := range rs.GetScopeSpans() {
					for _, s := range ss.GetSpans() {
						name = s.GetName()
					}
				}
			}
			if service != "postamt-mailbox" || name != "SubmitEmail" {
				t.Errorf("exported span %q of service %q, want SubmitEmail of postamt-mailbox", name, service)
			}
		})
	}
	t.Run("an unknown protocol", func(t *testing.T) {
		if _, err := telemetry.NewTracerProvider(testCtx(t), telemetry.Export{Endpoint: "127.0.0.1:4317", Protocol: "http/json"}); err == nil {
			t.Error("http/json accepted")
		}
	})
}

func TestSetupTracingWithoutEndpoint(t *testing.T) {
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	t.Cleanup(func() {
		otel.SetTracerProvider(prevTP)
		otel.SetTextMapPropagator(prevProp)
	})
	ctx := testCtx(t)
	shutdown, err := telemetry.SetupTracing(ctx, telemetry.Export{ServiceName: "mailbox"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Spans are recorded (they have ids to propagate) and the W3C header goes out.
	spanCtx, span := otel.Tracer("test").Start(ctx, "op")
	if !span.SpanContext().IsValid() {
		t.Errorf("span context is not valid")
	}
	carrier := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(spanCtx, carrier)
	if carrier.Get("traceparent") == "" {
		t.Errorf("no traceparent injected: %v", carrier)
	}
	span.End()
	if err := shutdown(ctx); err != nil {
		t.Errorf("shutdown() = %v", err)
	}
}
