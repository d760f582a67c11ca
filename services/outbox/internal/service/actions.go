package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// Action is what a person does to emails: send now, cancel, retry or reschedule.
type Action int

// The actions.
const (
	ActionSendNow Action = iota + 1
	ActionCancel
	ActionRetry
	ActionReschedule
)

// maxSelectionIDs bounds the ids one request may list.
const maxSelectionIDs = 1000

// maxFailuresListed bounds the per-email failures one answer lists.
const maxFailuresListed = 1000

// Act applies an action to the selected emails, each checked against the caller's access and
// its own status; one email's refusal does not stop the others. A selection by filter is read
// first (at most MaxSelection emails) and then changed in batches, so emails the action moves
// within the view are not met twice.
func (s *Service) Act(ctx context.Context, p auth.Principal, a Action, sel *outboxv1.Selection, sendAt time.Time) (*outboxv1.ActionResult, error) {
	now := s.opts.Now()
	if a == ActionReschedule {
		l := s.opts.Limits
		switch {
		case sendAt.IsZero():
			return nil, errs.Invalid("send_at", "is required")
		case sendAt.Before(now.Add(-l.PastTolerance)):
			return nil, errs.Invalid("send_at", fmt.Sprintf("is more than %s in the past", l.PastTolerance))
		case sendAt.After(now.Add(l.Horizon)):
			return nil, errs.Invalid("send_at", fmt.Sprintf("is more than %s ahead", l.Horizon))
		}
	}
	ids := sel.GetEmailIds()
	switch {
	case len(ids) > 0 && sel.GetFilter() != nil:
		return nil, errs.Invalid("selection", "give email_ids or a filter, not both")
	case len(ids) > maxSelectionIDs:
		return nil, errs.ResourceExhausted("SELECTION", fmt.Sprintf("%d ids; at most %d, or select by filter", len(ids), maxSelectionIDs), 0)
	case len(ids) == 0 && sel.GetFilter() == nil:
		return nil, errs.Invalid("selection", "give email_ids or a filter")
	case len(ids) == 0:
		var err error
		ids, err = s.selectByFilter(ctx, p, sel.GetView(), sel.GetFilter())
		if err != nil {
			return nil, err
		}
	default:
		// An id listed twice is one email: matched and changed once, not refused the second time.
		ids = uniqueIDs(ids)
	}
	res := &outboxv1.ActionResult{Matched: int64(len(ids))}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		err := s.actOne(ctx, p, a, id, now, sendAt)
		if err == nil {
			res.Succeeded++
			continue
		}
		code := errs.ToStatus(err).Code()
		if code == codes.Internal || code == codes.Unavailable {
			return nil, err // the store failed: not a per-email answer
		}
		if len(res.Failures) < maxFailuresListed {
			res.Failures = append(res.Failures, &outboxv1.EmailFailure{EmailId: id, Code: int32(code), Message: errs.ToStatus(err).Message()})
		}
	}
	return res, nil
}

// uniqueIDs returns ids without repeats, in their first order.
func uniqueIDs(ids []string) []string {
	seen := make(map[string]struct{}, len(ids))
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if _, dup := seen[id]; !dup {
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out
}

func (s *Service) selectByFilter(ctx context.Context, p auth.Principal, view outboxv1.View, f *outboxv1.EmailFilter) ([]string, error) {
	q, err := s.resolve(ctx, p, view, f)
	if err != nil {
		return nil, err
	}
	if q.finished {
		return nil, errFinishedAction
	}
	tooMany := errs.ResourceExhausted("SELECTION", fmt.Sprintf("the filter selects more than %d emails; narrow it", s.opts.MaxSelection), 0)
	var ids []string
	if q.post {
		// The filter is applied to the records: read at most MaxSelection of them, as for ids.
		truncated, err := s.eachMatch(ctx, q, s.opts.MaxSelection, func(r *redisstore.Email, _ *outboxv1.Email) { ids = append(ids, r.ID) })
		if err != nil {
			return nil, err
		}
		if truncated {
			return nil, tooMany
		}
		return ids, nil
	}
	cur := redisstore.Cursor{}
	for {
		entries, more, err := s.ledger.Scan(ctx, q.idx, cur, 500)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			ids = append(ids, e.ID)
		}
		if len(ids) > s.opts.MaxSelection {
			return nil, tooMany
		}
		if !more || len(entries) == 0 {
			return ids, nil
		}
		cur = redisstore.Cursor{Score: entries[len(entries)-1].Score, ID: entries[len(entries)-1].ID}
	}
}

// actOne changes one email, reading it again when it changed concurrently (a worker's claim, a
// colleague's action); after three such races it reports the conflict.
func (s *Service) actOne(ctx context.Context, p auth.Principal, a Action, id string, now, sendAt time.Time) error {
	for range 3 {
		e, err := s.read(ctx, p, id)
		if err != nil {
			return err
		}
		c, err := change(a, e, now, sendAt)
		if err != nil {
			return err
		}
		if a == ActionReschedule {
			c.SendAt, c.ScheduledBy = sendAt, principalUser(p)
		}
		prev := e.Status
		err = s.ledger.Apply(ctx, e, c, func(next *redisstore.Email) redisstore.Event {
			if a == ActionCancel {
				return wire.Events{}.Cancelled(next, principalUser(p))
			}
			return wire.Events{}.Changed(prev, next, nil)
		})
		if errors.Is(err, redisstore.ErrChanged) {
			continue
		}
		return err
	}
	return redisstore.ErrChanged
}

// change is the transition an action makes from e's status, or FailedPrecondition.
func change(a Action, e *redisstore.Email, now, sendAt time.Time) (redisstore.Change, error) {
	refuse := func(verb string) (redisstore.Change, error) {
		reason := "WRONG_STATUS"
		msg := fmt.Sprintf("cannot %s an email in status %s", verb, e.Status)
		if e.Status == outbox.StatusSending {
			reason, msg = "BEING_SENT", fmt.Sprintf("cannot %s: a worker is sending the email now", verb)
		}
		return redisstore.Change{}, errs.FailedPrecondition(reason, msg)
	}
	switch a {
	case ActionSendNow:
		if e.Status != outbox.StatusScheduled && e.Status != outbox.StatusQueued {
			return refuse("send now")
		}
		return redisstore.Change{Status: outbox.StatusQueued, Due: now, At: now}, nil
	case ActionCancel:
		switch e.Status {
		case outbox.StatusScheduled, outbox.StatusQueued, outbox.StatusPendingRetry, outbox.StatusConnectorDisabled, outbox.StatusFailed:
			return redisstore.Change{Status: outbox.StatusCancelled, At: now}, nil
		}
		return refuse("cancel")
	case ActionRetry:
		switch e.Status {
		case outbox.StatusFailed, outbox.StatusPendingRetry, outbox.StatusConnectorDisabled:
			return redisstore.Change{Status: outbox.StatusQueued, Due: now, At: now, ResetAttempts: true}, nil
		}
		return refuse("retry")
	case ActionReschedule:
		if e.Status != outbox.StatusScheduled && e.Status != outbox.StatusQueued {
			return refuse("reschedule")
		}
		return redisstore.Change{Status: outbox.StatusScheduled, Due: sendAt, At: now}, nil
	}
	return redisstore.Change{}, fmt.Errorf("unknown action %d", a)
}
