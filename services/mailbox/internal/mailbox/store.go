package mailbox

import (
	"context"
	"time"
)

// Store keeps the mailbox service's state. It is declared here, by its consumer, so the rules can
// be read without Redis; redisstore implements it.
//
// Every write is atomic with the event that announces it. Besides plain persistence a Store keeps
// these invariants, because they must hold even when two admins act at once:
//   - ids are unique per tenant, and so are user emails and mailbox addresses (case-insensitive);
//     a duplicate is errs.AlreadyExists, an unknown id errs.NotFound;
//   - nothing is written into a tenant that does not exist (errs.FailedPrecondition);
//   - a user's default sender always names a mailbox the user may send from: when a membership,
//     a right, the all-users flag or the mailbox itself goes, the default falls back to the user's
//     personal mailbox (or to none);
//   - deleting a user removes their memberships and team places; deleting a mailbox removes its
//     memberships;
//   - the mutate callbacks run on the current state and may be called again when a concurrent
//     write interferes; their error aborts the write unchanged.
type Store interface {
	CreateTenant(ctx context.Context, t *Tenant) error
	GetTenant(ctx context.Context, id string) (*Tenant, error)
	UpdateTenant(ctx context.Context, id string, mutate func(*Tenant) error) (*Tenant, error)
	ListTenants(ctx context.Context, after string, limit int) ([]Tenant, error)
	// DeleteTenant fails with errs.FailedPrecondition while the tenant has users or mailboxes.
	DeleteTenant(ctx context.Context, id string) error

	CreateUser(ctx context.Context, tenant string, u *User) error
	GetUser(ctx context.Context, tenant, id string) (*User, error)
	UpdateUser(ctx context.Context, tenant, id string, mutate func(*User) error) (*User, error)
	ListUsers(ctx context.Context, tenant, after string, limit int) ([]User, error)
	// DeleteUser fails with errs.FailedPrecondition while the user owns a personal mailbox.
	DeleteUser(ctx context.Context, tenant, id string, now time.Time) error

	// CreateTeam fails with errs.NotFound when a member or lead is not a user.
	CreateTeam(ctx context.Context, tenant string, t *Team) error
	GetTeam(ctx context.Context, tenant, id string) (*Team, error)
	UpdateTeam(ctx context.Context, tenant, id string, mutate func(*Team) error) (*Team, error)
	ListTeams(ctx context.Context, tenant, after string, limit int) ([]Team, error)
	DeleteTeam(ctx context.Context, tenant, id string, now time.Time) error

	// CreateMailbox fails with errs.NotFound when a personal mailbox's owner is unknown, and with
	// errs.FailedPrecondition when the owner has a personal mailbox already.
	CreateMailbox(ctx context.Context, tenant string, m *Mailbox) error
	GetMailbox(ctx context.Context, tenant, id string) (*Mailbox, error)
	// GetMailboxes returns the mailboxes that exist among ids, in the order of ids.
	GetMailboxes(ctx context.Context, tenant string, ids []string) ([]Mailbox, error)
	UpdateMailbox(ctx context.Context, tenant, id string, mutate func(*Mailbox) error) (*Mailbox, error)
	ListMailboxes(ctx context.Context, tenant, after string, limit int) ([]Mailbox, error)
	DeleteMailbox(ctx context.Context, tenant, id string, now time.Time) error

	// AddMember fails with errs.AlreadyExists for an explicit member.
	AddMember(ctx context.Context, tenant, mailboxID, userID string, r Rights, now time.Time) error
	// UpdateMember and RemoveMember fail with errs.NotFound for a user who is no explicit member.
	UpdateMember(ctx context.Context, tenant, mailboxID, userID string, r Rights, now time.Time) error
	RemoveMember(ctx context.Context, tenant, mailboxID, userID string, now time.Time) error
	// Members returns a mailbox's explicit members and their rights.
	Members(ctx context.Context, tenant, mailboxID string) (map[string]Rights, error)
	// Memberships returns a user's explicit rights by mailbox id.
	Memberships(ctx context.Context, tenant, userID string) (map[string]Rights, error)
	// AllUsersMailboxes returns the ids of the tenant's all-users mailboxes.
	AllUsersMailboxes(ctx context.Context, tenant string) ([]string, error)

	// SetDefaultSender fails with errs.PermissionDenied when the user may not send from the
	// mailbox at the moment of the write.
	SetDefaultSender(ctx context.Context, tenant, userID, mailboxID string, now time.Time) (*User, error)
	// SendGrant reads what the send question needs in one round trip.
	SendGrant(ctx context.Context, tenant, userID, address string) (SendGrant, error)

	// ApplySent records a sent email in its sender's own Sent folder and in its mailbox's sent
	// index; it reports false when the email was recorded before (redelivery).
	ApplySent(ctx context.Context, tenant string, item *SentItem) (bool, error)
	// ListSent merges the user's own Sent folder with the sent indexes of the given mailboxes,
	// newest first (by SentCursor), after the cursor, marking the items of the user's own folder.
	ListSent(ctx context.Context, tenant, userID string, mailboxIDs []string, after string, limit int) ([]SentItem, error)
}
