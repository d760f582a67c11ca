// Package telemetry sets up what operators observe a process with: OpenTelemetry traces (exported
// over OTLP, gRPC or HTTP/protobuf, when an endpoint is configured) and the ops HTTP server with
// Prometheus metrics, pprof and a liveness endpoint.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// The OTLP protocols the exporter speaks (OTEL_EXPORTER_OTLP_PROTOCOL).
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// Export says what the spans of a process are called and where they go, as the OpenTelemetry
// environment variables of config.Common say it (read there, through the service's lookup, not
// by the SDK from the process environment, so tests and `postamt up` can set them).
type Export struct {
	// ServiceName is the resource's service.name (OTEL_SERVICE_NAME).
	ServiceName string
	// Endpoint is the OTLP base endpoint (OTEL_EXPORTER_OTLP_ENDPOINT): host:port (plaintext,
	// the usual in-cluster collector) or an http:// or https:// URL (https uses TLS); over
	// HTTP, /v1/traces is appended to it.
	Endpoint string
	// TracesEndpoint is the traces endpoint (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); it wins over
	// Endpoint and, over HTTP, is used as it is (a URL with its path). Both empty: spans are
	// recorded (trace ids reach logs and other services) but not exported.
	TracesEndpoint string
	// Protocol is ProtocolGRPC (empty means it) or ProtocolHTTP (OTEL_EXPORTER_OTLP_PROTOCOL,
	// or OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, which wins).
	Protocol string
}

// NewTracerProvider returns a tracer provider for e.ServiceName that exports spans over OTLP
// as e says, or, with no endpoint, records spans without exporting them. It touches no global
// state. Other OTEL_EXPORTER_OTLP_* variables (headers, certificates, timeouts) are read by the
// exporter itself. The provider's Shutdown flushes buffered spans.
func NewTracerProvider(ctx context.Context, e Export) (*sdktrace.TracerProvider, error) {
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", e.ServiceName)))
	if err != nil {
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}
	exp, err := newExporter(ctx, e)
	if err != nil {
		return nil, err
	}
	if exp != nil {
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	return sdktrace.NewTracerProvider(opts...), nil
}

// newExporter builds the OTLP exporter e asks for, or nil for none. The exporters connect lazily
// and retry in the background: a collector that is down costs spans, never the start.
func newExporter(ctx context.Context, e Export) (sdktrace.SpanExporter, error) {
	endpoint, signal := e.Endpoint, false
	if e.TracesEndpoint != "" {
		endpoint, signal = e.TracesEndpoint, true
	}
	if endpoint == "" {
		return nil, nil //nolint:nilnil // no endpoint: no exporter, and nothing wrong
	}
	url := strings.Contains(endpoint, "://")
	switch e.Protocol {
	case "", ProtocolGRPC:
		var o []otlptracegrpc.Option
		if url {
			o = append(o, otlptracegrpc.WithEndpointURL(endpoint))
		} else {
			o = append(o, otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure())
		}
		exp, err := otlptracegrpc.New(ctx, o...)
		if err != nil {
			return nil, fmt.Errorf("OTLP/gRPC trace exporter for %s: %w", endpoint, err)
		}
		return exp, nil
	case ProtocolHTTP:
		if !url {
			endpoint = "http://" + endpoint
		}
		if !signal {
			// The base endpoint names the collector; the traces path follows (OTLP spec).
			endpoint = strings.TrimSuffix(endpoint, "/") + "/v1/traces"
		}
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(endpoint))
		if err != nil {
			return nil, fmt.Errorf("OTLP/HTTP trace exporter for %s: %w", endpoint, err)
		}
		return exp, nil
	}
	return nil, fmt.Errorf("OTLP protocol %q: want %s or %s", e.Protocol, ProtocolGRPC, ProtocolHTTP)
}

// Propagator is the W3C trace context and baggage propagator the suite uses on gRPC and NATS
// alike, so traces cross every hop, to non-Go consumers too.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// SetupTracing makes the tracer provider of NewTracerProvider and installs it, with Propagator,
// as OpenTelemetry's global provider and propagator, and log as the handler of OpenTelemetry's
// errors (a failed export: otherwise a plain-text line on stderr). This is the one place the
// suite sets OpenTelemetry's globals: the otelgrpc handlers of grpcserver.New and
// grpcserver.Dial, and the event bus's NATS header propagation, read them by default. Call it
// once, from main; shutdown flushes and stops the export (give it a context with a deadline).
func SetupTracing(ctx context.Context, e Export, log *slog.Logger) (shutdown func(context.Context) error, err error) {
	tp, err := NewTracerProvider(ctx, e)
	if err != nil {
		return nil, err
	}
	if log != nil {
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn("opentelemetry: "+err.Error(), "library", "opentelemetry")
		}))
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
