// Package grpcapi is the tracker's gRPC edge: each handler decodes the request, calls the domain
// and encodes the answer. Nothing else happens here; errors are returned as the domain made them
// and mapped to status codes once, by the server's interceptor.
package grpcapi

import (
	"context"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
	"github.com/postamt/postamt/services/tracker/internal/wire"
)

// Handler serves postamt.tracker.v1.TrackerService.
type Handler struct {
	trackerv1.UnimplementedTrackerServiceServer
	svc *tracker.Service
}

// New returns a Handler over svc.
func New(svc *tracker.Service) *Handler { return &Handler{svc: svc} }

// principal returns the authenticated caller; the auth interceptor guarantees one, so its absence
// is a wiring bug reported as Unauthenticated rather than a panic.
func principal(ctx context.Context) (auth.Principal, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return auth.Principal{}, errs.Unauthenticated("no credentials", nil)
	}
	return p, nil
}

func sentItem(s *trackerv1.SentItem) tracker.SentItemInput {
	return tracker.SentItemInput{
		MailboxID: s.GetMailboxId(), SenderUser: s.GetSendingUserId(), RawHeaders: []byte(s.GetRawHeaders()), ThreadID: s.GetThreadId(),
	}
}

// GetOrgSettings implements TrackerServiceServer.
func (h *Handler) GetOrgSettings(ctx context.Context, _ *trackerv1.GetOrgSettingsRequest) (*trackerv1.GetOrgSettingsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	o, err := h.svc.GetOrgSettings(ctx, p)
	if err != nil {
		return nil, err
	}
	return &trackerv1.GetOrgSettingsResponse{Settings: wire.OrgSettings(o)}, nil
}

// UpdateOrgSettings implements TrackerServiceServer.
func (h *Handler) UpdateOrgSettings(ctx context.Context, req *trackerv1.UpdateOrgSettingsRequest) (*trackerv1.UpdateOrgSettingsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	o, err := h.svc.UpdateOrgSettings(ctx, p, wire.OrgSettingsFrom(req.GetSettings()), req.GetUpdateMask().GetPaths())
	if err != nil {
		return nil, err
	}
	return &trackerv1.UpdateOrgSettingsResponse{Settings: wire.OrgSettings(o)}, nil
}

// GetUserSettings implements TrackerServiceServer.
func (h *Handler) GetUserSettings(ctx context.Context, req *trackerv1.GetUserSettingsRequest) (*trackerv1.GetUserSettingsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	u, err := h.svc.GetUserSettings(ctx, p, req.GetUserId())
	if err != nil {
		return nil, err
	}
	return &trackerv1.GetUserSettingsResponse{Settings: wire.UserSettings(u)}, nil
}

// UpdateUserSettings implements TrackerServiceServer.
func (h *Handler) UpdateUserSettings(ctx context.Context, req *trackerv1.UpdateUserSettingsRequest) (*trackerv1.UpdateUserSettingsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	u, err := h.svc.UpdateUserSettings(ctx, p, wire.UserSettingsFrom(req.GetSettings()))
	if err != nil {
		return nil, err
	}
	return &trackerv1.UpdateUserSettingsResponse{Settings: wire.UserSettings(u)}, nil
}

// UpsertRecord implements TrackerServiceServer.
func (h *Handler) UpsertRecord(ctx context.Context, req *trackerv1.UpsertRecordRequest) (*trackerv1.UpsertRecordResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	r, err := h.svc.UpsertRecord(ctx, p, wire.RecordFrom(req.GetRecord()))
	if err != nil {
		return nil, err
	}
	return &trackerv1.UpsertRecordResponse{Record: wire.Record(r)}, nil
}

// DeleteRecord implements TrackerServiceServer.
func (h *Handler) DeleteRecord(ctx context.Context, req *trackerv1.DeleteRecordRequest) (*trackerv1.DeleteRecordResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := h.svc.DeleteRecord(ctx, p, req.GetRecordId()); err != nil {
		return nil, err
	}
	return &trackerv1.DeleteRecordResponse{}, nil
}

// ListRecords implements TrackerServiceServer.
func (h *Handler) ListRecords(ctx context.Context, req *trackerv1.ListRecordsRequest) (*trackerv1.ListRecordsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	rs, next, err := h.svc.ListRecords(ctx, p, tracker.PageRequest{Size: int(req.GetPageSize()), Token: req.GetPageToken()}, req.GetEmailAddress())
	if err != nil {
		return nil, err
	}
	out := &trackerv1.ListRecordsResponse{NextPageToken: next}
	for i := range rs {
		out.Records = append(out.Records, wire.Record(&rs[i]))
	}
	return out, nil
}

// IngestSentItem implements TrackerServiceServer.
func (h *Handler) IngestSentItem(ctx context.Context, req *trackerv1.IngestSentItemRequest) (*trackerv1.IngestSentItemResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	r, err := h.svc.IngestSentItem(ctx, p, sentItem(req.GetSentItem()))
	if err != nil {
		return nil, err
	}
	return &trackerv1.IngestSentItemResponse{
		Tracked: r.Tracked, AlreadyTracked: r.AlreadyTracked,
		TrackedEmail: wire.TrackedEmail(r.Email), Explanation: wire.Explanation(&r.Explanation),
	}, nil
}

// IssueTrackingToken implements TrackerServiceServer.
func (h *Handler) IssueTrackingToken(ctx context.Context, req *trackerv1.IssueTrackingTokenRequest) (*trackerv1.IssueTrackingTokenResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	tok, subject, err := h.svc.IssueTrackingToken(ctx, p, req.GetRegardingRecordId(), req.GetSubject(), req.GetOnlyIfEnabled())
	if err != nil {
		return nil, err
	}
	return &trackerv1.IssueTrackingTokenResponse{Token: tok.Token, Subject: subject}, nil
}

// GetTracking implements TrackerServiceServer.
func (h *Handler) GetTracking(ctx context.Context, req *trackerv1.GetTrackingRequest) (*trackerv1.GetTrackingResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	e, err := h.svc.GetTracking(ctx, p, req.GetMessageId())
	if err != nil {
		return nil, err
	}
	return &trackerv1.GetTrackingResponse{TrackedEmail: wire.TrackedEmail(e)}, nil
}

// ListTrackedEmails implements TrackerServiceServer.
func (h *Handler) ListTrackedEmails(ctx context.Context, req *trackerv1.ListTrackedEmailsRequest) (*trackerv1.ListTrackedEmailsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	es, next, err := h.svc.ListTrackedEmails(ctx, p, req.GetRecordId(), tracker.PageRequest{Size: int(req.GetPageSize()), Token: req.GetPageToken()})
	if err != nil {
		return nil, err
	}
	out := &trackerv1.ListTrackedEmailsResponse{NextPageToken: next}
	for i := range es {
		out.TrackedEmails = append(out.TrackedEmails, wire.TrackedEmail(&es[i]))
	}
	return out, nil
}

// ExplainTracking implements TrackerServiceServer.
func (h *Handler) ExplainTracking(ctx context.Context, req *trackerv1.ExplainTrackingRequest) (*trackerv1.ExplainTrackingResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	switch t := req.GetTarget().(type) {
	case *trackerv1.ExplainTrackingRequest_MessageId:
		x, e, err := h.svc.ExplainMessage(ctx, p, t.MessageId)
		if err != nil {
			return nil, err
		}
		return &trackerv1.ExplainTrackingResponse{Explanation: wire.Explanation(x), TrackedEmail: wire.TrackedEmail(e)}, nil
	case *trackerv1.ExplainTrackingRequest_SentItem:
		r, err := h.svc.Explain(ctx, p, sentItem(t.SentItem))
		if err != nil {
			return nil, err
		}
		return &trackerv1.ExplainTrackingResponse{Explanation: wire.Explanation(&r.Explanation), TrackedEmail: wire.TrackedEmail(r.Email)}, nil
	}
	return nil, errs.Invalid("target", "set message_id or sent_item")
}
