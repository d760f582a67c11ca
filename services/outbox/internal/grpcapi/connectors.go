package grpcapi

import (
	"context"

	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// CreateConnector implements OutboxServiceServer.
func (h *Handler) CreateConnector(ctx context.Context, req *outboxv1.CreateConnectorRequest) (*outboxv1.CreateConnectorResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	c, err := h.connectors.Create(ctx, p, req.GetConnector())
	if err != nil {
		return nil, err
	}
	return &outboxv1.CreateConnectorResponse{Connector: c}, nil
}

// GetConnector implements OutboxServiceServer.
func (h *Handler) GetConnector(ctx context.Context, req *outboxv1.GetConnectorRequest) (*outboxv1.GetConnectorResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	c, err := h.connectors.Get(ctx, p, req.GetConnectorId())
	if err != nil {
		return nil, err
	}
	st, err := h.connectors.State(ctx, p, req.GetConnectorId())
	if err != nil {
		return nil, err
	}
	return &outboxv1.GetConnectorResponse{Connector: c, HeldUntil: wire.Timestamp(st.HeldUntil), HeldReason: st.HeldReason,
		DueCount: st.Due, LaterCount: st.DueLater, OpenConnections: st.Open}, nil
}

// ListConnectors implements OutboxServiceServer.
func (h *Handler) ListConnectors(ctx context.Context, req *outboxv1.ListConnectorsRequest) (*outboxv1.ListConnectorsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	cs, next, err := h.connectors.List(ctx, p, int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &outboxv1.ListConnectorsResponse{Connectors: cs, NextPageToken: next}, nil
}

// UpdateConnector implements OutboxServiceServer.
func (h *Handler) UpdateConnector(ctx context.Context, req *outboxv1.UpdateConnectorRequest) (*outboxv1.UpdateConnectorResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	c, err := h.connectors.Update(ctx, p, req.GetConnector(), paths(req.GetUpdateMask()))
	if err != nil {
		return nil, err
	}
	return &outboxv1.UpdateConnectorResponse{Connector: c}, nil
}

// DeleteConnector implements OutboxServiceServer.
func (h *Handler) DeleteConnector(ctx context.Context, req *outboxv1.DeleteConnectorRequest) (*outboxv1.DeleteConnectorResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := h.connectors.Delete(ctx, p, req.GetConnectorId()); err != nil {
		return nil, err
	}
	return &outboxv1.DeleteConnectorResponse{}, nil
}

// EnableConnector implements OutboxServiceServer.
func (h *Handler) EnableConnector(ctx context.Context, req *outboxv1.EnableConnectorRequest) (*outboxv1.EnableConnectorResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	c, n, err := h.connectors.Enable(ctx, p, req.GetConnectorId())
	if err != nil {
		return nil, err
	}
	return &outboxv1.EnableConnectorResponse{Connector: c, Requeued: n}, nil
}

// DisableConnector implements OutboxServiceServer.
func (h *Handler) DisableConnector(ctx context.Context, req *outboxv1.DisableConnectorRequest) (*outboxv1.DisableConnectorResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	c, err := h.connectors.Disable(ctx, p, req.GetConnectorId())
	if err != nil {
		return nil, err
	}
	return &outboxv1.DisableConnectorResponse{Connector: c}, nil
}

// MoveEmails implements OutboxServiceServer.
func (h *Handler) MoveEmails(ctx context.Context, req *outboxv1.MoveEmailsRequest) (*outboxv1.MoveEmailsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	r, err := h.connectors.Move(ctx, p, req.GetSelection(), req.GetConnectorId())
	if err != nil {
		return nil, err
	}
	return &outboxv1.MoveEmailsResponse{Result: r}, nil
}

// EstimateDelivery implements OutboxServiceServer.
func (h *Handler) EstimateDelivery(ctx context.Context, req *outboxv1.EstimateDeliveryRequest) (*outboxv1.EstimateDeliveryResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	return h.connectors.Estimate(ctx, p, req.GetSelection())
}
