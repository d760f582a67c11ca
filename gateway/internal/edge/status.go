package edge

import (
	"context"
	"errors"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/errs"
)

// sizeReasons are the RESOURCE_EXHAUSTED reasons (ErrorInfo reason or QuotaFailure subject) that
// say the request itself is too large: HTTP 413, as the same request can never succeed.
var sizeReasons = []string{"MESSAGE_SIZE", "BODY_TOO_LARGE"}

// HTTPStatus is the HTTP status of a gRPC status on the HTTP side; docs/architecture.md ("Status
// codes") is its table. It differs from grpc-gateway's mapping in one place: RESOURCE_EXHAUSTED is
// 429 only when waiting helps (the status carries RetryInfo: a rate limit or a quota that frees
// up); a request over a size limit is 413, and one over another per-request limit 400, because
// 429 tells a client to send the same request again.
func HTTPStatus(st *status.Status) int {
	switch st.Code() {
	case codes.OK:
		return http.StatusOK
	case codes.Canceled:
		return 499 // the client closed the request (nginx's code; grpc-gateway's too)
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.ResourceExhausted:
		switch {
		case slices.ContainsFunc(reasons(st), func(r string) bool { return slices.Contains(sizeReasons, r) }):
			return http.StatusRequestEntityTooLarge
		case retryDelay(st) > 0:
			return http.StatusTooManyRequests
		default:
			return http.StatusBadRequest
		}
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	default: // Unknown, Internal, DataLoss and codes we do not know
		return http.StatusInternalServerError
	}
}

// reasons are the machine-readable reasons a status carries: ErrorInfo reasons and QuotaFailure
// subjects (internal/errs puts a ResourceExhausted's reason into the latter).
func reasons(st *status.Status) []string {
	var out []string
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			out = append(out, d.GetReason())
		case *errdetails.QuotaFailure:
			for _, v := range d.GetViolations() {
				out = append(out, v.GetSubject())
			}
		}
	}
	return out
}

// retryDelay is the delay of the status's RetryInfo; zero without one.
func retryDelay(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// errorHandler writes every error of the HTTP side, the edge's own, routing errors and the
// services': a google.rpc.Status in the request's marshaler, with HTTPStatus's code, Retry-After
// from a RetryInfo on 429 and 503, and a BadRequest naming the field when the gateway itself
// could not read the body. The exchange remembers the status for the request's log line.
func errorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	x := exchangeFrom(ctx)
	if x.probing() {
		return
	}
	code := 0
	var hs *runtime.HTTPStatusError
	if errors.As(err, &hs) {
		code, err = hs.HTTPStatus, hs.Err
	}
	st, ok := status.FromError(err)
	if !ok && code == http.StatusBadRequest {
		st = status.New(codes.InvalidArgument, err.Error()) // a malformed path escape, from the mux
	}
	st = x.explain(st)
	if code == 0 {
		code = HTTPStatus(st)
	}
	if code == http.StatusUnauthorized {
		// grpc-gateway writes the status message as the challenge, which is no challenge at all;
		// ours replaces it just before the header goes out.
		w = challengeWriter{ResponseWriter: w, challenge: wwwAuthenticate(r)}
	}
	if d := retryDelay(st); d > 0 && (code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable) {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(d.Seconds()))))
	}
	x.failed = st
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, &runtime.HTTPStatusError{HTTPStatus: code, Err: st.Err()})
}

// wwwAuthenticate is the challenge of a 401 (RFC 6750 §3): the bearer scheme, and
// error="invalid_token" when the request carried a credential that was refused (none when it
// carried nothing, as §3.1 asks).
func wwwAuthenticate(r *http.Request) string {
	if r.Header.Get("Authorization") == "" {
		return `Bearer realm="postamt"`
	}
	return `Bearer realm="postamt", error="invalid_token"`
}

// challengeWriter sets WWW-Authenticate when the header is written, over what the error
// handler set before.
type challengeWriter struct {
	http.ResponseWriter
	challenge string
}

func (w challengeWriter) WriteHeader(code int) {
	w.Header().Set("WWW-Authenticate", w.challenge)
	w.ResponseWriter.WriteHeader(code)
}

// explain turns the statuses grpc-gateway makes of the gateway's own reading of a request into
// the suite's: a body over the bound is BODY_TOO_LARGE (413, not 400), and a body field the
// strict JSON decoder refused (unknown, or a value of the wrong type) is an InvalidArgument with a
// BadRequest field violation, its path in the request message; a body that is not JSON at all
// names the body field of the route, or no field when the body is the whole request.
func (x *exchange) explain(st *status.Status) *status.Status {
	if st.Code() != codes.InvalidArgument || len(st.Details()) > 0 {
		return st
	}
	if x.bodyTooLarge {
		return errs.ToStatus(x.tooLarge())
	}
	path, desc, ok := parseBodyFieldError(st.Message())
	if !ok {
		return st
	}
	if x.route.body != "" && x.route.body != "*" {
		path = strings.TrimSuffix(x.route.body+"."+path, ".")
	}
	if path == "" {
		// the whole request is the body: the violation names no field, the message the body
		return errs.ToStatus(&errs.Error{
			Kind: errs.KindInvalid, Msg: "the request body is " + desc,
			Violations: []errs.FieldViolation{{Description: "the request body is " + desc}},
		})
	}
	return errs.ToStatus(errs.Invalid(path, desc))
}

// routingErrorHandler answers a request no route takes: 404 for an unknown path, and 405 with an
// Allow header for a known path with another method (grpc-gateway's default says 501
// UNIMPLEMENTED, as if the API lacked the operation).
func routingErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	if exchangeFrom(ctx).probing() {
		return
	}
	switch httpStatus {
	case http.StatusMethodNotAllowed:
		allow := allowed(mux, r)
		w.Header().Set("Allow", strings.Join(allow, ", "))
		err := status.Errorf(codes.Unimplemented, "%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, strings.Join(allow, ", "))
		errorHandler(ctx, mux, m, w, r, &runtime.HTTPStatusError{HTTPStatus: http.StatusMethodNotAllowed, Err: err})
	case http.StatusNotFound:
		errorHandler(ctx, mux, m, w, r, status.Errorf(codes.NotFound, "no route for %s %s", r.Method, r.URL.Path))
	default:
		runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, httpStatus)
	}
}

// methods are the HTTP methods the API's routes use.
var methods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// allowed asks the mux itself which methods it routes for r's path: it serves a probe of each
// method, which the contract middleware stops before any handler runs (the mux keeps its routes
// to itself). Only a 405 pays for it.
func allowed(mux *runtime.ServeMux, r *http.Request) []string {
	var out []string
	for _, method := range methods {
		x := &exchange{probe: &probe{}}
		pr := r.Clone(withExchange(r.Context(), x))
		pr.Method = method
		pr.Header.Del("X-HTTP-Method-Override")
		pr.Header.Del("Content-Type")
		mux.ServeHTTP(discard{}, pr)
		if x.probe.matched {
			out = append(out, method)
		}
	}
	return out
}

// discard is the response writer of a probe, which writes nothing.
type discard struct{}

func (discard) Header() http.Header         { return http.Header{} }
func (discard) Write(b []byte) (int, error) { return len(b), nil }
func (discard) WriteHeader(int)             {}
