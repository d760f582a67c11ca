package errs_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/errs"
)

// redisReply is a Redis error reply as go-redis returns it.
type redisReply string

func (e redisReply) Error() string { return string(e) }
func (redisReply) RedisError()     {}

var _ redis.Error = redisReply("")

func TestToStatusContextClassifiesDependencies(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 6379}, Err: syscall.ECONNREFUSED}
	upstream := func(c codes.Code) error { return fmt.Errorf("mailbox GetUser: %w", status.Error(c, "upstream says")) }
	tests := []struct {
		name string
		err  error
		code codes.Code
		dep  string
	}{
		{"redis connection refused", fmt.Errorf("get user: %w", refused), codes.Unavailable, "network tcp 127.0.0.1:6379"},
		{"redis connection reset", fmt.Errorf("get: %w", syscall.ECONNRESET), codes.Unavailable, errs.DepNetwork},
		{"redis EOF", fmt.Errorf("get user: %w", io.EOF), codes.Unavailable, errs.DepNetwork},
		{"redis pool timeout", fmt.Errorf("get: %w", redis.ErrPoolTimeout), codes.Unavailable, errs.DepRedis},
		{"redis client closed", fmt.Errorf("get: %w", redis.ErrClosed), codes.Unavailable, errs.DepRedis},
		{"redis LOADING", fmt.Errorf("get: %w", redisReply("LOADING Redis is loading the dataset in memory")), codes.Unavailable, errs.DepRedis},
		{"redis CLUSTERDOWN", redisReply("CLUSTERDOWN The cluster is down"), codes.Unavailable, errs.DepRedis},
		{"redis ASK not followed", redisReply("ASK 11329 127.0.0.1:7001"), codes.Unavailable, errs.DepRedis},
		{"redis READONLY", redisReply("READONLY You can't write against a read only replica."), codes.Unavailable, errs.DepRedis},
		{"redis OOM", redisReply("OOM command not allowed when used memory > 'maxmemory'."), codes.Unavailable, errs.DepRedis},
		{"redis WRONGTYPE is a bug", redisReply("WRONGTYPE Operation against a key holding the wrong kind of value"), codes.Internal, ""},
		{"nats no responders", fmt.Errorf("request: %w", nats.ErrNoResponders), codes.Unavailable, errs.DepNATS},
		{"nats timeout", fmt.Errorf("request: %w", nats.ErrTimeout), codes.Unavailable, errs.DepNATS},
		{"nats connection closed", fmt.Errorf("publish: %w", nats.ErrConnectionClosed), codes.Unavailable, errs.DepNATS},
		{"jetstream no stream response", fmt.Errorf("publish: %w", jetstream.ErrNoStreamResponse), codes.Unavailable, errs.DepJetStream},
		{"jetstream 503", fmt.Errorf("stream info: %w", &jetstream.APIError{Code: 503, Description: "JetStream system temporarily unavailable"}), codes.Unavailable, errs.DepJetStream},
		{"upstream unavailable", upstream(codes.Unavailable), codes.Unavailable, errs.DepUpstream},
		{"upstream deadline", upstream(codes.DeadlineExceeded), codes.Unavailable, errs.DepUpstream},
		{"upstream not found passes through", upstream(codes.NotFound), codes.NotFound, ""},
		{"upstream permission denied passes through", upstream(codes.PermissionDenied), codes.PermissionDenied, ""},
		{"upstream failed precondition passes through", upstream(codes.FailedPrecondition), codes.FailedPrecondition, ""},
		{"upstream invalid argument is our bug", upstream(codes.InvalidArgument), codes.Internal, ""},
		{"upstream unauthenticated is our bug", upstream(codes.Unauthenticated), codes.Internal, ""},
		{"upstream internal", upstream(codes.Internal), codes.Internal, ""},
		{"a status returned as it is passes through", status.Error(codes.Unauthenticated, "token expired"), codes.Unauthenticated, ""},
		{"a dependency's own deadline", fmt.Errorf("redis: %w", context.DeadlineExceeded), codes.Unavailable, "timeout"},
		{"our Unavailable names its cause", errs.Unavailable("mailbox down", 0, fmt.Errorf("x: %w", refused)), codes.Unavailable, "network tcp 127.0.0.1:6379"},
		{"a plain bug", errors.New("nil map"), codes.Internal, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, dep := errs.ToStatusContext(context.Background(), tt.err)
			if s.Code() != tt.code || dep != tt.dep {
				t.Errorf("ToStatusContext = %s, dependency %q; want %s, %q", s.Code(), dep, tt.code, tt.dep)
			}
			if tt.code == codes.Unavailable && tt.dep != "" && !hasRetryInfo(s) {
				t.Errorf("Unavailable without RetryInfo: %v", s.Details())
			}
			if tt.code == codes.Internal && s.Message() != "internal error" {
				t.Errorf("Internal leaks %q", s.Message())
			}
		})
	}
}

func TestToStatusContextCallerGaveUp(t *testing.T) {
	refused := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	expired, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	<-expired.Done()
	canceled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		code codes.Code
	}{
		{"deadline of the caller", expired, fmt.Errorf("get: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"an outage after the caller's deadline", expired, fmt.Errorf("get: %w", refused), codes.DeadlineExceeded},
		{"canceled by the caller", canceled, fmt.Errorf("get: %w", context.Canceled), codes.Canceled},
		{"a domain error still wins", canceled, errs.NotFound("user", "u1"), codes.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, _ := errs.ToStatusContext(tt.ctx, tt.err); s.Code() != tt.code {
				t.Errorf("ToStatusContext = %s, want %s", s.Code(), tt.code)
			}
		})
	}
}

func hasRetryInfo(s *status.Status) bool {
	for _, d := range s.Details() {
		if _, ok := d.(*errdetails.RetryInfo); ok {
			return true
		}
	}
	return false
}
