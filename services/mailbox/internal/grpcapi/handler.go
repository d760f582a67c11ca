// Package grpcapi is the mailbox service's gRPC edge: each handler decodes the request, calls the
// domain and encodes the answer. Nothing else happens here; errors are returned as the domain
// made them and mapped to status codes once, by the server's interceptor.
package grpcapi

import (
	"context"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
	"github.com/postamt/postamt/services/mailbox/internal/wire"
)

// Handler serves postamt.mailbox.v1.MailboxService.
type Handler struct {
	mailboxv1.UnimplementedMailboxServiceServer
	svc *mailbox.Service
}

// New returns a Handler over svc.
func New(svc *mailbox.Service) *Handler { return &Handler{svc: svc} }

// principal returns the authenticated caller; the auth interceptor guarantees one, so its absence
// is a wiring bug reported as Unauthenticated rather than a panic.
func principal(ctx context.Context) (auth.Principal, error) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return auth.Principal{}, errs.Unauthenticated("no credentials", nil)
	}
	return p, nil
}

func pageReq(size int32, token string) mailbox.PageRequest {
	return mailbox.PageRequest{Size: int(size), Token: token}
}

func paths(m interface{ GetPaths() []string }) []string {
	if m == nil {
		return nil
	}
	return m.GetPaths()
}

// CreateTenant implements MailboxServiceServer.
func (h *Handler) CreateTenant(ctx context.Context, req *mailboxv1.CreateTenantRequest) (*mailboxv1.CreateTenantResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	t, err := h.svc.CreateTenant(ctx, p, wire.TenantFrom(req.GetTenant()))
	if err != nil {
		return nil, err
	}
	return &mailboxv1.CreateTenantResponse{Tenant: wire.Tenant(t)}, nil
}

// GetTenant implements MailboxServiceServer.
func (h *Handler) GetTenant(ctx context.Context, req *mailboxv1.GetTenantRequest) (*mailboxv1.GetTenantResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	t, err := h.svc.GetTenant(ctx, p, req.GetTenantId())
	if err != nil {
		return nil, err
	}
	return &mailboxv1.GetTenantResponse{Tenant: wire.Tenant(t)}, nil
}

// ListTenants implements MailboxServiceServer.
func (h *Handler) ListTenants(ctx context.Context, req *mailboxv1.ListTenantsRequest) (*mailboxv1.ListTenantsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	ts, next, err := h.svc.ListTenants(ctx, p, pageReq(req.GetPageSize(), req.GetPageToken()))
	if err != nil {
		return nil, err
	}
	out := &mailboxv1.ListTenantsResponse{NextPageToken: next}
	for i := range ts {
		out.Tenants = append(out.Tenants, wire.Tenant(&ts[i]))
	}
	return out, nil
}

// UpdateTenant implements MailboxServiceServer.
func (h *Handler) UpdateTenant(ctx context.Context, req *mailboxv1.UpdateTenantRequest) (*mailboxv1.UpdateTenantResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	t, err := h.svc.UpdateTenant(ctx, p, wire.TenantFrom(req.GetTenant()), paths(req.GetUpdateMask()))
	if err != nil {
		return nil, err
	}
	return &mailboxv1.UpdateTenantResponse{Tenant: wire.Tenant(t)}, nil
}

// DeleteTenant implements MailboxServiceServer.
func (h *Handler) DeleteTenant(ctx context.Context, req *mailboxv1.DeleteTenantRequest) (*mailboxv1.DeleteTenantResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := h.svc.DeleteTenant(ctx, p, req.GetTenantId()); err != nil {
		return nil, err
	}
	return &mailboxv1.DeleteTenantResponse{}, nil
}

// CreateUser implements MailboxServiceServer.
func (h *Handler) CreateUser(ctx context.Context, req *mailboxv1.CreateUserRequest) (*mailboxv1.CreateUserResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	u, err := h.svc.CreateUser(ctx, p, wire.UserFrom(req.GetUser()))
	if err != nil {
		return nil, err
	}
	return &mailboxv1.CreateUserResponse{User: wire.User(u)}, nil
}

// GetUser implements MailboxServiceServer.
func (h *Handler) GetUser(ctx context.Context, req *mailboxv1.GetUserRequest) (*mailboxv1.GetUserResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	u, err := h.svc.GetUser(ctx, p, req.GetUserId())
	if err != nil {
		return nil, err
	}
	return &mailboxv1.GetUserResponse{User: wire.User(u)}, nil
}

// ListUsers implements MailboxServiceServer.
func (h *Handler) ListUsers(ctx context.Context, req *mailboxv1.ListUsersRequest) (*mailboxv1.ListUsersResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	us, next, err := h.svc.ListUsers(ctx, p, pageReq(req.GetPageSize(), req.GetPageToken()))
	if err != nil {
		return nil, err
	}
	out := &mailboxv1.ListUsersResponse{NextPageToken: next}
	for i := range us {
		out.Users = append(out.Users, wire.User(&us[i]))
	}
	return out, nil
}

// UpdateUser implements MailboxServiceServer.
func (h *Handler) UpdateUser(ctx context.Context, req *mailboxv1.UpdateUserRequest) (*mailboxv1.UpdateUserResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	u, err := h.svc.UpdateUser(ctx, p, wire.UserFrom(req.GetUser()), paths(req.GetUpdateMask()))
	if err != nil {
		return nil, err
	}
	return &mailboxv1.UpdateUserResponse{User: wire.User(u)}, nil
}

// DeleteUser implements MailboxServiceServer.
func (h *Handler) DeleteUser(ctx context.Context, req *mailboxv1.DeleteUserRequest) (*mailboxv1.DeleteUserResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := h.svc.DeleteUser(ctx, p, req.GetUserId()); err != nil {
		return nil, err
	}
	return &mailboxv1.DeleteUserResponse{}, nil
}

// CreateTeam implements MailboxServiceServer.
func (h *Handler) CreateTeam(ctx context.Context, req *mailboxv1.CreateTeamRequest) (*mailboxv1.CreateTeamResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	t, err := h.svc.CreateTeam(ctx, p, wire.TeamFrom(req.GetTeam()))
	if err != nil {
		return nil, err
	}
	return &mailboxv1.CreateTeamResponse{Team: wire.Team(t)}, nil
}

// GetTeam implements MailboxServiceServer.
func (h *Handler) GetTeam(ctx context.Context, req *mailboxv1.GetTeamRequest) (*mailboxv1.GetTeamResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	t, err := h.svc.GetTeam(ctx, p, req.GetTeamId())
	if err != nil {
		return nil, err
	}
	return &mailboxv1.GetTeamResponse{Team: wire.Team(t)}, nil
}

// ListTeams implements MailboxServiceServer.
func (h *Handler) ListTeams(ctx context.Context, req *mailboxv1.ListTeamsRequest) (*mailboxv1.ListTeamsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	ts, next, err := h.svc.ListTeams(ctx, p, pageReq(req.GetPageSize(), req.GetPageToken()))
	if err != nil {
		return nil, err
	}
	out := &mailboxv1.ListTeamsResponse{NextPageToken: next}
	for i := range ts {
		out.Teams = append(out.Teams, wire.Team(&ts[i]))
	}
	return out, nil
}

// UpdateTeam implements MailboxServiceServer.
func (h *Handler) UpdateTeam(ctx context.Context, req *mailboxv1.UpdateTeamRequest) (*mailboxv1.UpdateTeamResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	t, err := h.svc.UpdateTeam(ctx, p, wire.TeamFrom(req.GetTeam()), paths(req.GetUpdateMask()))
	if err != nil {
		return nil, err
	}
	return &mailboxv1.UpdateTeamResponse{Team: wire.Team(t)}, nil
}

// DeleteTeam implements MailboxServiceServer.
func (h *Handler) DeleteTeam(ctx context.Context, req *mailboxv1.DeleteTeamRequest) (*mailboxv1.DeleteTeamResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := h.svc.DeleteTeam(ctx, p, req.GetTeamId()); err != nil {
		return nil, err
	}
	return &mailboxv1.DeleteTeamResponse{}, nil
}

// CreateMailbox implements MailboxServiceServer.
func (h *Handler) CreateMailbox(ctx context.Context, req *mailboxv1.CreateMailboxRequest) (*mailboxv1.CreateMailboxResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	m, err := h.svc.CreateMailbox(ctx, p, wire.MailboxFrom(req.GetMailbox()))
	if err != nil {
		return nil, err
	}
	return &mailboxv1.CreateMailboxResponse{Mailbox: wire.Mailbox(m)}, nil
}

// GetMailbox implements MailboxServiceServer.
func (h *Handler) GetMailbox(ctx context.Context, req *mailboxv1.GetMailboxRequest) (*mailboxv1.GetMailboxResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	m, err := h.svc.GetMailbox(ctx, p, req.GetMailboxId())
	if err != nil {
		return nil, err
	}
	return &mailboxv1.GetMailboxResponse{Mailbox: wire.Mailbox(m)}, nil
}

// ListMailboxes implements MailboxServiceServer.
func (h *Handler) ListMailboxes(ctx context.Context, req *mailboxv1.ListMailboxesRequest) (*mailboxv1.ListMailboxesResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	ms, next, err := h.svc.ListMailboxes(ctx, p, pageReq(req.GetPageSize(), req.GetPageToken()))
	if err != nil {
		return nil, err
	}
	out := &mailboxv1.ListMailboxesResponse{NextPageToken: next}
	for i := range ms {
		out.Mailboxes = append(out.Mailboxes, wire.Mailbox(&ms[i]))
	}
	return out, nil
}

// UpdateMailbox implements MailboxServiceServer.
func (h *Handler) UpdateMailbox(ctx context.Context, req *mailboxv1.UpdateMailboxRequest) (*mailboxv1.UpdateMailboxResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	m, err := h.svc.UpdateMailbox(ctx, p, wire.MailboxFrom(req.GetMailbox()), paths(req.GetUpdateMask()))
	if err != nil {
		return nil, err
	}
	return &mailboxv1.UpdateMailboxResponse{Mailbox: wire.Mailbox(m)}, nil
}

// DeleteMailbox implements MailboxServiceServer.
func (h *Handler) DeleteMailbox(ctx context.Context, req *mailboxv1.DeleteMailboxRequest) (*mailboxv1.DeleteMailboxResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := h.svc.DeleteMailbox(ctx, p, req.GetMailboxId()); err != nil {
		return nil, err
	}
	return &mailboxv1.DeleteMailboxResponse{}, nil
}

// SetMailboxUsage implements MailboxServiceServer.
func (h *Handler) SetMailboxUsage(ctx context.Context, req *mailboxv1.SetMailboxUsageRequest) (*mailboxv1.SetMailboxUsageResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	m, err := h.svc.SetMailboxUsage(ctx, p, req.GetMailboxId(), req.GetUsageBytes())
	if err != nil {
		return nil, err
	}
	return &mailboxv1.SetMailboxUsageResponse{Mailbox: wire.Mailbox(m)}, nil
}

// AddMember implements MailboxServiceServer.
func (h *Handler) AddMember(ctx context.Context, req *mailboxv1.AddMemberRequest) (*mailboxv1.AddMemberResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	m, err := h.svc.AddMember(ctx, p, req.GetMailboxId(), req.GetUserId(), wire.RightsFrom(req.GetRights()))
	if err != nil {
		return nil, err
	}
	return &mailboxv1.AddMemberResponse{Member: wire.Member(m)}, nil
}

// UpdateMember implements MailboxServiceServer.
func (h *Handler) UpdateMember(ctx context.Context, req *mailboxv1.UpdateMemberRequest) (*mailboxv1.UpdateMemberResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	m, err := h.svc.UpdateMember(ctx, p, req.GetMailboxId(), req.GetUserId(), wire.RightsFrom(req.GetRights()))
	if err != nil {
		return nil, err
	}
	return &mailboxv1.UpdateMemberResponse{Member: wire.Member(m)}, nil
}

// RemoveMember implements MailboxServiceServer.
func (h *Handler) RemoveMember(ctx context.Context, req *mailboxv1.RemoveMemberRequest) (*mailboxv1.RemoveMemberResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := h.svc.RemoveMember(ctx, p, req.GetMailboxId(), req.GetUserId()); err != nil {
		return nil, err
	}
	return &mailboxv1.RemoveMemberResponse{}, nil
}

// ListMembers implements MailboxServiceServer.
func (h *Handler) ListMembers(ctx context.Context, req *mailboxv1.ListMembersRequest) (*mailboxv1.ListMembersResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	ms, next, err := h.svc.ListMembers(ctx, p, req.GetMailboxId(), pageReq(req.GetPageSize(), req.GetPageToken()))
	if err != nil {
		return nil, err
	}
	out := &mailboxv1.ListMembersResponse{NextPageToken: next}
	for i := range ms {
		out.Members = append(out.Members, wire.Member(&ms[i]))
	}
	return out, nil
}

// ListVisibleMailboxes implements MailboxServiceServer.
func (h *Handler) ListVisibleMailboxes(ctx context.Context, req *mailboxv1.ListVisibleMailboxesRequest) (*mailboxv1.ListVisibleMailboxesResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	vs, err := h.svc.ListVisibleMailboxes(ctx, p, req.GetUserId())
	if err != nil {
		return nil, err
	}
	out := &mailboxv1.ListVisibleMailboxesResponse{}
	for i := range vs {
		out.Mailboxes = append(out.Mailboxes, wire.VisibleMailbox(&vs[i]))
	}
	return out, nil
}

// GetReadAccess implements MailboxServiceServer.
func (h *Handler) GetReadAccess(ctx context.Context, req *mailboxv1.GetReadAccessRequest) (*mailboxv1.GetReadAccessResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	a, err := h.svc.GetReadAccess(ctx, p, req.GetUserId())
	if err != nil {
		return nil, err
	}
	return &mailboxv1.GetReadAccessResponse{Known: a.Known, ReadableMailboxIds: a.Readable, TeamIds: a.Teams, LeadTeamIds: a.LeadTeams}, nil
}

// SetDefaultSender implements MailboxServiceServer.
func (h *Handler) SetDefaultSender(ctx context.Context, req *mailboxv1.SetDefaultSenderRequest) (*mailboxv1.SetDefaultSenderResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	u, err := h.svc.SetDefaultSender(ctx, p, req.GetUserId(), req.GetMailboxId())
	if err != nil {
		return nil, err
	}
	return &mailboxv1.SetDefaultSenderResponse{User: wire.User(u)}, nil
}

// CheckSend implements MailboxServiceServer.
func (h *Handler) CheckSend(ctx context.Context, req *mailboxv1.CheckSendRequest) (*mailboxv1.CheckSendResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	d, err := h.svc.CheckSend(ctx, p, req.GetUserId(), req.GetFromAddress())
	if err != nil {
		return nil, err
	}
	return wire.SendDecision(&d), nil
}

// ListSentItems implements MailboxServiceServer.
func (h *Handler) ListSentItems(ctx context.Context, req *mailboxv1.ListSentItemsRequest) (*mailboxv1.ListSentItemsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	items, next, err := h.svc.ListSentItems(ctx, p, req.GetUserId(), pageReq(req.GetPageSize(), req.GetPageToken()))
	if err != nil {
		return nil, err
	}
	out := &mailboxv1.ListSentItemsResponse{NextPageToken: next}
	for i := range items {
		out.Items = append(out.Items, wire.SentItem(&items[i]))
	}
	return out, nil
}
