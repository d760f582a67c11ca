// Package grpcapi is the calendar's gRPC edge: each handler decodes the request, calls the
// domain and encodes the answer. Nothing else happens here; errors are returned as the domain
// made them and mapped to status codes once, by the server's interceptor.
package grpcapi

import (
	"context"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/internal/calendar"
	"github.com/postamt/postamt/services/calendar/internal/wire"
)

// Handler serves postamt.calendar.v1.CalendarService.
type Handler struct {
	calendarv1.UnimplementedCalendarServiceServer
	svc *calendar.Service
}

// New returns a Handler over svc.
func New(svc *calendar.Service) *Handler { return &Handler{svc: svc} }

// principal returns the authenticated caller; its absence is a wiring bug reported as
// Unauthenticated rather than a panic.
func principal(ctx context.Context) (auth.Principal, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return auth.Principal{}, errs.Unauthenticated("no credentials", nil)
	}
	return p, nil
}

// CreateEntry implements CalendarServiceServer.
func (h *Handler) CreateEntry(ctx context.Context, req *calendarv1.CreateEntryRequest) (*calendarv1.CreateEntryResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	in, err := wire.EntryFrom(req.GetEntry())
	if err != nil {
		return nil, err
	}
	e, existed, err := h.svc.CreateEntry(ctx, p, in)
	if err != nil {
		return nil, err
	}
	return &calendarv1.CreateEntryResponse{Entry: wire.Entry(p.Tenant, e), AlreadyExisted: existed}, nil
}

// UpdateEntry implements CalendarServiceServer.
func (h *Handler) UpdateEntry(ctx context.Context, req *calendarv1.UpdateEntryRequest) (*calendarv1.UpdateEntryResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	in, err := wire.EntryFrom(req.GetEntry())
	if err != nil {
		return nil, err
	}
	e, err := h.svc.UpdateEntry(ctx, p, in, req.GetExpectedRevision())
	if err != nil {
		return nil, err
	}
	return &calendarv1.UpdateEntryResponse{Entry: wire.Entry(p.Tenant, e)}, nil
}

// CancelEntry implements CalendarServiceServer.
func (h *Handler) CancelEntry(ctx context.Context, req *calendarv1.CancelEntryRequest) (*calendarv1.CancelEntryResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	e, err := h.svc.CancelEntry(ctx, p, req.GetEntryId(), req.GetExpectedRevision())
	if err != nil {
		return nil, err
	}
	return &calendarv1.CancelEntryResponse{Entry: wire.Entry(p.Tenant, e)}, nil
}

// MarkDone implements CalendarServiceServer.
func (h *Handler) MarkDone(ctx context.Context, req *calendarv1.MarkDoneRequest) (*calendarv1.MarkDoneResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	e, err := h.svc.MarkDone(ctx, p, req.GetEntryId(), req.GetDone())
	if err != nil {
		return nil, err
	}
	return &calendarv1.MarkDoneResponse{Entry: wire.Entry(p.Tenant, e)}, nil
}

// GetEntry implements CalendarServiceServer.
func (h *Handler) GetEntry(ctx context.Context, req *calendarv1.GetEntryRequest) (*calendarv1.GetEntryResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	r, err := h.svc.GetEntry(ctx, p, req.GetEntryId(), req.GetRevision())
	if err != nil {
		return nil, err
	}
	return &calendarv1.GetEntryResponse{Entry: wire.Entry(p.Tenant, &r.Entry), Ical: string(r.ICS)}, nil
}

// ListEntries implements CalendarServiceServer.
func (h *Handler) ListEntries(ctx context.Context, req *calendarv1.ListEntriesRequest) (*calendarv1.ListEntriesResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	q := calendar.ListQuery{Owner: req.GetOwnerUserId(), PageSize: int(req.GetPageSize()), PageToken: req.GetPageToken(), IncludeCancelled: req.GetIncludeCancelled()}
	if req.GetStartTime() != nil {
		q.From = req.GetStartTime().AsTime()
	}
	if req.GetEndTime() != nil {
		q.To = req.GetEndTime().AsTime()
	}
	es, next, err := h.svc.ListEntries(ctx, p, q)
	if err != nil {
		return nil, err
	}
	out := &calendarv1.ListEntriesResponse{NextPageToken: next}
	for i := range es {
		out.Entries = append(out.Entries, wire.Entry(p.Tenant, &es[i]))
	}
	return out, nil
}

// GetTenantSettings implements CalendarServiceServer.
func (h *Handler) GetTenantSettings(ctx context.Context, _ *calendarv1.GetTenantSettingsRequest) (*calendarv1.GetTenantSettingsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	t, err := h.svc.GetTenantSettings(ctx, p)
	if err != nil {
		return nil, err
	}
	return &calendarv1.GetTenantSettingsResponse{Settings: wire.TenantSettings(t)}, nil
}

// UpdateTenantSettings implements CalendarServiceServer.
func (h *Handler) UpdateTenantSettings(ctx context.Context, req *calendarv1.UpdateTenantSettingsRequest) (*calendarv1.UpdateTenantSettingsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	t, err := h.svc.UpdateTenantSettings(ctx, p, calendar.TenantSettings{LiveSync: req.GetSettings().GetLiveSyncEnabled()})
	if err != nil {
		return nil, err
	}
	return &calendarv1.UpdateTenantSettingsResponse{Settings: wire.TenantSettings(t)}, nil
}

// GetUserSettings implements CalendarServiceServer.
func (h *Handler) GetUserSettings(ctx context.Context, req *calendarv1.GetUserSettingsRequest) (*calendarv1.GetUserSettingsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	u, err := h.svc.GetUserSettings(ctx, p, req.GetUserId())
	if err != nil {
		return nil, err
	}
	return &calendarv1.GetUserSettingsResponse{Settings: wire.UserSettings(u)}, nil
}

// UpdateUserSettings implements CalendarServiceServer.
func (h *Handler) UpdateUserSettings(ctx context.Context, req *calendarv1.UpdateUserSettingsRequest) (*calendarv1.UpdateUserSettingsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	u, err := h.svc.UpdateUserSettings(ctx, p, wire.UserSettingsFrom(req.GetSettings()))
	if err != nil {
		return nil, err
	}
	return &calendarv1.UpdateUserSettingsResponse{Settings: wire.UserSettings(u)}, nil
}

// GetSyncStatus implements CalendarServiceServer.
func (h *Handler) GetSyncStatus(ctx context.Context, req *calendarv1.GetSyncStatusRequest) (*calendarv1.GetSyncStatusResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	st, err := h.svc.GetSyncStatus(ctx, p, req.GetUserId())
	if err != nil {
		return nil, err
	}
	return &calendarv1.GetSyncStatusResponse{Status: wire.SyncStatus(st)}, nil
}

// AcknowledgeNotice implements CalendarServiceServer.
func (h *Handler) AcknowledgeNotice(ctx context.Context, _ *calendarv1.AcknowledgeNoticeRequest) (*calendarv1.AcknowledgeNoticeResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	st, err := h.svc.AcknowledgeNotice(ctx, p)
	if err != nil {
		return nil, err
	}
	return &calendarv1.AcknowledgeNoticeResponse{Status: wire.SyncStatus(st)}, nil
}

// ListSyncLog implements CalendarServiceServer.
func (h *Handler) ListSyncLog(ctx context.Context, req *calendarv1.ListSyncLogRequest) (*calendarv1.ListSyncLogResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	lines, next, err := h.svc.ListSyncLog(ctx, p, req.GetUserId(), int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	out := &calendarv1.ListSyncLogResponse{NextPageToken: next}
	for _, l := range lines {
		out.Entries = append(out.Entries, wire.LogLine(l))
	}
	return out, nil
}

// Connect implements CalendarServiceServer: it adapts the stream for the rules.
func (h *Handler) Connect(stream calendarv1.CalendarService_ConnectServer) error {
	ctx := stream.Context()
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	return h.svc.Connect(ctx, p, agentStream{s: stream, tenant: p.Tenant})
}

// agentStream converts the stream's messages.
type agentStream struct {
	s      calendarv1.CalendarService_ConnectServer
	tenant string
}

func (a agentStream) Send(m calendar.ServerMessage) error {
	return a.s.Send(wire.ServerMessage(a.tenant, m))
}

func (a agentStream) Recv() (calendar.AgentMessage, error) {
	m, err := a.s.Recv()
	if err != nil {
		return calendar.AgentMessage{}, err
	}
	return wire.AgentMessage(m), nil
}
