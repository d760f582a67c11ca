package service

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	idrule "github.com/postamt/postamt/internal/ids"
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

// ActOptions are an action's arguments beyond the selection.
type ActOptions struct {
	// SendAt is Reschedule's new send time.
	SendAt time.Time
	// IncludeMayHaveBeenSent lets Retry send mail that may have been sent (RFC 1047 window)
	// again; without it such mail is refused per email, so a bulk retry never sends a second
	// copy nobody asked for.
	IncludeMayHaveBeenSent bool
}

// Act applies an action to the selected emails, each checked against the caller's access and
// its own status; one email's refusal does not stop the others. A selection by filter is read
// first (at most MaxSelection emails) and then changed in batches, so emails the action moves
// within the view are not met twice.
func (s *Service) Act(ctx context.Context, p auth.Principal, a Action, sel *outboxv1.Selection, o ActOptions) (*outboxv1.ActionResult, error) {
	now, sendAt := s.opts.Now(), o.SendAt
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
	ids, err := s.selected(ctx, p, sel)
	if err != nil {
		return nil, err
	}
	return s.each(ctx, ids, func(id string) error { return s.actOne(ctx, p, a, id, now, o) })
}

// selected returns the ids of a selection: the listed ones without repeats, or those a filter
// selects (at most MaxSelection). Every bulk action (Act, Move) selects this way.
func (s *Service) selected(ctx context.Context, p auth.Principal, sel *outboxv1.Selection) ([]string, error) {
	ids := sel.GetEmailIds()
	switch {
	case len(ids) > 0 && sel.GetFilter() != nil:
		return nil, errs.Invalid("selection", "give email_ids or a filter, not both")
	case len(ids) > maxSelectionIDs:
		return nil, errs.ResourceExhausted("SELECTION", fmt.Sprintf("%d ids; at most %d, or select by filter", len(ids), maxSelectionIDs), 0)
	case len(ids) == 0 && sel.GetFilter() == nil:
		return nil, errs.Invalid("selection", "give email_ids or a filter")
	case len(ids) == 0:
		return s.selectByFilter(ctx, p, sel.GetView(), sel.GetFilter())
	}
	var v errs.Violations
	for i, id := range ids {
		idrule.Check(&v, "selection.email_ids["+strconv.Itoa(i)+"]", id)
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	// An id listed twice is one email: matched and changed once, not refused the second time.
	return uniqueIDs(ids), nil
}

// each applies one to every id and collects the result: one email's refusal is listed and the
// others go on; a store failure (Internal, Unavailable) ends the call.
func (s *Service) each(ctx context.Context, ids []string, one func(id string) error) (*outboxv1.ActionResult, error) {
	res := &outboxv1.ActionResult{Matched: int64(len(ids))}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		err := one(id)
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
func (s *Service) actOne(ctx context.Context, p auth.Principal, a Action, id string, now time.Time, o ActOptions) error {
	for range 3 {
		e, err := s.read(ctx, p, id)
		if err != nil {
			return err
		}
		if a == ActionRetry && e.MayHaveBeenSent && !o.IncludeMayHaveBeenSent {
			return errs.FailedPrecondition("MAY_HAVE_BEEN_SENT", "the connection to the relay was lost after the message was handed over (RFC 1047), so the recipients may have it already; "+
				"retrying sends it again with the same Message-ID and they may get it twice: retry with include_may_have_been_sent to do so")
		}
		c, err := change(a, e, now, o.SendAt)
		if err != nil {
			return err
		}
		switch a {
		case ActionReschedule:
			c.SendAt, c.ScheduledBy = o.SendAt, principalUser(p)
		case ActionRetry, ActionSendNow:
			c.TriggeredBy = principalUser(p)
		}
		prev := e.Status
		err = s.ledger.Apply(ctx, e, c, func(next *redisstore.Email) redisstore.Event {
			if a == ActionCancel {
				return wire.Events{}.Cancelled(prev, next, principalUser(p))
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
		// PENDING_RETRY, due now: a retry waits for its attempt like the pattern's retries do,
		// and the outbox shows it as one (seed 003), with the person who asked for it.
		switch e.Status {
		case outbox.StatusFailed, outbox.StatusPendingRetry, outbox.StatusConnectorDisabled:
			return redisstore.Change{Status: outbox.StatusPendingRetry, Due: now, At: now, ResetAttempts: true}, nil
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
