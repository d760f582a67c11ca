package mailbox

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	"github.com/postamt/postamt/internal/mailaddr"
	"github.com/postamt/postamt/internal/paging"
)

// Roles the service checks. Admins manage their tenant; operators manage tenants.
const (
	RoleAdmin    = "admin"
	RoleOperator = "operator"
)

// Reasons of PermissionDenied errors, stable for clients.
const (
	ReasonAdminRequired    = "ADMIN_REQUIRED"
	ReasonOperatorRequired = "OPERATOR_REQUIRED"
	ReasonSelfOrAdmin      = "SELF_OR_ADMIN_REQUIRED"
	ReasonCannotSendFrom   = "CANNOT_SEND_FROM_MAILBOX"
	// ReasonAllUsersMembership refuses to remove a membership that comes from the mailbox being
	// all-users, not from an explicit grant: turn all_users off instead.
	ReasonAllUsersMembership = "ALL_USERS_MEMBERSHIP"
)

// Service applies the mailbox rules on top of a Store. It is safe for concurrent use.
type Service struct {
	store Store
	now   func() time.Time
}

// Options tune a Service; the zero value is ready for production.
type Options struct {
	// Now is the clock; nil means time.Now. Tests inject one to get stable timestamps.
	Now func() time.Time
}

// New returns a Service over store.
func New(store Store, opts Options) *Service {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &Service{store: store, now: func() time.Time { return now().UTC().Truncate(time.Millisecond) }}
}

// newID makes a 20-character lower-case id from 96 random bits, for entities created without one.
func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms.
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

func requireAdmin(p auth.Principal) error {
	if p.IsAdmin() || p.IsService() {
		return nil
	}
	return errs.PermissionDenied(ReasonAdminRequired, "this call needs the admin role")
}

func requireOperator(p auth.Principal) error {
	if p.HasRole(RoleOperator) {
		return nil
	}
	return errs.PermissionDenied(ReasonOperatorRequired, "this call needs the operator role")
}

// selfOrAdmin resolves an optional user id to the caller and checks that a non-admin asks only
// about themself.
func selfOrAdmin(p auth.Principal, userID string) (string, error) {
	if userID == "" {
		userID = p.User
	}
	if userID == "" {
		return "", errs.Invalid("user_id", "is required for service callers")
	}
	if err := ids.Err("user_id", userID); err != nil {
		return "", err
	}
	if userID != p.User && !p.IsAdmin() && !p.IsService() {
		return "", errs.PermissionDenied(ReasonSelfOrAdmin, "users may only act for themselves")
	}
	return userID, nil
}

// pageArgs applies the suite's paging rule (internal/paging) to a request of list: the page
// size to read and the keyset cursor to read after.
func pageArgs(list string, pr PageRequest) (size int, after string, err error) {
	return paging.Request(list, pr.Size, pr.Token, 0)
}

// page cuts one extra item off a list fetched with limit size+1 and returns the next token.
func page[T any](list string, items []T, size int, key func(*T) string) ([]T, string) {
	if len(items) <= size {
		return items, ""
	}
	items = items[:size]
	return items, paging.Token(list, key(&items[size-1]))
}

// ---- tenants ----

// CreateTenant creates a tenant; operators only.
func (s *Service) CreateTenant(ctx context.Context, p auth.Principal, t Tenant) (*Tenant, error) {
	if err := requireOperator(p); err != nil {
		return nil, err
	}
	var v errs.Violations
	checkTenantID(&v, "tenant.tenant_id", t.ID)
	checkText(&v, "tenant.display_name", t.DisplayName, false, maxNameLen)
	if t.DefaultSharedQuota < 0 {
		v.Add("tenant.default_shared_quota_bytes", "must not be negative")
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now()
	t.Version, t.Created, t.Updated = 1, now, now
	if err := s.store.CreateTenant(ctx, &t); err != nil {
		return nil, fmt.Errorf("create tenant: %w", err)
	}
	return &t, nil
}

// GetTenant returns the caller's tenant, or any tenant for an operator.
func (s *Service) GetTenant(ctx context.Context, p auth.Principal, id string) (*Tenant, error) {
	if id != "" {
		if err := tenantIDErr("tenant_id", id); err != nil {
			return nil, err
		}
	}
	if id == "" {
		id = p.Tenant
	}
	if id != p.Tenant && !p.HasRole(RoleOperator) {
		return nil, errs.NotFound("tenant", id)
	}
	return s.store.GetTenant(ctx, id)
}

// ListTenants pages through every tenant; operators only.
func (s *Service) ListTenants(ctx context.Context, p auth.Principal, pr PageRequest) ([]Tenant, string, error) {
	if err := requireOperator(p); err != nil {
		return nil, "", err
	}
	size, after, err := pageArgs("tenants", pr)
	if err != nil {
		return nil, "", err
	}
	ts, err := s.store.ListTenants(ctx, after, size+1)
	if err != nil {
		return nil, "", fmt.Errorf("list tenants: %w", err)
	}
	ts, next := page("tenants", ts, size, func(t *Tenant) string { return t.ID })
	return ts, next, nil
}

// UpdateTenant changes the fields in mask (all when empty); admins of the tenant and operators.
func (s *Service) UpdateTenant(ctx context.Context, p auth.Principal, in Tenant, mask []string) (*Tenant, error) {
	if in.ID == "" {
		in.ID = p.Tenant
	}
	if in.ID != p.Tenant && !p.HasRole(RoleOperator) {
		return nil, errs.NotFound("tenant", in.ID)
	}
	if err := requireAdmin(p); err != nil && !p.HasRole(RoleOperator) {
		return nil, err
	}
	fields, err := maskFields("update_mask", mask, "display_name", "default_shared_quota_bytes")
	if err != nil {
		return nil, err
	}
	var v errs.Violations
	if fields["display_name"] {
		checkText(&v, "tenant.display_name", in.DisplayName, false, maxNameLen)
	}
	if fields["default_shared_quota_bytes"] && in.DefaultSharedQuota < 0 {
		v.Add("tenant.default_shared_quota_bytes", "must not be negative")
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now()
	return s.store.UpdateTenant(ctx, in.ID, func(t *Tenant) error {
		if fields["display_name"] {
			t.DisplayName = in.DisplayName
		}
		if fields["default_shared_quota_bytes"] {
			t.DefaultSharedQuota = in.DefaultSharedQuota
		}
		t.Version++
		t.Updated = now
		return nil
	})
}

// DeleteTenant deletes an empty tenant; operators only.
func (s *Service) DeleteTenant(ctx context.Context, p auth.Principal, id string) error {
	if id != "" {
		if err := tenantIDErr("tenant_id", id); err != nil {
			return err
		}
	}
	if err := requireOperator(p); err != nil {
		return err
	}
	if err := s.store.DeleteTenant(ctx, id); err != nil {
		return fmt.Errorf("delete tenant: %w", err)
	}
	return nil
}

// maskFields turns an update mask into a set, checking each path; an empty mask means all.
func maskFields(field string, mask []string, allowed ...string) (map[string]bool, error) {
	out := make(map[string]bool, len(allowed))
	if len(mask) == 0 {
		for _, a := range allowed {
			out[a] = true
		}
		return out, nil
	}
	var v errs.Violations
	for _, m := range mask {
		if !slices.Contains(allowed, m) {
			v.Addf(field, "%q is not a field that can be changed; allowed: %s", m, strings.Join(allowed, ", "))
			continue
		}
		out[m] = true
	}
	return out, v.Err()
}

// ---- users ----

func checkUser(v *errs.Violations, u *User, fields map[string]bool) {
	if fields["display_name"] {
		checkText(v, "user.display_name", u.DisplayName, true, maxNameLen)
	}
	if fields["email"] {
		checkAddress(v, "user.email", u.Email)
	}
	if fields["directory_username"] {
		checkText(v, "user.directory_username", u.DirectoryUsername, false, maxUsernameLen)
	}
	if fields["practice_username"] {
		checkText(v, "user.practice_username", u.PracticeUsername, false, maxUsernameLen)
	}
	if fields["roles"] {
		checkRoles(v, "user.roles", u.Roles)
	}
}

var userFields = []string{"display_name", "email", "directory_username", "practice_username", "roles"}

// CreateUser adds a user to the caller's tenant; admins only.
func (s *Service) CreateUser(ctx context.Context, p auth.Principal, u User) (*User, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	if u.ID == "" {
		u.ID = newID()
	}
	u.Email = normalizeAddress(u.Email)
	u.Roles = sortedUnique(u.Roles)
	var v errs.Violations
	checkID(&v, "user.user_id", u.ID)
	all, _ := maskFields("", nil, userFields...)
	checkUser(&v, &u, all)
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now()
	u.DefaultSender, u.Personal = "", ""
	u.Version, u.Created, u.Updated = 1, now, now
	if err := s.store.CreateUser(ctx, p.Tenant, &u); err != nil {
		return nil, fmt.Errorf("create user: %w", err)
	}
	return &u, nil
}

// GetUser returns a user of the caller's tenant.
func (s *Service) GetUser(ctx context.Context, p auth.Principal, id string) (*User, error) {
	if err := ids.Err("user_id", id); err != nil {
		return nil, err
	}
	return s.store.GetUser(ctx, p.Tenant, id)
}

// ListUsers pages through the caller's tenant's users.
func (s *Service) ListUsers(ctx context.Context, p auth.Principal, pr PageRequest) ([]User, string, error) {
	size, after, err := pageArgs("users", pr)
	if err != nil {
		return nil, "", err
	}
	us, err := s.store.ListUsers(ctx, p.Tenant, after, size+1)
	if err != nil {
		return nil, "", fmt.Errorf("list users: %w", err)
	}
	us, next := page("users", us, size, func(u *User) string { return u.ID })
	return us, next, nil
}

// UpdateUser changes the fields in mask (all mutable ones when empty); admins only.
func (s *Service) UpdateUser(ctx context.Context, p auth.Principal, in User, mask []string) (*User, error) {
	if err := ids.Err("user.user_id", in.ID); err != nil {
		return nil, err
	}
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	fields, err := maskFields("update_mask", mask, userFields...)
	if err != nil {
		return nil, err
	}
	in.Email = normalizeAddress(in.Email)
	in.Roles = sortedUnique(in.Roles)
	var v errs.Violations
	checkUser(&v, &in, fields)
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now()
	return s.store.UpdateUser(ctx, p.Tenant, in.ID, func(u *User) error {
		if fields["display_name"] {
			u.DisplayName = in.DisplayName
		}
		if fields["email"] {
			u.Email = in.Email
		}
		if fields["directory_username"] {
			u.DirectoryUsername = in.DirectoryUsername
		}
		if fields["practice_username"] {
			u.PracticeUsername = in.PracticeUsername
		}
		if fields["roles"] {
			u.Roles = in.Roles
		}
		u.Version++
		u.Updated = now
		return nil
	})
}

// DeleteUser removes a user with their memberships; admins only.
func (s *Service) DeleteUser(ctx context.Context, p auth.Principal, id string) error {
	if err := ids.Err("user_id", id); err != nil {
		return err
	}
	if err := requireAdmin(p); err != nil {
		return err
	}
	return s.store.DeleteUser(ctx, p.Tenant, id, s.now())
}

// ---- teams ----

var teamFields = []string{"display_name", "member_user_ids", "lead_user_ids"}

func checkTeam(v *errs.Violations, t *Team, fields map[string]bool) {
	if fields["display_name"] {
		checkText(v, "team.display_name", t.DisplayName, true, maxNameLen)
	}
	if fields["member_user_ids"] {
		checkUserList(v, "team.member_user_ids", t.Members)
	}
	if fields["lead_user_ids"] {
		checkUserList(v, "team.lead_user_ids", t.Leads)
	}
}

// CreateTeam adds a team; admins only.
func (s *Service) CreateTeam(ctx context.Context, p auth.Principal, t Team) (*Team, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	if t.ID == "" {
		t.ID = newID()
	}
	var v errs.Violations
	checkID(&v, "team.team_id", t.ID)
	all, _ := maskFields("", nil, teamFields...)
	checkTeam(&v, &t, all)
	if err := v.Err(); err != nil {
		return nil, err
	}
	t.Members, t.Leads = sortedUnique(t.Members), sortedUnique(t.Leads)
	now := s.now()
	t.Version, t.Created, t.Updated = 1, now, now
	if err := s.store.CreateTeam(ctx, p.Tenant, &t); err != nil {
		return nil, fmt.Errorf("create team: %w", err)
	}
	return &t, nil
}

// GetTeam returns a team of the caller's tenant.
func (s *Service) GetTeam(ctx context.Context, p auth.Principal, id string) (*Team, error) {
	if err := ids.Err("team_id", id); err != nil {
		return nil, err
	}
	return s.store.GetTeam(ctx, p.Tenant, id)
}

// ListTeams pages through the caller's tenant's teams.
func (s *Service) ListTeams(ctx context.Context, p auth.Principal, pr PageRequest) ([]Team, string, error) {
	size, after, err := pageArgs("teams", pr)
	if err != nil {
		return nil, "", err
	}
	ts, err := s.store.ListTeams(ctx, p.Tenant, after, size+1)
	if err != nil {
		return nil, "", fmt.Errorf("list teams: %w", err)
	}
	ts, next := page("teams", ts, size, func(t *Team) string { return t.ID })
	return ts, next, nil
}

// UpdateTeam changes the fields in mask (all mutable ones when empty); admins only.
func (s *Service) UpdateTeam(ctx context.Context, p auth.Principal, in Team, mask []string) (*Team, error) {
	if err := ids.Err("team.team_id", in.ID); err != nil {
		return nil, err
	}
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	fields, err := maskFields("update_mask", mask, teamFields...)
	if err != nil {
		return nil, err
	}
	var v errs.Violations
	checkTeam(&v, &in, fields)
	if err := v.Err(); err != nil {
		return nil, err
	}
	now := s.now()
	return s.store.UpdateTeam(ctx, p.Tenant, in.ID, func(t *Team) error {
		if fields["display_name"] {
			t.DisplayName = in.DisplayName
		}
		if fields["member_user_ids"] {
			t.Members = sortedUnique(in.Members)
		}
		if fields["lead_user_ids"] {
			t.Leads = sortedUnique(in.Leads)
		}
		t.Version++
		t.Updated = now
		return nil
	})
}

// DeleteTeam removes a team; admins only.
func (s *Service) DeleteTeam(ctx context.Context, p auth.Principal, id string) error {
	if err := ids.Err("team_id", id); err != nil {
		return err
	}
	if err := requireAdmin(p); err != nil {
		return err
	}
	return s.store.DeleteTeam(ctx, p.Tenant, id, s.now())
}

// ---- mailboxes ----

var mailboxFields = []string{"address", "display_name", "all_users", "all_users_rights", "sync_kind", "quota_bytes"}

func checkMailbox(v *errs.Violations, m *Mailbox, fields map[string]bool) {
	if fields["address"] {
		checkAddress(v, "mailbox.address", m.Address)
	}
	if fields["display_name"] {
		checkText(v, "mailbox.display_name", m.DisplayName, false, maxNameLen)
	}
	if fields["all_users_rights"] {
		checkRights(v, "mailbox.all_users_rights", m.AllUsersRights, false)
	}
	if fields["sync_kind"] && (m.Sync < SyncNone || m.Sync > SyncIMAP) {
		v.Add("mailbox.sync_kind", "is not a known sync kind")
	}
	if fields["quota_bytes"] && m.QuotaBytes < 0 {
		v.Add("mailbox.quota_bytes", "must not be negative")
	}
}

// CreateMailbox adds a personal or shared mailbox; admins only. A shared mailbox without a quota
// gets the tenant's default (50 GB unless the tenant says otherwise).
func (s *Service) CreateMailbox(ctx context.Context, p auth.Principal, m Mailbox) (*Mailbox, error) {
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	if m.ID == "" {
		m.ID = newID()
	}
	m.Address = normalizeAddress(m.Address)
	if m.Sync == 0 {
		m.Sync = SyncNone
	}
	if m.AllUsers && m.AllUsersRights == 0 {
		m.AllUsersRights = DefaultAllUsersRights
	}
	var v errs.Violations
	checkID(&v, "mailbox.mailbox_id", m.ID)
	all, _ := maskFields("", nil, mailboxFields...)
	checkMailbox(&v, &m, all)
	switch m.Kind {
	case KindPersonal:
		checkID(&v, "mailbox.owner_user_id", m.Owner)
		if m.AllUsers {
			v.Add("mailbox.all_users", "only a shared mailbox can be all-users")
		}
	case KindShared:
		if m.Owner != "" {
			v.Add("mailbox.owner_user_id", "a shared mailbox has no owner")
		}
	default:
		v.Add("mailbox.kind", "must be PERSONAL or SHARED")
	}
	if err := v.Err(); err != nil {
		return nil, err
	}
	if m.Kind == KindShared && m.QuotaBytes == 0 {
		t, err := s.store.GetTenant(ctx, p.Tenant)
		if err != nil {
			return nil, fmt.Errorf("create mailbox: %w", err)
		}
		m.QuotaBytes = DefaultSharedQuota
		if t.DefaultSharedQuota > 0 {
			m.QuotaBytes = t.DefaultSharedQuota
		}
	}
	now := s.now()
	m.UsageBytes = 0
	m.Version, m.Created, m.Updated = 1, now, now
	if err := s.store.CreateMailbox(ctx, p.Tenant, &m); err != nil {
		return nil, fmt.Errorf("create mailbox: %w", err)
	}
	return &m, nil
}

// GetMailbox returns a mailbox: admins and services see all, users only those they see.
func (s *Service) GetMailbox(ctx context.Context, p auth.Principal, id string) (*Mailbox, error) {
	if err := ids.Err("mailbox_id", id); err != nil {
		return nil, err
	}
	m, err := s.store.GetMailbox(ctx, p.Tenant, id)
	if err != nil {
		return nil, err
	}
	if p.IsAdmin() || p.IsService() {
		return m, nil
	}
	explicit, err := s.store.Memberships(ctx, p.Tenant, p.User)
	if err != nil {
		return nil, fmt.Errorf("get mailbox: %w", err)
	}
	if r, _ := m.RightsOf(p.User, explicit[m.ID]); r == 0 {
		return nil, errs.NotFound("mailbox", id)
	}
	return m, nil
}

// ListMailboxes pages through the tenant's mailboxes; admins only.
func (s *Service) ListMailboxes(ctx context.Context, p auth.Principal, pr PageRequest) ([]Mailbox, string, error) {
	if err := requireAdmin(p); err != nil {
		return nil, "", err
	}
	size, after, err := pageArgs("mailboxes", pr)
	if err != nil {
		return nil, "", err
	}
	ms, err := s.store.ListMailboxes(ctx, p.Tenant, after, size+1)
	if err != nil {
		return nil, "", fmt.Errorf("list mailboxes: %w", err)
	}
	ms, next := page("mailboxes", ms, size, func(m *Mailbox) string { return m.ID })
	return ms, next, nil
}

// UpdateMailbox changes the fields in mask (all mutable ones when empty); admins only.
func (s *Service) UpdateMailbox(ctx context.Context, p auth.Principal, in Mailbox, mask []string) (*Mailbox, error) {
	if err := ids.Err("mailbox.mailbox_id", in.ID); err != nil {
		return nil, err
	}
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	fields, err := maskFields("update_mask", mask, mailboxFields...)
	if err != nil {
		return nil, err
	}
	in.Address = normalizeAddress(in.Address)
	if in.Sync == 0 {
		in.Sync = SyncNone
	}
	var v errs.Violations
	checkMailbox(&v, &in, fields)
	if err := v.Err(); err != nil {
		return nil, err
	}
	// quota_bytes 0 means the default, as on create: never "no quota", which would lift a shared
	// mailbox's licence check silently.
	defaultQuota := DefaultSharedQuota
	if fields["quota_bytes"] && in.QuotaBytes == 0 {
		t, err := s.store.GetTenant(ctx, p.Tenant)
		if err != nil {
			return nil, fmt.Errorf("update mailbox: %w", err)
		}
		if t.DefaultSharedQuota > 0 {
			defaultQuota = t.DefaultSharedQuota
		}
	}
	now := s.now()
	return s.store.UpdateMailbox(ctx, p.Tenant, in.ID, func(m *Mailbox) error {
		if fields["all_users"] && in.AllUsers && m.Kind != KindShared {
			return errs.Invalid("mailbox.all_users", "only a shared mailbox can be all-users")
		}
		if fields["address"] {
			m.Address = in.Address
		}
		if fields["display_name"] {
			m.DisplayName = in.DisplayName
		}
		if fields["all_users"] {
			m.AllUsers = in.AllUsers
		}
		if fields["all_users_rights"] {
			m.AllUsersRights = in.AllUsersRights
		}
		if m.AllUsers && m.AllUsersRights == 0 {
			m.AllUsersRights = DefaultAllUsersRights
		}
		if fields["sync_kind"] {
			m.Sync = in.Sync
		}
		if fields["quota_bytes"] {
			m.QuotaBytes = in.QuotaBytes
			if m.QuotaBytes == 0 && m.Kind == KindShared {
				m.QuotaBytes = defaultQuota
			}
		}
		m.Version++
		m.Updated = now
		return nil
	})
}

// DeleteMailbox removes a mailbox with its memberships; admins only.
func (s *Service) DeleteMailbox(ctx context.Context, p auth.Principal, id string) error {
	if err := ids.Err("mailbox_id", id); err != nil {
		return err
	}
	if err := requireAdmin(p); err != nil {
		return err
	}
	return s.store.DeleteMailbox(ctx, p.Tenant, id, s.now())
}

// SetMailboxUsage records storage usage; admins and services.
func (s *Service) SetMailboxUsage(ctx context.Context, p auth.Principal, id string, usage int64) (*Mailbox, error) {
	if err := ids.Err("mailbox_id", id); err != nil {
		return nil, err
	}
	if err := requireAdmin(p); err != nil {
		return nil, err
	}
	if usage < 0 {
		return nil, errs.Invalid("usage_bytes", "must not be negative")
	}
	now := s.now()
	return s.store.UpdateMailbox(ctx, p.Tenant, id, func(m *Mailbox) error {
		m.UsageBytes = usage
		m.Version++
		m.Updated = now
		return nil
	})
}

// ---- members ----

// AddMember grants a user rights on a mailbox; admins only.
func (s *Service) AddMember(ctx context.Context, p auth.Principal, mailboxID, userID string, r Rights) (*Member, error) {
	if err := s.checkMemberArgs(p, mailboxID, userID, r); err != nil {
		return nil, err
	}
	if err := s.store.AddMember(ctx, p.Tenant, mailboxID, userID, r, s.now()); err != nil {
		return nil, fmt.Errorf("add member: %w", err)
	}
	return &Member{MailboxID: mailboxID, UserID: userID, Rights: r, Source: SourceExplicit}, nil
}

// UpdateMember replaces an explicit member's rights; admins only.
func (s *Service) UpdateMember(ctx context.Context, p auth.Principal, mailboxID, userID string, r Rights) (*Member, error) {
	if err := s.checkMemberArgs(p, mailboxID, userID, r); err != nil {
		return nil, err
	}
	if err := s.store.UpdateMember(ctx, p.Tenant, mailboxID, userID, r, s.now()); err != nil {
		return nil, fmt.Errorf("update member: %w", err)
	}
	return &Member{MailboxID: mailboxID, UserID: userID, Rights: r, Source: SourceExplicit}, nil
}

func (s *Service) checkMemberArgs(p auth.Principal, mailboxID, userID string, r Rights) error {
	if err := requireAdmin(p); err != nil {
		return err
	}
	var v errs.Violations
	checkID(&v, "mailbox_id", mailboxID)
	checkID(&v, "user_id", userID)
	checkRights(&v, "rights", r, true)
	return v.Err()
}

// RemoveMember takes a user's explicit membership away; admins only. A member only through
// all-users is FAILED_PRECONDITION ReasonAllUsersMembership (the store decides, in its
// transaction).
func (s *Service) RemoveMember(ctx context.Context, p auth.Principal, mailboxID, userID string) error {
	if err := requireAdmin(p); err != nil {
		return err
	}
	var v errs.Violations
	checkID(&v, "mailbox_id", mailboxID)
	checkID(&v, "user_id", userID)
	if err := v.Err(); err != nil {
		return err
	}
	return s.store.RemoveMember(ctx, p.Tenant, mailboxID, userID, s.now())
}

// ListMembers pages through a mailbox's members by user id: the owner, explicit members and, for
// an all-users mailbox, every user of the tenant.
func (s *Service) ListMembers(ctx context.Context, p auth.Principal, mailboxID string, pr PageRequest) ([]Member, string, error) {
	if err := ids.Err("mailbox_id", mailboxID); err != nil {
		return nil, "", err
	}
	size, after, err := pageArgs(paging.Scope("members", mailboxID), pr)
	if err != nil {
		return nil, "", err
	}
	m, err := s.GetMailbox(ctx, p, mailboxID)
	if err != nil {
		return nil, "", err
	}
	explicit, err := s.store.Members(ctx, p.Tenant, mailboxID)
	if err != nil {
		return nil, "", fmt.Errorf("list members: %w", err)
	}
	var out []Member
	if m.AllUsers {
		users, err := s.store.ListUsers(ctx, p.Tenant, after, size+1)
		if err != nil {
			return nil, "", fmt.Errorf("list members: %w", err)
		}
		for _, u := range users {
			r, src := m.RightsOf(u.ID, explicit[u.ID])
			out = append(out, Member{MailboxID: m.ID, UserID: u.ID, Rights: r, Source: src})
		}
	} else {
		ids := make([]string, 0, len(explicit)+1)
		for id := range explicit {
			ids = append(ids, id)
		}
		if m.Kind == KindPersonal {
			ids = append(ids, m.Owner)
		}
		ids = sortedUnique(ids)
		for _, id := range ids {
			if id <= after {
				continue
			}
			r, src := m.RightsOf(id, explicit[id])
			out = append(out, Member{MailboxID: m.ID, UserID: id, Rights: r, Source: src})
			if len(out) > size {
				break
			}
		}
	}
	out, next := page(paging.Scope("members", mailboxID), out, size, func(m *Member) string { return m.UserID })
	return out, next, nil
}

// ListVisibleMailboxes lists the mailboxes a user sees (automapping), ordered by address.
func (s *Service) ListVisibleMailboxes(ctx context.Context, p auth.Principal, userID string) ([]VisibleMailbox, error) {
	userID, err := selfOrAdmin(p, userID)
	if err != nil {
		return nil, err
	}
	u, err := s.store.GetUser(ctx, p.Tenant, userID)
	if err != nil {
		return nil, err
	}
	ms, explicit, err := s.visible(ctx, p.Tenant, u)
	if err != nil {
		return nil, fmt.Errorf("list visible mailboxes: %w", err)
	}
	out := make([]VisibleMailbox, 0, len(ms))
	for _, m := range ms {
		r, src := m.RightsOf(u.ID, explicit[m.ID])
		out = append(out, VisibleMailbox{Mailbox: m, Rights: r, Source: src})
	}
	slices.SortFunc(out, func(a, b VisibleMailbox) int { return strings.Compare(a.Mailbox.Address, b.Mailbox.Address) })
	return out, nil
}

// ReadAccess is what a user may read of the suite's mail (GetReadAccess): the input of
// access.Reader in the services that show mail.
type ReadAccess struct {
	Known     bool
	Readable  []string // mailboxes whose mail the user may read
	Teams     []string // member or lead
	LeadTeams []string
}

// GetReadAccess answers what a user may read: their personal mailbox and every mailbox where
// they hold RightRead (explicitly or from all-users) — a send right alone reads nothing of what
// others sent — and their teams. A user the directory does not know has none of it.
func (s *Service) GetReadAccess(ctx context.Context, p auth.Principal, userID string) (*ReadAccess, error) {
	userID, err := selfOrAdmin(p, userID)
	if err != nil {
		return nil, err
	}
	u, err := s.store.GetUser(ctx, p.Tenant, userID)
	if errors.Is(err, errs.ErrNotFound) {
		return &ReadAccess{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := &ReadAccess{Known: true}
	ms, explicit, err := s.visible(ctx, p.Tenant, u)
	if err != nil {
		return nil, fmt.Errorf("read access: %w", err)
	}
	for i := range ms {
		if r, _ := ms[i].RightsOf(u.ID, explicit[ms[i].ID]); r&RightRead != 0 {
			out.Readable = append(out.Readable, ms[i].ID)
		}
	}
	slices.Sort(out.Readable)
	for after := ""; ; {
		ts, err := s.store.ListTeams(ctx, p.Tenant, after, 500)
		if err != nil {
			return nil, fmt.Errorf("read access: %w", err)
		}
		for _, t := range ts {
			lead := slices.Contains(t.Leads, u.ID)
			if lead || slices.Contains(t.Members, u.ID) {
				out.Teams = append(out.Teams, t.ID)
			}
			if lead {
				out.LeadTeams = append(out.LeadTeams, t.ID)
			}
		}
		if len(ts) < 500 {
			break
		}
		after = ts[len(ts)-1].ID
	}
	slices.Sort(out.Teams)
	slices.Sort(out.LeadTeams)
	return out, nil
}

// visible returns the mailboxes a user sees and their explicit rights.
func (s *Service) visible(ctx context.Context, tenant string, u *User) ([]Mailbox, map[string]Rights, error) {
	explicit, err := s.store.Memberships(ctx, tenant, u.ID)
	if err != nil {
		return nil, nil, err
	}
	allUsers, err := s.store.AllUsersMailboxes(ctx, tenant)
	if err != nil {
		return nil, nil, err
	}
	ids := make([]string, 0, len(explicit)+len(allUsers)+1)
	for id := range explicit {
		ids = append(ids, id)
	}
	ids = append(ids, allUsers...)
	if u.Personal != "" {
		ids = append(ids, u.Personal)
	}
	ms, err := s.store.GetMailboxes(ctx, tenant, sortedUnique(ids))
	return ms, explicit, err
}

// SetDefaultSender chooses the mailbox a user sends from by default.
func (s *Service) SetDefaultSender(ctx context.Context, p auth.Principal, userID, mailboxID string) (*User, error) {
	userID, err := selfOrAdmin(p, userID)
	if err != nil {
		return nil, err
	}
	var v errs.Violations
	checkID(&v, "mailbox_id", mailboxID)
	if err := v.Err(); err != nil {
		return nil, err
	}
	return s.store.SetDefaultSender(ctx, p.Tenant, userID, mailboxID, s.now())
}

// ---- the send question ----

// CheckSend answers "may user U send from address A, and how?". It is the hot path of every send:
// one store round trip, no allocation beyond the answer's strings.
//
// A service asking with no user asks for the system: system-generated mail may leave from any
// mailbox of the tenant, as the mailbox (send-as); the answer names the mailbox and its From.
func (s *Service) CheckSend(ctx context.Context, p auth.Principal, userID, address string) (SendDecision, error) {
	system := userID == "" && p.User == "" && p.IsService()
	if !system {
		var err error
		if userID, err = selfOrAdmin(p, userID); err != nil {
			return SendDecision{}, err
		}
	}
	// Checked as the caller sent it, as the outbox's SubmitEmail checks it: a trailing CR/LF is
	// refused, not trimmed away.
	var v errs.Violations
	checkAddress(&v, "from_address", address)
	if err := v.Err(); err != nil {
		return SendDecision{}, err
	}
	address = normalizeAddress(address)
	g, err := s.store.SendGrant(ctx, p.Tenant, userID, address)
	if err != nil {
		return SendDecision{}, fmt.Errorf("check send: %w", err)
	}
	if system {
		if !g.AddressFound {
			return SendDecision{Deny: DenyUnknownAddress}, nil
		}
		return SendDecision{Allowed: true, Mode: SendAs, MailboxID: g.MailboxID, From: formatAddress(g.DisplayName, g.Address)}, nil
	}
	return Decide(userID, &g), nil
}

// Decide turns what the store read into the answer; pure, so it is tested exhaustively.
func Decide(userID string, g *SendGrant) SendDecision {
	switch {
	case !g.UserFound:
		return SendDecision{Deny: DenyUnknownUser}
	case !g.AddressFound:
		return SendDecision{Deny: DenyUnknownAddress}
	}
	d := SendDecision{MailboxID: g.MailboxID, From: formatAddress(g.DisplayName, g.Address)}
	if g.Kind == KindPersonal && g.Owner == userID {
		d.Allowed, d.Mode = true, SendOwner
		return d
	}
	r := g.Explicit
	if g.AllUsers {
		r |= g.AllUsersRights
	}
	switch {
	case r.Has(RightSendAs):
		d.Allowed, d.Mode = true, SendAs
	case r.Has(RightSendOnBehalf):
		d.Allowed, d.Mode = true, SendOnBehalf
		d.Sender = formatAddress(g.UserDisplayName, g.UserEmail)
	default:
		d = SendDecision{MailboxID: g.MailboxID, Deny: DenyNoSendRight}
	}
	return d
}

// formatAddress renders a header address; mailaddr.Format quotes the name and encodes non-ASCII
// (RFC 2047) so that the outbox (net/mail) reads it back, so the value is safe to put in a
// header as it is.
func formatAddress(name, addr string) string {
	if name == "" {
		return addr
	}
	return mailaddr.Format(name, addr)
}

// ---- the sent view ----

// ApplySent records an EmailSent event; applying the same event twice changes nothing. The
// sender's name is the display name the directory holds for the sending user as the item is
// written (the outbox's event names the user by id only), so the view says "sent by Martina
// Musterfrau via info@…" and keeps saying it after a rename or the user's deletion.
func (s *Service) ApplySent(ctx context.Context, tenant string, item *SentItem) (bool, error) {
	var v errs.Violations
	checkTenantID(&v, "tenant_id", tenant)
	checkID(&v, "email_id", item.EmailID)
	if item.MailboxID != "" {
		checkID(&v, "mailbox_id", item.MailboxID)
	}
	if item.SenderUser != "" {
		checkID(&v, "sender_user_id", item.SenderUser)
	}
	if item.SentAt.IsZero() {
		v.Add("sent_time", "is required")
	}
	if err := v.Err(); err != nil {
		return false, err
	}
	item.FromAddress = normalizeAddress(item.FromAddress)
	if err := s.nameSender(ctx, tenant, item); err != nil {
		return false, err
	}
	return s.store.ApplySent(ctx, tenant, item)
}

// nameSender sets item.SenderName from the directory. A sender the directory does not know (a
// user deleted since, a system send) keeps the name the event carried, if any; the attribution
// then falls back to the user id.
func (s *Service) nameSender(ctx context.Context, tenant string, item *SentItem) error {
	if item.SenderUser == "" {
		return nil
	}
	u, err := s.store.GetUser(ctx, tenant, item.SenderUser)
	switch {
	case errors.Is(err, errs.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("sender of sent item %s: %w", item.EmailID, err)
	}
	if u.DisplayName != "" {
		item.SenderName = u.DisplayName
	}
	return nil
}

// ListSentItems pages through a user's sent view, newest first: what the user sent (from any
// address: it is stored in their own Sent folder), and what anyone sent from a shared mailbox the
// user may read now (RightRead). Mail sent from another user's personal address never shows.
func (s *Service) ListSentItems(ctx context.Context, p auth.Principal, userID string, pr PageRequest) ([]SentItem, string, error) {
	userID, err := selfOrAdmin(p, userID)
	if err != nil {
		return nil, "", err
	}
	size, after, err := pageArgs(paging.Scope("sent", userID), pr)
	if err != nil {
		return nil, "", err
	}
	u, err := s.store.GetUser(ctx, p.Tenant, userID)
	if err != nil {
		return nil, "", err
	}
	ms, explicit, err := s.visible(ctx, p.Tenant, u)
	if err != nil {
		return nil, "", fmt.Errorf("list sent items: %w", err)
	}
	shared := make([]string, 0, len(ms))
	for i := range ms {
		// The one visibility rule (internal/access): others' mail from a shared mailbox is read
		// with RightRead; a send right alone shows the member only what they sent themselves.
		if r, _ := ms[i].RightsOf(u.ID, explicit[ms[i].ID]); ms[i].Kind == KindShared && r&RightRead != 0 {
			shared = append(shared, ms[i].ID)
		}
	}
	items, err := s.store.ListSent(ctx, p.Tenant, u.ID, shared, after, size+1)
	if err != nil {
		return nil, "", fmt.Errorf("list sent items: %w", err)
	}
	items, next := page(paging.Scope("sent", userID), items, size, SentCursor)
	return items, next, nil
}

// SentCursor is the keyset position of a sent item: newest first, ties broken by email id. Store
// indexes sort by it.
func SentCursor(it *SentItem) string {
	const maxMillis = 9999999999999
	return fmt.Sprintf("%013d|%s", maxMillis-it.SentAt.UnixMilli(), it.EmailID)
}
