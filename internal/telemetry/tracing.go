// Package telemetry sets up what operators observe a process with: OpenTelemetry traces (exported
// over OTLP/gRPC when an endpoint is configured) and the ops HTTP server with Prometheus metrics,
// pprof and a liveness endpoint.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// NewTracerProvider returns a tracer provider for service that exports spans over OTLP/gRPC to
// endpoint, or, when endpoint is empty, records spans (so trace ids reach logs and propagate to
// other services) without exporting them. It touches no global state.
//
// endpoint is host:port (plaintext, the usual in-cluster collector) or an http:// or https://
// URL (https uses TLS). Other OTEL_EXPORTER_OTLP_* variables (headers, certificates, timeouts)
// are read by the exporter itself. The provider's Shutdown flushes buffered spans.
func NewTracerProvider(ctx context.Context, service, endpoint string) (*sdktrace.TracerProvider, error) {
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", service)))
	if err != nil {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	if endpoint != "" {
		var eopts []otlptracegrpc.Option
		if strings.Contains(endpoint, "://") {
			eopts = append(eopts, otlptracegrpc.WithEndpointURL(endpoint))
		} else {
			eopts = append(eopts, otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure())
		}
		// The exporter connects lazily and retries in the background: a collector that is down
		// costs spans, never the start of the service.
		exp, err := otlptracegrpc.New(ctx, eopts...)
		if err != nil {
			return nil, fmt.Errorf("OTLP trace exporter for %s: %w", endpoint, err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	return sdktrace.NewTracerProvider(opts...), nil
}

// Propagator is the W3C trace context and baggage propagator the suite uses on gRPC and NATS
// alike, so traces cross every hop, to non-Go consumers too.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// SetupTracing makes the tracer provider of NewTracerProvider and installs it, with Propagator,
// as OpenTelemetry's global provider and propagator. This is the one place the suite sets
// globals: the otelgrpc handlers of grpcserver.New and grpcserver.Dial, and the event bus's NATS
// header propagation, read them by default. Call it once, from main; shutdown flushes and stops
// the export (give it a context with a deadline).
func SetupTracing(ctx context.Context, service, endpoint string) (shutdown func(context.Context) error, err error) {
	tp, err := NewTracerProvider(ctx, service, endpoint)
	if err != nil {
		return nil, err
	}
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(Propagator())
	return func(ctx context.Context) error {
		if err := tp.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("shut down tracing: %w", err)
		}
		return nil
	}, nil
}
