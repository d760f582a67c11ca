// Package logging builds the suite's structured loggers. Nothing here touches slog's default
// logger: each service receives its logger explicitly from main.
//
// Loggers made by New add the attributes a request carries in its context (WithAttrs: the request
// id, set by the gRPC server) and the OpenTelemetry trace and span ids, so that a handler's
// `log.InfoContext(ctx, ...)` line can be found from a trace and vice versa.
//
// Every duration is written in milliseconds as a number under its key with "_ms" appended
// ("duration": 14.5ms becomes "duration_ms":14.5), so a person reads it and a log query can
// compare it; slog's own JSON form is integer nanoseconds. Callers log time.Duration values and
// never convert them themselves.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// New returns a logger writing JSON (format "json" or "") or logfmt-like text ("text") to w, at
// level ("debug", "info", "warn", "error"). Callers must never log message bodies or credentials.
func New(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l, ReplaceAttr: readableDurations}
	var h slog.Handler
	switch strings.ToLower(format) {
	case "", "json":
		h = slog.NewJSONHandler(w, opts)
	case "text":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, fmt.Errorf("log format %q: want json or text", format)
	}
	return slog.New(contextHandler{h}), nil
}

// readableDurations writes a duration attribute as milliseconds (a float) under key+"_ms".
func readableDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.Float64(a.Key+"_ms", Millis(a.Value.Duration()))
	}
	return a
}

// Millis is d in milliseconds with microsecond precision (14.5, not 14.500123), the unit of every
// duration in the log; for code that writes a duration outside a log record (postamt up's
// console lines).
func Millis(d time.Duration) float64 {
	return float64(d.Round(time.Microsecond)) / float64(time.Millisecond)
}

type attrsKey struct{}

// WithAttrs returns ctx carrying attrs, which loggers made by New add to every record logged with
// that context. The gRPC server uses it for the request id, so handlers need not pass it along.
func WithAttrs(ctx context.Context, attrs ...slog.Attr) context.Context {
	prev, _ := ctx.Value(attrsKey{}).([]slog.Attr)
	all := make([]slog.Attr, 0, len(prev)+len(attrs))
	all = append(append(all, prev...), attrs...)
	return context.WithValue(ctx, attrsKey{}, all)
}

// contextHandler adds the context's attributes and trace ids to each record.
type contextHandler struct{ slog.Handler }

func (h contextHandler) Handle(ctx context.Context, r slog.Record) error {
	if attrs, ok := ctx.Value(attrsKey{}).([]slog.Attr); ok {
		r.AddAttrs(attrs...)
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h contextHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return contextHandler{h.Handler.WithAttrs(attrs)}
}

func (h contextHandler) WithGroup(name string) slog.Handler {
	return contextHandler{h.Handler.WithGroup(name)}
}
