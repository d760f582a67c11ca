package errs

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ErrorDomain is the ErrorInfo domain of every Postamt error, so clients can tell ours from a proxy's.
const ErrorDomain = "postamt.dev"

// ToStatus maps err to the gRPC status the caller sees, without a request context: the server's
// interceptor calls ToStatusContext, which also tells a dependency's timeout from the caller's;
// code outside a request (the auth interceptor, the gateway) calls ToStatus. A domain error wins
// over anything in its cause chain (an Unavailable caused by a dependency's status is our
// Unavailable, with our message and RetryInfo, not the dependency's code and error text); a
// status error returned as it is passes through; a dependency's outage is Unavailable; a status
// of a client call follows the rules of ToStatusContext; context errors keep their meaning, and
// anything unclassified becomes a bare Internal so no internals leak.
//
//nolint:contextcheck // deliberately context-free: classify ignores ctx when haveCtx is false
func ToStatus(err error) *status.Status {
	s, _ := classify(context.Background(), false, err)
	return s
}

// plainStatus maps an error that is neither a domain error, a status, nor an outage.
func plainStatus(err error) *status.Status {
	switch {
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, "deadline exceeded")
	}
	return status.New(codes.Internal, "internal error")
}

// domainStatus maps a domain error to its code and details.
func domainStatus(e *Error) *status.Status {
	var (
		code    codes.Code
		details []protoadapt.MessageV1
	)
	switch e.Kind {
	case KindInvalid:
		code = codes.InvalidArgument
		br := &errdetails.BadRequest{}
		for _, v := range e.Violations {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: v.Field, Description: v.Description})
		}
		details = append(details, br)
	case KindNotFound:
		code = codes.NotFound
		details = append(details, &errdetails.ResourceInfo{ResourceType: e.Resource, ResourceName: e.ID})
	case KindAlreadyExists:
		code = codes.AlreadyExists
		details = append(details, &errdetails.ResourceInfo{ResourceType: e.Resource, ResourceName: e.ID})
	case KindPermissionDenied:
		code = codes.PermissionDenied
		details = append(details, &errdetails.ErrorInfo{Reason: e.Reason, Domain: ErrorDomain})
	case KindFailedPrecondition:
		code = codes.FailedPrecondition
		details = append(details, &errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{{Type: e.Reason, Description: e.Msg}}})
	case KindAborted:
		code = codes.Aborted
		details = append(details, &errdetails.ErrorInfo{Reason: e.Reason, Domain: ErrorDomain})
	case KindResourceExhausted:
		code = codes.ResourceExhausted
		// ErrorInfo carries the reason where clients look for it first (the gateway maps
		// MESSAGE_SIZE to 413); QuotaFailure says which limit, as before.
		details = append(details, &errdetails.ErrorInfo{Reason: e.Reason, Domain: ErrorDomain},
			&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: e.Reason, Description: e.Msg}}})
		if e.RetryAfter > 0 {
			details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryAfter)})
		}
	case KindUnavailable:
		// Always with RetryInfo: an outage is worth retrying, and clients wait as long as told.
		code = codes.Unavailable
		retry := e.RetryAfter
		if retry <= 0 {
			retry = OutageRetryAfter
		}
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	case KindUnauthenticated:
		code = codes.Unauthenticated
	default:
		return status.New(codes.Internal, "internal error")
	}
	s := status.New(code, e.Msg)
	if len(details) == 0 {
		return s
	}
	if ws, derr := s.WithDetails(details...); derr == nil {
		return ws
	}
	return s
}
