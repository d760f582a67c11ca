package calendar

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/postamt/postamt/internal/errs"
)

// backfillPage is how many entries a catch-up reads per round.
const backfillPage = 512

// currentFrom is where "current and future" entries begin: those that start at most a day
// before now (an all-day deadline of today, an appointment under way), and the series that
// still recur after it.
func currentFrom(now time.Time) int64 { return now.Add(-24 * time.Hour).UnixMilli() }

// Reconcile brings a user's queue in line with where their entries go now: when Decide's
// target is not the one their entries were last queued for (the usernames now match, the
// tenant switched live sync on, the mode changed), their current and future entries are queued
// for the new target. Mailbox's user events call it; every decision calls it too (see decide),
// so a missed event is caught up when the user next connects, books or reads their status. An
// unknown user is nothing to do.
func (s *Service) Reconcile(ctx context.Context, tenant, userID string) error {
	u, err := s.user(ctx, tenant, userID)
	if errors.Is(err, errs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	_, _, err = s.decide(ctx, tenant, u)
	return err
}

// reconcileTenant reconciles every user of the tenant (the tenant's live sync switch changed).
func (s *Service) reconcileTenant(ctx context.Context, tenant string) error {
	users, err := s.dir.Users(ctx, tenant)
	if err != nil {
		return err
	}
	for _, u := range users {
		if _, _, err := s.decide(ctx, tenant, u); err != nil {
			return fmt.Errorf("reconcile user %s: %w", u.ID, err)
		}
	}
	return nil
}

// catchUp queues the user's current and future entries for d.Target when their entries were
// last queued for another target (or none), then remembers d.Target. It queues before it
// remembers, so an interrupted catch-up is done again, and queueing is idempotent per revision.
func (s *Service) catchUp(ctx context.Context, tenant, user string, d Decision, us UserSettings) (UserSettings, error) {
	if d.Target != TargetNone {
		detail := "synchronisation now applies (" + string(d.Target) + "); catching up"
		if _, err := s.eachCurrent(ctx, tenant, user, func(e *Entry) error {
			_, err := s.store.Enqueue(ctx, tenant, e, d.Target, us.LogOn(), s.now(), detail)
			return err
		}); err != nil {
			return us, err
		}
		s.hub.Notify(tenant, user)
	}
	out, err := s.store.UpdateUserSettings(ctx, tenant, user, func(u *UserSettings) error {
		u.QueuedFor = d.Target
		return nil
	})
	if err != nil {
		return us, fmt.Errorf("remember the target of %s: %w", user, err)
	}
	return out, nil
}

// heldBack counts the user's current and future entries that are not cancelled: what waits
// for synchronisation to apply.
func (s *Service) heldBack(ctx context.Context, tenant, user string) (int64, error) {
	var n int64
	_, err := s.eachCurrent(ctx, tenant, user, func(e *Entry) error {
		if !e.Cancelled {
			n++
		}
		return nil
	})
	return n, err
}

// eachCurrent calls fn for each of the owner's current and future entries (see currentFrom),
// in start order, and returns how many there were.
func (s *Service) eachCurrent(ctx context.Context, tenant, owner string, fn func(*Entry) error) (int, error) {
	from, to := currentFrom(s.now()), int64(1<<62)
	afterScore, afterID := int64(math.MinInt64), ""
	n := 0
	for {
		batch, err := s.store.ListEntries(ctx, tenant, owner, from, to, afterScore, afterID, backfillPage)
		if err != nil {
			return n, err
		}
		for i := range batch {
			e := &batch[i]
			afterScore, afterID = e.Score(), e.ID
			if err := fn(e); err != nil {
				return n, err
			}
			n++
		}
		if len(batch) < backfillPage {
			return n, nil
		}
	}
}
