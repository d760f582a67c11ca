package config_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/postamt/postamt/internal/config"
	"github.com/postamt/postamt/internal/telemetry"
)

type svcConfig struct {
	config.Common
	Batch int `env:"SVC_BATCH, default=10" desc:"batch size"`
}

func load(t *testing.T, env map[string]string) (*svcConfig, error) {
	t.Helper()
	var c svcConfig
	err := config.Load(context.Background(), envconfig.MapLookuper(env), &c)
	return &c, err
}

func TestLoad(t *testing.T) {
	const secret = "0123456789abcdef0123456789abcdef"
	t.Run("defaults", func(t *testing.T) {
		c, err := load(t, map[string]string{"AUTH_HS256_SECRET": secret})
		if err != nil {
			t.Fatal(err)
		}
		if c.GRPCAddr != ":9090" || c.DrainTimeout != 30*time.Second || c.Auth.Audience != "postamt" || c.Batch != 10 || c.RedisPartitions != 16 {
			t.Errorf("defaults = %+v", c)
		}
	})
	t.Run("overrides", func(t *testing.T) {
		c, err := load(t, map[string]string{"AUTH_HS256_SECRET": secret, "GRPC_ADDR": "127.0.0.1:1", "SVC_BATCH": "7", "DRAIN_DELAY": "0s"})
		if err != nil {
			t.Fatal(err)
		}
		if c.GRPCAddr != "127.0.0.1:1" || c.Batch != 7 || c.DrainDelay != 0 {
			t.Errorf("overrides = %+v", c)
		}
	})
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no key source", map[string]string{}, "AUTH_JWKS_FILE"},
		{"bad log level", map[string]string{"AUTH_HS256_SECRET": secret, "LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{"bad redis url", map[string]string{"AUTH_HS256_SECRET": secret, "REDIS_URL": "http://x"}, "REDIS_URL"},
		{"bad address", map[string]string{"AUTH_HS256_SECRET": secret, "GRPC_ADDR": "nowhere"}, "GRPC_ADDR"},
		{"unparsable duration", map[string]string{"AUTH_HS256_SECRET": secret, "DRAIN_TIMEOUT": "soon"}, "DRAIN_TIMEOUT"},
		{"too many stream replicas", map[string]string{"AUTH_HS256_SECRET": secret, "NATS_STREAM_REPLICAS": "7"}, "NATS_STREAM_REPLICAS"},
		{"negative stream replicas", map[string]string{"AUTH_HS256_SECRET": secret, "NATS_STREAM_REPLICAS": "-1"}, "NATS_STREAM_REPLICAS"},
		{"too few partitions", map[string]string{"AUTH_HS256_SECRET": secret, "REDIS_PARTITIONS": "8"}, "REDIS_PARTITIONS"},
		{"too many partitions", map[string]string{"AUTH_HS256_SECRET": secret, "REDIS_PARTITIONS": "1025"}, "REDIS_PARTITIONS"},
		{"bad OTLP protocol", map[string]string{"AUTH_HS256_SECRET": secret, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"bad traces endpoint", map[string]string{"AUTH_HS256_SECRET": secret, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"},
		{"JWKS URL without a scheme", map[string]string{"AUTH_JWKS_URL": "idp.example/keys"}, "AUTH_JWKS_URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want one naming %s", err, tt.want)
			}
		})
	}
}

func TestVars(t *testing.T) {
	vars := config.Vars(&svcConfig{})
	byName := map[string]config.Var{}
	for _, v := range vars {
		byName[v.Name] = v
	}
	for _, name := range []string{"GRPC_ADDR", "AUTH_HS256_SECRET", "AUTH_AUDIENCE", "SVC_BATCH"} {
		if _, ok := byName[name]; !ok {
			t.Errorf("Vars lacks %s", name)
		}
	}
	if v := byName["SVC_BATCH"]; v.Default != "10" || v.Description != "batch size" {
		t.Errorf("SVC_BATCH = %+v", v)
	}
	for _, v := range vars {
		if v.Description == "" {
			t.Errorf("%s has no description", v.Name)
		}
	}
	table := config.MarkdownTable(vars[:1])
	if want := "| `GRPC_ADDR` | `:9090` |"; !strings.Contains(table, want) {
		t.Errorf("table %q lacks %q", table, want)
	}
}

// TestTraceExport: the OpenTelemetry variables decide the spans' service name, endpoint and
// protocol, the traces-specific ones winning; unset, the name is postamt-<service>.
func TestTraceExport(t *testing.T) {
	const secret = "0123456789abcdef0123456789abcdef"
	tests := []struct {
		name string
		env  map[string]string
		want telemetry.Export
	}{
		{"nothing set", map[string]string{}, telemetry.Export{ServiceName: "postamt-outbox", Protocol: "grpc"}},
		{"service name and base endpoint", map[string]string{"OTEL_SERVICE_NAME": "mail-out", "OTEL_EXPORTER_OTLP_ENDPOINT": "otel:4317"},
			telemetry.Export{ServiceName: "mail-out", Endpoint: "otel:4317", Protocol: "grpc"}},
		{"traces endpoint over HTTP", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://otel.example/v1/traces", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
			telemetry.Export{ServiceName: "postamt-outbox", TracesEndpoint: "https://otel.example/v1/traces", Protocol: "http/protobuf"}},
		{"traces protocol wins", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "otel:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
			telemetry.Export{ServiceName: "postamt-outbox", Endpoint: "otel:4318", Protocol: "http/protobuf"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.env["AUTH_HS256_SECRET"] = secret
			c, err := load(t, tt.env)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.TraceExport("outbox"); got != tt.want {
				t.Errorf("TraceExport = %+v, want %+v", got, tt.want)
			}
		})
	}
}
