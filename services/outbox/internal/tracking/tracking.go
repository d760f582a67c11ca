// Package tracking asks the tracker for the tracking tokens the outbox appends to subjects. The
// tracker owns CRM records, tokens and the tenant's tracking_token_in_subject setting; one call
// per submit that names a regarding record both asks whether the tenant wants tokens and issues
// one, so the outbox keeps no copy of the setting that could go stale.
package tracking

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
)

// Client implements service.Tokens over the tracker's gRPC API, with the outbox's service
// credentials acting within the request's tenant.
type Client struct {
	tr trackerv1.TrackerServiceClient
}

// New returns a Client.
func New(tr trackerv1.TrackerServiceClient) *Client { return &Client{tr: tr} }

// Subject returns the subject to send mail regarding record with: the tracker's, with a token
// appended, when the tenant has tokens in subjects on; subject unchanged when it is off. The
// tracker's refusals become the outbox's own errors on the submit's fields, so a caller of
// SubmitEmail never sees the tracker's field names or a code that would mislead them (the
// outbox's credentials refused is our fault, not theirs).
func (c *Client) Subject(ctx context.Context, tenant, record, subject string) (string, error) {
	r, err := c.tr.IssueTrackingToken(auth.WithTenant(ctx, tenant), &trackerv1.IssueTrackingTokenRequest{
		RegardingRecordId: record, Subject: subject, OnlyIfEnabled: true,
	})
	if err == nil {
		return r.GetSubject(), nil
	}
	// Not %w: the edge passes a status that no domain error classifies on to the caller as it
	// is (errs.ToStatus), the tracker's code and message in place of ours.
	cause := fmt.Errorf("tracker IssueTrackingToken: %v", err) //nolint:errorlint // not %w, see above
	switch status.Code(err) {
	case codes.NotFound:
		return "", errs.NotFound("record", record)
	case codes.InvalidArgument:
		// The record id and the subject's characters were checked by the outbox; what is left
		// is the room the token needs.
		return "", errs.Invalid("subject", "at most 968 characters when a tracking token is appended (regarding_record_id with tokens in subjects on)")
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		return "", errs.Unavailable("the tracker, which issues tracking tokens, is unavailable; retry with the same idempotency key", time.Second, cause)
	case codes.Canceled:
		return "", fmt.Errorf("%w: %v", context.Canceled, cause) //nolint:errorlint // cause is not wrapped, see above
	}
	return "", cause
}
