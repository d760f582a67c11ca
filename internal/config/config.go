// Package config reads a service's configuration from environment variables once, at start-up:
// structs with `env` tags (sethvargo/go-envconfig) and a `desc` tag each, defaults in the tags,
// validation before anything starts, and the documentation table generated from the same tags so
// it cannot drift from the code.
package config

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"strings"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/postamt/postamt/internal/auth"
)

// Common is the configuration every service shares; a service's own struct sits beside it.
type Common struct {
	GRPCAddr         string        `env:"GRPC_ADDR, default=:9090" desc:"address of the gRPC API (health, reflection and the service)"`
	OpsAddr          string        `env:"OPS_ADDR, default=:9091" desc:"address of /metrics, /debug/pprof and /healthz; empty disables it"`
	LogLevel         string        `env:"LOG_LEVEL, default=info" desc:"debug, info, warn or error"`
	LogFormat        string        `env:"LOG_FORMAT, default=json" desc:"json or text"`
	RedisURL         string        `env:"REDIS_URL, default=redis://127.0.0.1:6379/0" desc:"Redis URL (redis:// or rediss://, password in the URL)"`
	NATSURL          string        `env:"NATS_URL, default=nats://127.0.0.1:4222" desc:"NATS URL(s), comma-separated"`
	DrainDelay       time.Duration `env:"DRAIN_DELAY, default=2s" desc:"on SIGTERM, time between NOT_SERVING and refusing new calls, so load balancers notice"`
	DrainTimeout     time.Duration `env:"DRAIN_TIMEOUT, default=30s" desc:"on SIGTERM, time running calls get to finish before they are cut"`
	GRPCMaxRecvBytes int           `env:"GRPC_MAX_RECV_BYTES, default=33554432" desc:"largest gRPC request accepted, in bytes"`
	OTLPEndpoint     string        `env:"OTEL_EXPORTER_OTLP_ENDPOINT" desc:"OTLP/gRPC endpoint for traces (host:port); empty exports none"`
	Auth             auth.Config
}

// Validate checks what the defaults cannot guarantee.
func (c *Common) Validate() error {
	var errList []error
	if _, _, err := net.SplitHostPort(c.GRPCAddr); err != nil {
		errList = append(errList, fmt.Errorf("GRPC_ADDR %q: %w", c.GRPCAddr, err))
	}
	if c.OpsAddr != "" {
		if _, _, err := net.SplitHostPort(c.OpsAddr); err != nil {
			errList = append(errList, fmt.Errorf("OPS_ADDR %q: %w", c.OpsAddr, err))
		}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errList = append(errList, fmt.Errorf("LOG_LEVEL must be debug, info, warn or error, got %q", c.LogLevel))
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		errList = append(errList, fmt.Errorf("LOG_FORMAT must be json or text, got %q", c.LogFormat))
	}
	if u, err := url.Parse(c.RedisURL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") {
		errList = append(errList, errors.New("REDIS_URL must be a redis://, rediss:// or unix:// URL"))
	}
	if !strings.HasPrefix(c.NATSURL, "nats://") && !strings.HasPrefix(c.NATSURL, "tls://") {
		errList = append(errList, fmt.Errorf("NATS_URL must start with nats:// or tls://, got %q", c.NATSURL))
	}
	if c.DrainDelay < 0 || c.DrainTimeout <= 0 {
		errList = append(errList, errors.New("DRAIN_DELAY must not be negative and DRAIN_TIMEOUT must be positive"))
	}
	if c.GRPCMaxRecvBytes < 1024 {
		errList = append(errList, fmt.Errorf("GRPC_MAX_RECV_BYTES must be at least 1024, got %d", c.GRPCMaxRecvBytes))
	}
	if c.Auth.HS256Secret == "" && c.Auth.JWKSFile == "" {
		errList = append(errList, errors.New("set AUTH_JWKS_FILE (production) or AUTH_HS256_SECRET (development)"))
	}
	return errors.Join(errList...)
}

// Validator is implemented by config structs with rules beyond their tags.
type Validator interface {
	Validate() error
}

// Load fills dst (a pointer to a struct) from lookup, then validates it.
func Load(ctx context.Context, lookup envconfig.Lookuper, dst any) error {
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: dst, Lookuper: lookup}); err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	if v, ok := dst.(Validator); ok {
		if err := v.Validate(); err != nil {
			return fmt.Errorf("configuration: %w", err)
		}
	}
	return nil
}

// Var documents one environment variable.
type Var struct {
	Name        string
	Default     string
	Description string
}

// Vars lists the variables of a config struct (pointer or value), nested structs included, in
// field order.
func Vars(v any) []Var {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var out []Var
	for i := range t.NumField() {
		f := t.Field(i)
		tag, ok := f.Tag.Lookup("env")
		if !ok {
			if f.Type.Kind() == reflect.Struct {
				out = append(out, Vars(reflect.New(f.Type).Interface())...)
			}
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		var def string
		if _, d, ok := strings.Cut(opts, "default="); ok {
			def = d
		}
		out = append(out, Var{Name: strings.TrimSpace(name), Default: def, Description: f.Tag.Get("desc")})
	}
	return out
}

// MarkdownTable renders vars as a Markdown table.
func MarkdownTable(vars []Var) string {
	var b strings.Builder
	b.WriteString("| variable | default | meaning |\n|---|---|---|\n")
	for _, v := range vars {
		def := "(empty)"
		if v.Default != "" {
			def = "`" + v.Default + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", v.Name, def, v.Description)
	}
	return b.String()
}
