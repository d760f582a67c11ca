package logging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/postamt/postamt/internal/logging"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name, level, format string
		wantErr             bool
		wantJSON            bool
	}{
		{name: "json by default", level: "info", format: "", wantJSON: true},
		{name: "json", level: "debug", format: "json", wantJSON: true},
		{name: "text", level: "warn", format: "text"},
		{name: "bad level", level: "loud", format: "json", wantErr: true},
		{name: "bad format", level: "info", format: "xml", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := logging.New(&buf, tt.level, tt.format)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("New(%q, %q) error = %v, want error %v", tt.level, tt.format, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			log.Error("hello")
			got := json.Valid(bytes.TrimSpace(buf.Bytes()))
			if got != tt.wantJSON {
				t.Errorf("output %q is JSON = %v, want %v", buf.String(), got, tt.wantJSON)
			}
		})
	}
}

func TestLevelFilters(t *testing.T) {
	var buf bytes.Buffer
	log, err := logging.New(&buf, "warn", "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("dropped")
	log.Warn("kept")
	if got, want := strings.Count(buf.String(), "\n"), 1; got != want {
		t.Errorf("lines = %d, want %d: %s", got, want, buf.String())
	}
}

func TestContextAttrsAndTraceIDs(t *testing.T) {
	var buf bytes.Buffer
	log, err := logging.New(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5, 6}, TraceFlags: trace.FlagsSampled,
	})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	ctx = logging.WithAttrs(ctx, slog.String("request_id", "r-1"))
	log.InfoContext(ctx, "handled")

	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"request_id": "r-1",
		"trace_id":   sc.TraceID().String(),
		"span_id":    sc.SpanID().String(),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %q", k, got[k], v)
		}
	}
}

// TestDurationsInMilliseconds: a duration is written as a float of milliseconds under key_ms,
// whichever way it was passed.
func TestDurationsInMilliseconds(t *testing.T) {
	var buf bytes.Buffer
	log, err := logging.New(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("rpc", slog.Duration("duration", 14500*time.Microsecond), "retry_in", 2*time.Second)
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got["duration_ms"] != 14.5 || got["retry_in_ms"] != 2000.0 {
		t.Errorf("line = %s, want duration_ms 14.5 and retry_in_ms 2000", buf.String())
	}
	if _, ok := got["duration"]; ok {
		t.Errorf("line = %s, still has the nanoseconds", buf.String())
	}
}

// TestLibraries: the libraries' lines are JSON lines of the logger in use, at their levels.
func TestLibraries(t *testing.T) {
	var before, after bytes.Buffer
	first, _ := logging.New(&before, "info", "json")
	second, _ := logging.New(&after, "info", "json")
	libs := logging.NewLibraries(first)
	libs.Redis().Printf(context.Background(), "connection pool: failed to dial after %d attempts", 5)
	libs.Use(second)
	libs.Redis().Printf(context.Background(), "connection pool: failed to dial after %d attempts", 6)
	libs.GRPC().Infof("subchannel %d ready", 1) // DEBUG: dropped at info
	libs.GRPC().Errorf("server failed: %v", "boom")
	logging.NATSServer(second).Warnf("slow consumer %s", "c1")

	if !strings.Contains(before.String(), `"msg":"connection pool: failed to dial after 5 attempts","library":"go-redis"`) {
		t.Errorf("fallback got %s", before.String())
	}
	lines := strings.Split(strings.TrimSpace(after.String()), "\n")
	want := []string{`"level":"WARN","msg":"connection pool: failed to dial after 6 attempts","library":"go-redis"`,
		`"level":"ERROR","msg":"server failed: boom","library":"grpc"`,
		`"level":"WARN","msg":"slow consumer c1","library":"nats-server"`}
	if len(lines) != len(want) {
		t.Fatalf("lines = %q, want %d", lines, len(want))
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d = %s, want %s", i, lines[i], w)
		}
	}
}
