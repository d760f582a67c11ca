// Package telemetry sets up traces and the ops HTTP endpoint (Prometheus metrics, pprof, a plain
// liveness check) of a Postamt process.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
)

// SetupTracing installs the process's tracer provider and the W3C propagator. This is the one place
// that sets OpenTelemetry's globals: otelgrpc and the event bus take the provider from there, and a
// process has exactly one. With an empty endpoint spans are created (trace ids still flow through
// gRPC and NATS) but not exported.
func SetupTracing(ctx context.Context, service, endpoint string) (func(context.Context) error, error) {
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(service))),
	}
	if endpoint != "" {
		exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure())
		if err != nil {
			return nil, fmt.Errorf("otlp exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return tp.Shutdown, nil
}

// OpsServer serves /metrics from its own registry (never the global default), /debug/pprof/ and
// /healthz on the ops address, apart from the API.
type OpsServer struct {
	addr string
	srv  *http.Server
	log  *slog.Logger
}

// NewOpsServer builds the ops server; an empty addr disables it.
func NewOpsServer(addr string, reg *prometheus.Registry, log *slog.Logger) *OpsServer {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return &OpsServer{addr: addr, log: log, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
}

// Run serves until ctx ends.
func (o *OpsServer) Run(ctx context.Context) error {
	if o.addr == "" {
		<-ctx.Done()
		return nil
	}
	lis, err := net.Listen("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("ops listen on %s: %w", o.addr, err)
	}
	return o.Serve(ctx, lis)
}

// Serve serves on lis until ctx ends.
func (o *OpsServer) Serve(ctx context.Context, lis net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- o.srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ops server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := o.srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("ops server shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
