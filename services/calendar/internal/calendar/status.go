package calendar

import (
	"context"
	"regexp"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/paging"
)

// GetSyncStatus returns a user's synchronisation status. Users to whom synchronisation does not
// apply get their applicability (why nothing is delivered) and, as pending, how many of their
// current and future entries wait for it to apply; no other counts, no notice, no warning.
func (s *Service) GetSyncStatus(ctx context.Context, p auth.Principal, userID string) (SyncStatus, error) {
	id, err := selfOrAdmin(p, "user_id", userID)
	if err != nil {
		return SyncStatus{}, err
	}
	u, err := s.user(ctx, p.Tenant, id)
	if err != nil {
		return SyncStatus{}, err
	}
	d, us, err := s.decide(ctx, p.Tenant, u)
	if err != nil {
		return SyncStatus{}, err
	}
	st := SyncStatus{UserID: id, Applicability: d.Applicability, Mode: d.Mode}
	if d.Applicability != Applicable {
		if st.Stats.Pending, err = s.heldBack(ctx, p.Tenant, id); err != nil {
			return SyncStatus{}, err
		}
		return st, nil
	}
	if st.Stats, err = s.store.QueueStats(ctx, p.Tenant, id); err != nil {
		return SyncStatus{}, err
	}
	if st.Agent, err = s.store.Presence(ctx, p.Tenant, id); err != nil {
		return SyncStatus{}, err
	}
	st.Online = st.Agent != nil && st.Agent.Session != "" && s.now().Sub(st.Agent.LastSeen) < 3*s.opts.Heartbeat
	st.NoticePending = d.Target == TargetAgent && us.NoticeAcked.IsZero()
	if d.Target == TargetAgent && st.Agent == nil && st.Stats.Pending > 0 {
		st.Warnings = append(st.Warnings, WarnAgentNeverConnected)
	}
	if st.Stats.Dead > 0 {
		st.Warnings = append(st.Warnings, WarnDeliveriesDead)
	}
	if st.Stats.Conflicts > 0 {
		st.Warnings = append(st.Warnings, WarnCalDAVConflict)
	}
	if d.Target == TargetCalDAV && !us.CalDAV.Complete() {
		st.Warnings = append(st.Warnings, WarnCalDAVTargetMissing)
	}
	return st, nil
}

// AcknowledgeNotice clears the caller's one-time notice, for good.
func (s *Service) AcknowledgeNotice(ctx context.Context, p auth.Principal) (SyncStatus, error) {
	if p.User == "" {
		return SyncStatus{}, errs.PermissionDenied(ReasonUserRequired, "only a user acknowledges their notice")
	}
	now := s.now()
	if _, err := s.store.UpdateUserSettings(ctx, p.Tenant, p.User, func(u *UserSettings) error {
		if u.NoticeAcked.IsZero() {
			u.NoticeAcked = now
		}
		return nil
	}); err != nil {
		return SyncStatus{}, err
	}
	return s.GetSyncStatus(ctx, p, p.User)
}

var logIDPattern = regexp.MustCompile(`^[0-9]{1,20}-[0-9]{1,20}$`)

// ListSyncLog pages through a user's sync log, newest first, within the retention.
func (s *Service) ListSyncLog(ctx context.Context, p auth.Principal, userID string, size int, token string) ([]LogLine, string, error) {
	id, err := selfOrAdmin(p, "user_id", userID)
	if err != nil {
		return nil, "", err
	}
	// The list of one user's log (paging.Scope): a token continues that user's log only.
	list := paging.Scope("sync-log", id)
	size, after, err := paging.Request(list, size, token, 0)
	if err != nil {
		return nil, "", err
	}
	if after != "" && !logIDPattern.MatchString(after) {
		return nil, "", errs.Invalid(paging.TokenField, paging.NotIssued)
	}
	// An unknown user is NotFound, as for GetSyncStatus and ListEntries, not an empty log.
	if _, err := s.user(ctx, p.Tenant, id); err != nil {
		return nil, "", err
	}
	lines, err := s.store.SyncLog(ctx, p.Tenant, id, after, s.now().Add(-s.opts.LogRetention), size)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(lines) == size {
		next = paging.Token(list, lines[len(lines)-1].ID)
	}
	return lines, next, nil
}
