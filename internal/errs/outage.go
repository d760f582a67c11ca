package errs

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// OutageRetryAfter is the RetryInfo delay of an outage the edge recognised (ToStatusContext):
// long enough not to hammer a restarting dependency, short enough for a failover.
const OutageRetryAfter = time.Second

// Dependency names, as Outage reports them and the request log shows them.
const (
	DepRedis     = "redis"
	DepNATS      = "nats"
	DepJetStream = "jetstream"
	DepUpstream  = "upstream service"
	DepNetwork   = "network"
)

// redisOutagePrefixes are the Redis error replies that say the server cannot serve now (loading
// its data, a replica, a cluster without quorum, full under noeviction, ...), as opposed to
// replies that say our command was wrong (WRONGTYPE, a script error), which are bugs.
var redisOutagePrefixes = []string{
	"LOADING", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "NOREPLICAS", "BUSY ",
	"OOM ", "MISCONF", "ERR max number of clients",
	// A redirect the client gave up following (its MaxRedirects ran out while a Cluster slot
	// migrates): the next try finds the slot settled.
	"MOVED ", "ASK ",
}

// natsOutages are the NATS and JetStream errors of a connection or a stream that is not there
// right now.
var natsOutages = []struct {
	err error
	dep string
}{
	{nats.ErrNoResponders, DepNATS}, {nats.ErrTimeout, DepNATS}, {nats.ErrConnectionClosed, DepNATS},
	{nats.ErrConnectionDraining, DepNATS}, {nats.ErrConnectionReconnecting, DepNATS},
	{nats.ErrNoServers, DepNATS}, {nats.ErrStaleConnection, DepNATS}, {nats.ErrDisconnected, DepNATS},
	{jetstream.ErrNoStreamResponse, DepJetStream}, {jetstream.ErrConnectionClosed, DepJetStream},
	{jetstream.ErrServerShutdown, DepJetStream}, {jetstream.ErrJetStreamPublisherClosed, DepJetStream},
	{jetstream.ErrJetStreamNotEnabled, DepJetStream},
}

// Outage reports whether err says that a dependency is down or unreachable for now — Redis,
// NATS/JetStream, another Postamt service, or the network — rather than that the code is wrong,
// and names the dependency for the log. Retrying later can succeed; fixing the request cannot.
//
// Recognised: an error with an `Outage() string` method, which names its dependency (a write
// Redis replicas did not confirm, redisx.ErrNotReplicated); go-redis pool timeouts and a closed client; Redis replies LOADING, READONLY,
// CLUSTERDOWN, TRYAGAIN, MASTERDOWN, NOREPLICAS, BUSY, OOM, MISCONF, "max number of clients"
// and a MOVED or ASK redirect the client stopped following;
// the NATS connection errors (no responders, timeout, closed, draining, reconnecting, no servers,
// stale, disconnected) and JetStream's (no stream response, connection closed, server shutdown,
// publisher closed, not enabled, any API error with code 503); a gRPC status Unavailable,
// DeadlineExceeded or Canceled from a client call (see ToStatusContext); and network errors:
// *net.OpError, a net.Error timeout, io.EOF, io.ErrUnexpectedEOF, ECONNREFUSED, ECONNRESET,
// EPIPE. context errors are not outages by themselves: whose deadline it was decides
// (ToStatusContext).
func Outage(err error) (dependency string, ok bool) {
	if err == nil {
		return "", false
	}
	if errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrPoolExhausted) || errors.Is(err, redis.ErrClosed) {
		return DepRedis, true
	}
	var named interface{ Outage() string }
	if errors.As(err, &named) {
		return named.Outage(), true
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		for _, p := range redisOutagePrefixes {
			if redis.HasErrorPrefix(rerr, p) {
				return DepRedis, true
			}
		}
		return "", false // a reply to a wrong command: a bug
	}
	for _, o := range natsOutages {
		if errors.Is(err, o.err) {
			return o.dep, true
		}
	}
	var api *jetstream.APIError
	if errors.As(err, &api) && api.Code == 503 {
		return DepJetStream, true
	}
	if s, wrapped := upstreamStatus(err); wrapped {
		switch s.Code() {
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
			return DepUpstream, true
		}
		return "", false
	}
	var op *net.OpError
	if errors.As(err, &op) {
		if op.Addr != nil {
			return DepNetwork + " " + op.Net + " " + op.Addr.String(), true
		}
		return DepNetwork + " " + op.Op, true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && !errors.Is(err, context.DeadlineExceeded) {
		return DepNetwork, true
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return DepNetwork, true
	}
	return "", false
}

// upstreamStatus finds the gRPC status of a client call in err's chain. wrapped is true only when
// the status is found under a wrapping error (fmt.Errorf("mailbox GetUser: %w", err)): a status
// error returned as it is comes from the server's own machinery (the auth interceptor, panic
// recovery, generated Unimplemented stubs), never from a dependency, because handlers return
// domain errors and wrap what their clients return (STYLE.md 5 and 6).
func upstreamStatus(err error) (s *status.Status, wrapped bool) {
	if _, direct := err.(interface{ GRPCStatus() *status.Status }); direct {
		return nil, false
	}
	var gs interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &gs) {
		return nil, false
	}
	s = gs.GRPCStatus()
	return s, s != nil
}

// outageMessage is the caller-facing message of an outage: which kind of dependency, never its
// address or error text.
func outageMessage(dep string) string {
	switch dep {
	case DepRedis:
		return "storage is unavailable; retry later"
	case DepNATS, DepJetStream:
		return "the event bus is unavailable; retry later"
	case DepUpstream:
		return "a service this call depends on is unavailable; retry later"
	}
	return "a dependency is unavailable; retry later"
}

// ToStatusContext is ToStatus for a request being served, whose context is ctx; the server's
// interceptor calls it once per failed call. It also says, for an outage, which dependency failed
// (for the log line; empty otherwise).
//
// The rules, in order:
//   - a domain *Error maps as in ToStatus (an errs.Unavailable also names the dependency of its
//     cause);
//   - when ctx itself is done, a context error or an outage is the caller's Canceled or
//     DeadlineExceeded: the dependency did not fail, the caller stopped waiting;
//   - an outage (Outage) is Unavailable with RetryInfo (OutageRetryAfter), as is a context
//     deadline or cancellation while ctx is alive (a timeout the code put on a dependency call);
//   - a gRPC status of another Postamt service's client call, wrapped by the code that made the
//     call: NotFound, AlreadyExists, PermissionDenied, FailedPrecondition, Aborted and
//     ResourceExhausted pass through with their message and details (that service follows this
//     contract, so they are true of the caller's request); Unavailable, DeadlineExceeded and
//     Canceled are an outage (above); every other code — InvalidArgument, OutOfRange,
//     Unauthenticated, Unimplemented, Internal, Unknown, DataLoss — is Internal, because it says
//     our call was wrong (a request we built, our service credentials, a version skew), which is
//     a bug of ours and not the caller's fault;
//   - anything else is a bare Internal.
func ToStatusContext(ctx context.Context, err error) (s *status.Status, dependency string) {
	return classify(ctx, true, err)
}

// classify implements ToStatusContext; without a request context (haveCtx false) a context error
// keeps its own meaning, as nobody can tell whose deadline it was.
func classify(ctx context.Context, haveCtx bool, err error) (s *status.Status, dependency string) {
	if err == nil {
		return nil, ""
	}
	var e *Error
	if errors.As(err, &e) {
		if e.Kind == KindUnavailable {
			dependency, _ = Outage(e.Cause)
		}
		return domainStatus(e), dependency
	}
	if gs, direct := err.(interface{ GRPCStatus() *status.Status }); direct {
		if s := gs.GRPCStatus(); s != nil {
			return s, ""
		}
	}
	if haveCtx && ctx.Err() != nil {
		if _, outage := Outage(err); outage || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return status.New(codes.DeadlineExceeded, "deadline exceeded"), ""
			}
			return status.New(codes.Canceled, "request canceled"), ""
		}
	}
	if dep, ok := Outage(err); ok {
		return domainStatus(Unavailable(outageMessage(dep), OutageRetryAfter, err).(*Error)), dep //nolint:errorlint // Unavailable returns a bare *Error
	}
	if haveCtx && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
		return domainStatus(Unavailable(outageMessage(""), OutageRetryAfter, err).(*Error)), "timeout" //nolint:errorlint // Unavailable returns a bare *Error
	}
	if s, wrapped := upstreamStatus(err); wrapped {
		switch s.Code() {
		case codes.NotFound, codes.AlreadyExists, codes.PermissionDenied, codes.FailedPrecondition, codes.Aborted, codes.ResourceExhausted:
			return s, ""
		}
		return status.New(codes.Internal, "internal error"), ""
	}
	return plainStatus(err), ""
}
