// Package grpcapi is the outbox's gRPC edge: each handler takes the caller from the context,
// calls the service and encodes the answer. Errors are returned as the service made them and
// mapped to status codes once, by the server's interceptor.
package grpcapi

import (
	"context"

	"google.golang.org/grpc/metadata"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/service"
)

// Handler serves postamt.outbox.v1.OutboxService.
type Handler struct {
	outboxv1.UnimplementedOutboxServiceServer
	svc        *service.Service
	connectors *service.ConnectorAdmin
	watch      *service.Watcher
}

// New returns a Handler.
func New(svc *service.Service, connectors *service.ConnectorAdmin, watch *service.Watcher) *Handler {
	return &Handler{svc: svc, connectors: connectors, watch: watch}
}

// principal returns the authenticated caller; the auth interceptor guarantees one, so its absence
// is a wiring bug reported as Unauthenticated rather than a panic.
func principal(ctx context.Context) (auth.Principal, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return auth.Principal{}, errs.Unauthenticated("no credentials", nil)
	}
	return p, nil
}

func paths(m interface{ GetPaths() []string }) []string {
	if m == nil {
		return nil
	}
	return m.GetPaths()
}

// SubmitEmail implements OutboxServiceServer.
func (h *Handler) SubmitEmail(ctx context.Context, req *outboxv1.SubmitEmailRequest) (*outboxv1.SubmitEmailResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	rec, _, err := h.svc.Submit(ctx, p, req)
	if err != nil {
		return nil, err
	}
	e, err := h.svc.Present(p, rec)
	if err != nil {
		return nil, err
	}
	return &outboxv1.SubmitEmailResponse{Email: e}, nil
}

// GetEmail implements OutboxServiceServer.
func (h *Handler) GetEmail(ctx context.Context, req *outboxv1.GetEmailRequest) (*outboxv1.GetEmailResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	e, err := h.svc.Get(ctx, p, req.GetEmailId(), req.GetIncludeBodies())
	if err != nil {
		return nil, err
	}
	return &outboxv1.GetEmailResponse{Email: e}, nil
}

// ListEmails implements OutboxServiceServer.
func (h *Handler) ListEmails(ctx context.Context, req *outboxv1.ListEmailsRequest) (*outboxv1.ListEmailsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	return h.svc.List(ctx, p, req)
}

// CountEmails implements OutboxServiceServer.
func (h *Handler) CountEmails(ctx context.Context, req *outboxv1.CountEmailsRequest) (*outboxv1.CountEmailsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	return h.svc.Count(ctx, p, req.GetView(), req.GetFilter())
}

// SendNow implements OutboxServiceServer.
func (h *Handler) SendNow(ctx context.Context, req *outboxv1.SendNowRequest) (*outboxv1.SendNowResponse, error) {
	r, err := h.act(ctx, service.ActionSendNow, req.GetSelection(), service.ActOptions{})
	if err != nil {
		return nil, err
	}
	return &outboxv1.SendNowResponse{Result: r}, nil
}

// Cancel implements OutboxServiceServer.
func (h *Handler) Cancel(ctx context.Context, req *outboxv1.CancelRequest) (*outboxv1.CancelResponse, error) {
	r, err := h.act(ctx, service.ActionCancel, req.GetSelection(), service.ActOptions{})
	if err != nil {
		return nil, err
	}
	return &outboxv1.CancelResponse{Result: r}, nil
}

// Retry implements OutboxServiceServer.
func (h *Handler) Retry(ctx context.Context, req *outboxv1.RetryRequest) (*outboxv1.RetryResponse, error) {
	r, err := h.act(ctx, service.ActionRetry, req.GetSelection(), service.ActOptions{IncludeMayHaveBeenSent: req.GetIncludeMayHaveBeenSent()})
	if err != nil {
		return nil, err
	}
	return &outboxv1.RetryResponse{Result: r}, nil
}

// Reschedule implements OutboxServiceServer.
func (h *Handler) Reschedule(ctx context.Context, req *outboxv1.RescheduleRequest) (*outboxv1.RescheduleResponse, error) {
	if req.GetSendAt() == nil {
		return nil, errs.Invalid("send_at", "is required")
	}
	r, err := h.act(ctx, service.ActionReschedule, req.GetSelection(), service.ActOptions{SendAt: req.GetSendAt().AsTime()})
	if err != nil {
		return nil, err
	}
	return &outboxv1.RescheduleResponse{Result: r}, nil
}

func (h *Handler) act(ctx context.Context, a service.Action, sel *outboxv1.Selection, o service.ActOptions) (*outboxv1.ActionResult, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	return h.svc.Act(ctx, p, a, sel, o)
}

// ImportEmails implements OutboxServiceServer.
func (h *Handler) ImportEmails(ctx context.Context, req *outboxv1.ImportEmailsRequest) (*outboxv1.ImportEmailsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	return h.svc.Import(ctx, p, req.GetEmails())
}

// WatchOpenHeader is the response header metadata key WatchEmails sends once its watch is in
// place, before the first change.
const WatchOpenHeader = "postamt-watch-open"

// WatchEmails implements OutboxServiceServer.
func (h *Handler) WatchEmails(req *outboxv1.WatchEmailsRequest, stream outboxv1.OutboxService_WatchEmailsServer) error {
	p, err := principal(stream.Context())
	if err != nil {
		return err
	}
	// The header goes out as soon as the watch is in place, before any change, so that a client
	// (the gateway's HTTP stream, and through it the console) knows from when on nothing is
	// missed, even while nothing changes.
	ready := func() error { return stream.SendHeader(metadata.Pairs(WatchOpenHeader, "1")) }
	return h.watch.Watch(stream.Context(), p, req.GetView(), req.GetFilter(), ready, func(e *outboxv1.Email, left bool) error {
		return stream.Send(&outboxv1.WatchEmailsResponse{Email: e, LeftFilter: left})
	})
}

// GetUserSettings implements OutboxServiceServer.
func (h *Handler) GetUserSettings(ctx context.Context, req *outboxv1.GetUserSettingsRequest) (*outboxv1.GetUserSettingsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	us, err := h.svc.Settings(ctx, p, req.GetUserId())
	if err != nil {
		return nil, err
	}
	return &outboxv1.GetUserSettingsResponse{Settings: us}, nil
}

// UpdateUserSettings implements OutboxServiceServer.
func (h *Handler) UpdateUserSettings(ctx context.Context, req *outboxv1.UpdateUserSettingsRequest) (*outboxv1.UpdateUserSettingsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	us, err := h.svc.UpdateSettings(ctx, p, req.GetSettings(), paths(req.GetUpdateMask()))
	if err != nil {
		return nil, err
	}
	return &outboxv1.UpdateUserSettingsResponse{Settings: us}, nil
}
