package logging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

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
