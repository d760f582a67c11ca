package service

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	"github.com/postamt/postamt/internal/paging"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// MaxPageSize bounds every list page: the suite's one bound (internal/paging).
const MaxPageSize = paging.MaxSize

// defaultColumns are the columns a user sees before choosing: those the seed's outbox shows.
var defaultColumns = []outboxv1.Column{
	outboxv1.Column_COLUMN_TO, outboxv1.Column_COLUMN_SUBJECT, outboxv1.Column_COLUMN_CONNECTOR,
	outboxv1.Column_COLUMN_PRIORITY, outboxv1.Column_COLUMN_LAST_ATTEMPT_TIME, outboxv1.Column_COLUMN_LAST_ERROR,
	outboxv1.Column_COLUMN_NEXT_ATTEMPT_TIME, outboxv1.Column_COLUMN_WORK_ITEM, outboxv1.Column_COLUMN_ATTEMPT_COUNT,
	outboxv1.Column_COLUMN_STATUS,
}

// settingsUser resolves whose settings a call means: the caller's (empty), or another user's
// for admins and services; field is the request's path of the user id.
func settingsUser(p auth.Principal, field, user string) (string, error) {
	switch {
	case user == "" && p.User == "":
		return "", errNoUser(field)
	case user == "" || user == p.User:
		return p.User, nil
	case !ids.Valid(user):
		return "", ids.Err(field, user)
	case p.IsAdmin() || p.IsService():
		return user, nil
	}
	return "", errs.PermissionDenied("OTHER_USER", "users read and change only their own settings")
}

// Settings returns a user's settings with the defaults filled in: the service's undo delay, the
// first view (TEAM for a team lead, MINE otherwise), the page size and the default columns.
func (s *Service) Settings(ctx context.Context, p auth.Principal, user string) (*outboxv1.UserSettings, error) {
	user, err := settingsUser(p, "user_id", user)
	if err != nil {
		return nil, err
	}
	us, err := s.settings.Get(ctx, p.Tenant, user)
	if err != nil {
		return nil, err
	}
	if us == nil {
		us = &outboxv1.UserSettings{UserId: user}
	}
	return s.withDefaults(ctx, p.Tenant, us)
}

func (s *Service) withDefaults(ctx context.Context, tenant string, us *outboxv1.UserSettings) (*outboxv1.UserSettings, error) {
	if us.GetUndoDelay() == nil {
		us.UndoDelay = durationpb.New(s.opts.DefaultUndoDelay)
	}
	if us.GetDefaultView() == outboxv1.View_VIEW_UNSPECIFIED {
		lead, err := s.dir.LeadsTeam(ctx, tenant, us.GetUserId())
		if err != nil {
			return nil, fmt.Errorf("first view: %w", err)
		}
		us.DefaultView = outboxv1.View_VIEW_MINE
		if lead {
			us.DefaultView = outboxv1.View_VIEW_TEAM
		}
	}
	if us.GetPageSize() == 0 {
		us.PageSize = int32(s.opts.DefaultPageSize)
	}
	if len(us.GetVisibleColumns()) == 0 {
		us.VisibleColumns = slices.Clone(defaultColumns)
	}
	return us, nil
}

// UpdateSettings changes the fields of a user's settings named in paths (all when empty). To
// and Subject cannot be hidden: a list without them cannot be told apart.
func (s *Service) UpdateSettings(ctx context.Context, p auth.Principal, in *outboxv1.UserSettings, paths []string) (*outboxv1.UserSettings, error) {
	user, err := settingsUser(p, "settings.user_id", in.GetUserId())
	if err != nil {
		return nil, err
	}
	if len(paths) == 0 {
		paths = []string{"undo_delay", "default_view", "page_size", "visible_columns"}
	}
	var v errs.Violations
	for _, f := range paths {
		switch f {
		case "undo_delay":
			d := in.GetUndoDelay()
			if d == nil || d.CheckValid() != nil || d.AsDuration() < 0 || d.AsDuration() > s.opts.MaxUndoDelay {
				v.Addf("settings.undo_delay", "must be between 0s and %s", s.opts.MaxUndoDelay)
			}
		case "default_view":
			if in.GetDefaultView() < outboxv1.View_VIEW_MINE || in.GetDefaultView() > outboxv1.View_VIEW_ALL {
				v.Add("settings.default_view", "must be MINE, TEAM, SYSTEM or ALL")
			}
		case "page_size":
			if in.GetPageSize() < 1 || in.GetPageSize() > MaxPageSize {
				v.Addf("settings.page_size", "must be between 1 and %d", MaxPageSize)
			}
		case "visible_columns":
			cols := in.GetVisibleColumns()
			if n := len(outboxv1.Column_name) - 1; len(cols) > n {
				v.Addf("settings.visible_columns", "must hold at most %d columns", n)
			}
			if !slices.Contains(cols, outboxv1.Column_COLUMN_TO) || !slices.Contains(cols, outboxv1.Column_COLUMN_SUBJECT) {
				v.Add("settings.visible_columns", "To and Subject cannot be hidden")
			}
			for _, c := range cols {
				if c <= outboxv1.Column_COLUMN_UNSPECIFIED || c > outboxv1.Column_COLUMN_ATTACHMENT_COUNT {
					v.Add("settings.visible_columns", "unknown column")
					break
				}
			}
		default:
			v.Addf("update_mask", "unknown field %q", f)
		}
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	for range 3 {
		out, err := s.settings.Update(ctx, p.Tenant, user, func(cur *outboxv1.UserSettings) (*outboxv1.UserSettings, error) {
			next := &outboxv1.UserSettings{UserId: user}
			if cur != nil {
				next.UndoDelay, next.DefaultView, next.PageSize, next.VisibleColumns = cur.GetUndoDelay(), cur.GetDefaultView(), cur.GetPageSize(), cur.GetVisibleColumns()
			}
			for _, f := range paths {
				switch f {
				case "undo_delay":
					next.UndoDelay = in.GetUndoDelay()
				case "default_view":
					next.DefaultView = in.GetDefaultView()
				case "page_size":
					next.PageSize = in.GetPageSize()
				case "visible_columns":
					next.VisibleColumns = nil
					for _, c := range in.GetVisibleColumns() {
						if !slices.Contains(next.VisibleColumns, c) {
							next.VisibleColumns = append(next.VisibleColumns, c)
						}
					}
				}
			}
			return next, nil
		})
		if errors.Is(err, redisstore.ErrChanged) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return s.withDefaults(ctx, p.Tenant, out)
	}
	return nil, redisstore.ErrChanged
}
