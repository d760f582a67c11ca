package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// moveTarget is the connector a move sends mail to, as read when the move began.
type moveTarget struct {
	id      string
	enabled bool
}

// Move moves the selected emails (by ids, or by view and filter as every bulk action selects)
// to another connector of the caller's tenant, so that a relay can be retired without
// cancelling its mail: move it, then delete the connector. Admins and services only, like every
// change to connectors.
//
// Each email keeps its status, due time and attempts, and leaves through the target from its
// next attempt on, under the target's retry pattern and attempt limit. CONNECTOR_DISABLED mail
// moved to an enabled connector is queued, due now; moved to a disabled one it stays
// CONNECTOR_DISABLED and is queued when that one is enabled. Mail in SENDING is refused per
// email (FAILED_PRECONDITION BEING_SENT: its holder records its result under the old
// connector), and SENT or CANCELLED mail too (WRONG_STATUS). Mail already on the target counts
// as moved without a change, so a repeated request (after a lost reply, or a filter that still
// matches) answers the same.
//
// An unknown target is FAILED_PRECONDITION UNKNOWN_CONNECTOR for the whole request, as for
// submit. The target's enabled state is read once: an Enable of the target racing the move can
// leave moved CONNECTOR_DISABLED mail held on the then enabled target; EnableConnector again
// queues it (its requeue is idempotent).
func (a *ConnectorAdmin) Move(ctx context.Context, p auth.Principal, sel *outboxv1.Selection, target string) (*outboxv1.ActionResult, error) {
	if err := adminOnly(p); err != nil {
		return nil, err
	}
	if target == "" {
		return nil, errs.Invalid("connector_id", "is required: the connector the emails move to")
	}
	if err := ids.Err("connector_id", target); err != nil {
		return nil, err
	}
	c, err := a.store.Get(ctx, p.Tenant, target)
	if errors.Is(err, errs.ErrNotFound) {
		return nil, errs.FailedPrecondition("UNKNOWN_CONNECTOR", fmt.Sprintf("connector %q does not exist; create it or name another", target))
	}
	if err != nil {
		return nil, fmt.Errorf("read the target connector: %w", err)
	}
	return a.svc.move(ctx, p, sel, moveTarget{id: c.ID, enabled: c.Enabled})
}

// move selects as Act does and moves each email on its own.
func (s *Service) move(ctx context.Context, p auth.Principal, sel *outboxv1.Selection, to moveTarget) (*outboxv1.ActionResult, error) {
	ids, err := s.selected(ctx, p, sel)
	if err != nil {
		return nil, err
	}
	return s.each(ctx, ids, func(id string) error { return s.moveOne(ctx, p, id, to) })
}

// moveOne moves one email, reading it again when it changed concurrently (a worker's claim, a
// colleague's action), as actOne does; after three such races it reports the conflict. The
// version check makes the move and a claim exclusive: a claim that read the email in the old
// lane finds the version moved and leaves it, and a move that read it before a claim is refused
// and finds it SENDING on the next read.
func (s *Service) moveOne(ctx context.Context, p auth.Principal, id string, to moveTarget) error {
	for range 3 {
		e, err := s.read(ctx, p, id)
		if err != nil {
			return err
		}
		if e.Connector == to.id {
			return nil
		}
		c, err := moveChange(e, to, s.opts.Now())
		if err != nil {
			return err
		}
		prev := e.Status
		err = s.ledger.Apply(ctx, e, c, func(next *redisstore.Email) redisstore.Event {
			return wire.Events{}.Changed(prev, next, nil)
		})
		if errors.Is(err, redisstore.ErrChanged) {
			continue
		}
		return err
	}
	return redisstore.ErrChanged
}

// moveChange is the transition that moves e to connector to, or FailedPrecondition.
func moveChange(e *redisstore.Email, to moveTarget, now time.Time) (redisstore.Change, error) {
	switch {
	case e.Status == outbox.StatusSending:
		return redisstore.Change{}, errs.FailedPrecondition("BEING_SENT", "cannot move: a worker is sending the email now; its result is recorded under the old connector")
	case e.Status.Final():
		return redisstore.Change{}, errs.FailedPrecondition("WRONG_STATUS", fmt.Sprintf("cannot move an email in status %s", e.Status))
	case e.Status == outbox.StatusConnectorDisabled && to.enabled:
		return redisstore.Change{Status: outbox.StatusQueued, Due: now, At: now, Connector: to.id}, nil
	}
	// The same status and due time; mail without a due time keeps its place in the list (its
	// sort time is its last status change, which a move is not).
	at := e.Score
	if at.IsZero() {
		at = now
	}
	return redisstore.Change{Status: e.Status, Due: e.Due, At: at, Connector: to.id}, nil
}
