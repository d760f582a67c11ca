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
	"strings"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/telemetry"
)

// RedisOptions are the redisx options the configuration asks for, so every process opens its
// Redis the same way.
func (c *Common) RedisOptions() []redisx.Option {
	return []redisx.Option{
		redisx.WithSentinelAuth(c.RedisSentinelUsername, c.RedisSentinelPassword),
		redisx.WithTLSCAFile(c.RedisTLSCAFile),
		redisx.WithReplicaAcks(c.RedisReplicaAcks, c.RedisReplicaAckTimeout),
		// The event relay waits on every partition's stream (on a Cluster, one connection each).
		redisx.WithBlockingReaders(max(c.RedisPartitions, 16)),
	}
}

// Common is the configuration every service shares; each service's config struct embeds it (or
// sits beside it in the process's struct) so the variables mean the same everywhere.
type Common struct {
	// GRPCAddr is where the API listens; the same port serves health and reflection.
	GRPCAddr string `env:"GRPC_ADDR, default=:9090" desc:"listen address of the gRPC API (the service, health and reflection)"`
	// OpsAddr is where metrics and pprof listen, apart from the API so they are never exposed with it.
	OpsAddr string `env:"OPS_ADDR, default=:9091" desc:"listen address of /metrics, /debug/pprof and /healthz; empty disables it"`
	// LogLevel and LogFormat configure the process logger (internal/logging).
	LogLevel  string `env:"LOG_LEVEL, default=info" desc:"debug, info, warn or error"`
	LogFormat string `env:"LOG_FORMAT, default=json" desc:"json or text"`
	// RedisURL locates the service's Redis (each service owns its keyspace; it may be its own Redis).
	RedisURL string `env:"REDIS_URL, default=redis://127.0.0.1:6379/0" desc:"Redis URL; the scheme selects the topology: redis://[user:password@]host:port/db (rediss:// with TLS, unix:// a socket) for one server, redis+sentinel://[user:password@]sentinel:26379/db?master_name=NAME&addr=sentinel2:26379&addr=... for a Sentinel set (the user and password are the data nodes'), redis+cluster://[user:password@]node:6379?addr=node2:6379&addr=... for a Cluster (seed nodes); rediss+sentinel:// and rediss+cluster:// with TLS"`
	// RedisSentinelUsername and RedisSentinelPassword are the sentinels' own credentials, which
	// may differ from the data nodes' in REDIS_URL.
	RedisSentinelUsername string `env:"REDIS_SENTINEL_USERNAME" desc:"ACL user of the sentinels, when they require one (Sentinel URLs only)"`
	RedisSentinelPassword string `env:"REDIS_SENTINEL_PASSWORD" desc:"password of the sentinels, when they require one (Sentinel URLs only); empty: the sentinels take no password"`
	// RedisTLSCAFile lets a rediss URL trust a private CA instead of the system's roots.
	RedisTLSCAFile string `env:"REDIS_TLS_CA_FILE" desc:"PEM file of the CA that issued the Redis servers' certificates (rediss URLs); empty: the system's roots"`
	// RedisReplicaAcks is what "accepted" promises: a write counts only once this many replicas
	// confirmed it (redisx.Acks; docs/operations.md, "Durability").
	RedisReplicaAcks int `env:"REDIS_REPLICA_ACKS, default=0" desc:"replicas that must confirm every write before it counts (WAIT); 1 makes an accepted email, a claim and a result survive the loss of a master. 0: off (one server without replicas)"`
	// RedisReplicaAckTimeout bounds that wait; a write not confirmed in time fails as UNAVAILABLE.
	RedisReplicaAckTimeout time.Duration `env:"REDIS_REPLICA_ACK_TIMEOUT, default=1s" desc:"how long a write waits for REDIS_REPLICA_ACKS replicas (at most 2s) before it fails as UNAVAILABLE (the change may still have been made: retry with the same idempotency key)"`
	// RedisPartitions is how many partitions (Redis Cluster hash tags, dispatcher lanes' ready
	// indexes, event streams) a service spreads its keys over. It is part of the data layout:
	// chosen when a deployment is created, recorded in Redis, and checked at every start.
	RedisPartitions int `env:"REDIS_PARTITIONS, default=16" desc:"partitions each service spreads its Redis keys, due indexes and event streams over (16-1024): more spread load over more Redis Cluster slots and dispatchers. Chosen when a deployment is created: a service refuses to start on data written with another count. Set the same value for every replica of a service"`
	// NATSURL locates NATS JetStream, which carries the events.
	NATSURL string `env:"NATS_URL, default=nats://127.0.0.1:4222" desc:"NATS server URL(s), comma-separated"`
	// NATSStreamReplicas is how many copies of each event stream a NATS cluster keeps, so events
	// survive the loss of a NATS server; every service that creates or checks a stream applies it.
	NATSStreamReplicas int `env:"NATS_STREAM_REPLICAS, default=0" desc:"copies of each JetStream stream in a NATS cluster (1-5; 3 survives one server's loss); 0 creates streams with 1 and leaves an existing stream's count as it is. Set the same value for every service"`
	// DrainDelay and DrainTimeout shape the graceful drain on SIGTERM (grpcserver.Options).
	DrainDelay   time.Duration `env:"DRAIN_DELAY, default=2s" desc:"on SIGTERM, time between reporting NOT_SERVING and refusing new calls, so load balancers notice first"`
	DrainTimeout time.Duration `env:"DRAIN_TIMEOUT, default=30s" desc:"on SIGTERM, time running calls get to finish before they are cut"`
	// GRPCMaxRecvBytes bounds a request message, so one caller cannot exhaust memory.
	GRPCMaxRecvBytes int `env:"GRPC_MAX_RECV_BYTES, default=33554432" desc:"largest gRPC request message accepted, in bytes"`
	// ServiceName names the spans' service (OpenTelemetry's service.name); empty means
	// "postamt-" and the service (TraceExport).
	ServiceName string `env:"OTEL_SERVICE_NAME" desc:"service.name of the traces; empty: postamt-<service> (postamt-outbox, ...)"`
	// OTLPEndpoint is where traces go (telemetry.SetupTracing); empty keeps them in the process.
	OTLPEndpoint string `env:"OTEL_EXPORTER_OTLP_ENDPOINT" desc:"OTLP endpoint (host:port, or http:// or https:// URL); over http/protobuf /v1/traces is appended; empty (and no traces endpoint) exports no traces"`
	// OTLPTracesEndpoint is the traces endpoint, which wins over OTLPEndpoint.
	OTLPTracesEndpoint string `env:"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" desc:"OTLP endpoint for traces, used instead of OTEL_EXPORTER_OTLP_ENDPOINT (over http/protobuf: the full URL, path included)"`
	// OTLPProtocol is the OTLP transport: grpc or http/protobuf.
	OTLPProtocol string `env:"OTEL_EXPORTER_OTLP_PROTOCOL, default=grpc" desc:"OTLP transport: grpc or http/protobuf"`
	// OTLPTracesProtocol, when set, is the transport of traces, winning over OTLPProtocol.
	OTLPTracesProtocol string `env:"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" desc:"OTLP transport of traces (grpc or http/protobuf); empty: OTEL_EXPORTER_OTLP_PROTOCOL"`
	// Auth holds the token keys (AUTH_* variables).
	Auth auth.Config
}

// TraceExport is where and how the spans of service go, from the OTEL_* variables: the
// traces-specific ones win over the general ones, as OpenTelemetry specifies.
func (c *Common) TraceExport(service string) telemetry.Export {
	e := telemetry.Export{ServiceName: c.ServiceName, Endpoint: c.OTLPEndpoint, TracesEndpoint: c.OTLPTracesEndpoint, Protocol: c.OTLPProtocol}
	if e.ServiceName == "" {
		e.ServiceName = "postamt-" + service
	}
	if c.OTLPTracesProtocol != "" {
		e.Protocol = c.OTLPTracesProtocol
	}
	return e
}

// Validate checks what the tags cannot: addresses, enumerations, ranges and that some token key is
// configured. It reports every bad variable at once, each as an *Error.
func (c *Common) Validate() error {
	var errList []error
	bad := func(name, format string, args ...any) {
		errList = append(errList, Invalid(name, fmt.Sprintf(format, args...)))
	}
	if _, _, err := net.SplitHostPort(c.GRPCAddr); err != nil {
		bad("GRPC_ADDR", "want host:port, got %q", c.GRPCAddr)
	}
	if c.OpsAddr != "" {
		if _, _, err := net.SplitHostPort(c.OpsAddr); err != nil {
			bad("OPS_ADDR", "want host:port or empty, got %q", c.OpsAddr)
		}
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		bad("LOG_LEVEL", "want debug, info, warn or error, got %q", c.LogLevel)
	}
	switch strings.ToLower(c.LogFormat) {
	case "json", "text":
	default:
		bad("LOG_FORMAT", "want json or text, got %q", c.LogFormat)
	}
	if _, err := redisx.TopologyOf(c.RedisURL); err != nil {
		bad("REDIS_URL", "want a %s URL", redisx.Schemes)
	}
	if c.RedisReplicaAcks < 0 || c.RedisReplicaAcks > 5 {
		bad("REDIS_REPLICA_ACKS", "must be between 0 and 5, got %d", c.RedisReplicaAcks)
	}
	if c.RedisReplicaAckTimeout <= 0 || c.RedisReplicaAckTimeout > redisx.MaxReplicaAckTimeout {
		bad("REDIS_REPLICA_ACK_TIMEOUT", "must be positive and at most %s, got %s", redisx.MaxReplicaAckTimeout, c.RedisReplicaAckTimeout)
	}
	if c.RedisPartitions < redisx.MinPartitions || c.RedisPartitions > redisx.MaxPartitions {
		bad("REDIS_PARTITIONS", "must be between %d and %d, got %d; it is chosen when a deployment is created (an existing deployment keeps the count its data was written with, %d unless chosen otherwise)",
			redisx.MinPartitions, redisx.MaxPartitions, c.RedisPartitions, redisx.DefaultPartitions)
	}
	for _, s := range strings.Split(c.NATSURL, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || (u.Scheme != "nats" && u.Scheme != "tls" && u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
			bad("NATS_URL", "want nats://host:port (or tls://, ws://, wss://), comma-separated")
			break
		}
	}
	if c.NATSStreamReplicas < 0 || c.NATSStreamReplicas > 5 {
		bad("NATS_STREAM_REPLICAS", "must be between 0 and 5, got %d", c.NATSStreamReplicas)
	}
	if c.DrainDelay < 0 {
		bad("DRAIN_DELAY", "must not be negative, got %s", c.DrainDelay)
	}
	if c.DrainTimeout <= 0 {
		bad("DRAIN_TIMEOUT", "must be positive, got %s", c.DrainTimeout)
	}
	if c.GRPCMaxRecvBytes < 1024 {
		bad("GRPC_MAX_RECV_BYTES", "must be at least 1024, got %d", c.GRPCMaxRecvBytes)
	}
	for _, nv := range [][2]string{{"OTEL_EXPORTER_OTLP_ENDPOINT", c.OTLPEndpoint}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", c.OTLPTracesEndpoint}} {
		name, v := nv[0], nv[1]
		if v == "" {
			continue
		}
		if strings.Contains(v, "://") {
			if u, err := url.Parse(v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad(name, "want host:port or an http:// or https:// URL")
			}
		} else if _, _, err := net.SplitHostPort(v); err != nil {
			bad(name, "want host:port or an http:// or https:// URL")
		}
	}
	for _, nv := range [][2]string{{"OTEL_EXPORTER_OTLP_PROTOCOL", c.OTLPProtocol}, {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", c.OTLPTracesProtocol}} {
		name, v := nv[0], nv[1]
		if v != "" && v != telemetry.ProtocolGRPC && v != telemetry.ProtocolHTTP {
			bad(name, "want %s or %s, got %q", telemetry.ProtocolGRPC, telemetry.ProtocolHTTP, v)
		}
	}
	a := c.Auth
	switch {
	case a.HS256Secret == "" && a.JWKSFile == "" && a.JWKSURL == "":
		bad("AUTH_JWKS_FILE", "set AUTH_JWKS_FILE and/or AUTH_JWKS_URL (production) or AUTH_HS256_SECRET (development)")
	case a.JWKSURL != "" && !strings.HasPrefix(a.JWKSURL, "https://") && !strings.HasPrefix(a.JWKSURL, "http://"):
		bad("AUTH_JWKS_URL", "want an https:// URL")
	case a.JWKSURL != "" && a.JWKSRefresh < time.Second:
		bad("AUTH_JWKS_REFRESH", "must be at least 1s, got %s", a.JWKSRefresh)
	case a.HS256Secret != "" && len(a.HS256Secret) < auth.MinSecretBytes:
		bad("AUTH_HS256_SECRET", "must be at least %d bytes", auth.MinSecretBytes)
	}
	if strings.TrimSpace(a.Audience) == "" {
		bad("AUTH_AUDIENCE", "must not be empty")
	}
	if a.Leeway < 0 || a.Leeway > 5*time.Minute {
		bad("AUTH_LEEWAY", "must be between 0 and 5m, got %s", a.Leeway)
	}
	if a.SigningKeyID != "" && a.SigningKeyFile == "" {
		bad("AUTH_SIGNING_KEY_ID", "needs AUTH_SIGNING_KEY_FILE")
	}
	return errors.Join(errList...)
}

// Validator is implemented by config structs with rules beyond their tags; Load calls it.
type Validator interface {
	Validate() error
}

// Error says which variable is wrong and why. Validate methods return them (joined), and Load
// returns one for a value that does not parse, so callers and tests can name the variable without
// reading messages (see BadVars).
type Error struct {
	// Var is the environment variable, e.g. "DRAIN_TIMEOUT".
	Var string
	// Msg says what is wrong with it.
	Msg string
	// Err is the underlying parse error, if any.
	Err error
}

// Error renders "VAR: problem".
func (e *Error) Error() string {
	switch {
	case e.Err != nil && e.Msg != "":
		return e.Var + ": " + e.Msg + ": " + e.Err.Error()
	case e.Err != nil:
		return e.Var + ": " + e.Err.Error()
	}
	return e.Var + ": " + e.Msg
}

// Unwrap exposes the parse error.
func (e *Error) Unwrap() error { return e.Err }

// Invalid is the error a Validate method returns for one bad variable.
func Invalid(name, msg string) error { return &Error{Var: name, Msg: msg} }

// BadVars lists the variables named by the *Error values in err's tree (errors.Join included), in
// order, so a test can check which variables were rejected.
func BadVars(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if e, ok := err.(*Error); ok { //nolint:errorlint // walks the tree itself to list every *Error; errors.As stops at the first
			out = append(out, e.Var)
			return
		}
		switch u := err.(type) { //nolint:errorlint // unwraps one level by hand, see above
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return out
}

// Load fills dst (a pointer to a struct) from lookup (envconfig.OsLookuper() in main, a
// envconfig.MapLookuper in tests), then calls dst.Validate when dst implements Validator. A value
// that does not parse is reported as an *Error naming its variable.
func Load(ctx context.Context, lookup envconfig.Lookuper, dst any) error {
	rec := &recordingLookuper{next: lookup}
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: dst, Lookuper: rec}); err != nil {
		if rec.last != "" {
			err = &Error{Var: rec.last, Err: err}
		}
		return fmt.Errorf("configuration: %w", err)
	}
	if v, ok := dst.(Validator); ok {
		if err := v.Validate(); err != nil {
			return fmt.Errorf("configuration: %w", err)
		}
	}
	return nil
}

// recordingLookuper remembers the last variable looked up: envconfig processes fields in order and
// stops at the first failure, so that is the variable whose value did not parse.
type recordingLookuper struct {
	next envconfig.Lookuper
	last string
}

func (l *recordingLookuper) Lookup(key string) (string, bool) {
	l.last = key
	return l.next.Lookup(key)
}
