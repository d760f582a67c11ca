package service

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/connector"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// Estimate answers support's "when will these emails be out?" for a selection (as every bulk
// action selects), changing nothing: per connector of the selected open mail, the count of
// emails and recipients and, from its relay limits, the earliest time the last one may go
// (connector.Connector.Estimate). Admins and services only, like the connectors it reads.
func (a *ConnectorAdmin) Estimate(ctx context.Context, p auth.Principal, sel *outboxv1.Selection) (*outboxv1.EstimateDeliveryResponse, error) {
	if err := adminOnly(p); err != nil {
		return nil, err
	}
	ids, err := a.svc.selected(ctx, p, sel)
	if err != nil {
		return nil, err
	}
	batches := map[string]*connector.Batch{}
	out := &outboxv1.EstimateDeliveryResponse{}
	for len(ids) > 0 {
		n := min(len(ids), 200)
		emails, err := a.ledger.GetMany(ctx, ids[:n])
		if err != nil {
			return nil, err
		}
		ids = ids[n:]
		for _, e := range emails {
			if e.Tenant != p.Tenant {
				continue // another tenant's id: as if it did not exist
			}
			if e.Status.Final() {
				out.Skipped++
				continue
			}
			b := batches[e.Connector]
			if b == nil {
				b = &connector.Batch{BySender: map[string]connector.Share{}}
				batches[e.Connector] = b
			}
			b.Messages++
			b.Recipients += len(e.Rcpts)
			sh := b.BySender[e.From]
			sh.Messages++
			sh.Recipients += len(e.Rcpts)
			b.BySender[e.From] = sh
		}
	}
	now := a.now()
	for id, b := range batches {
		est := &outboxv1.ConnectorEstimate{ConnectorId: id, Emails: int64(b.Messages), Recipients: int64(b.Recipients)}
		c, err := a.store.Get(ctx, p.Tenant, id)
		switch {
		case errors.Is(err, errs.ErrNotFound):
			est.LimitedBy = "the connector does not exist: this mail fails when it comes due"
		case err != nil:
			return nil, fmt.Errorf("read connector %s: %w", id, err)
		case !c.Limits.IsZero() || !c.SenderLimits.IsZero():
			d, by := c.Estimate(*b)
			est.DoneTime, est.LimitedBy = wire.Timestamp(now.Add(d)), by
		}
		out.Connectors = append(out.Connectors, est)
	}
	sort.Slice(out.Connectors, func(i, j int) bool { return out.Connectors[i].GetConnectorId() < out.Connectors[j].GetConnectorId() })
	return out, nil
}
