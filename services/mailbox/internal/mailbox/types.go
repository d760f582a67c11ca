// Package mailbox holds the rules of the mailbox service: the directory (tenants, users, teams),
// mailboxes with their members and rights, default senders, the send question and the sent view.
// It validates input, authorises the caller and decides; the Store it declares keeps the data and
// the invariants that need atomicity (uniqueness, cascades, default-sender resets).
package mailbox

import (
	"slices"
	"strings"
	"time"
)

// Rights is a set of Right bits, so a membership's rights fit in one small Redis value.
type Rights uint8

// The rights a member can hold on a mailbox (DESIGN.md §1.1).
const (
	// RightRead is full access: the member sees the mailbox's mail, its sent mail included.
	RightRead Rights = 1 << iota
	// RightSendAs lets the member send with From: the mailbox address.
	RightSendAs
	// RightSendOnBehalf lets the member send with From: the mailbox and Sender: themself.
	RightSendOnBehalf

	// rightsAll is every valid bit; anything outside it is rejected.
	rightsAll = RightRead | RightSendAs | RightSendOnBehalf
)

// DefaultAllUsersRights is what every user holds on an all-users mailbox unless the admin says
// otherwise: the firm's office address is read and sent from by everyone (seed 000).
const DefaultAllUsersRights = RightRead | RightSendAs

// Has reports whether every bit of want is in r.
func (r Rights) Has(want Rights) bool { return r&want == want }

// CanSend reports whether r allows sending in either mode.
func (r Rights) CanSend() bool { return r&(RightSendAs|RightSendOnBehalf) != 0 }

// Kind tells a personal mailbox from a shared one.
type Kind uint8

// The mailbox kinds.
const (
	// KindPersonal is owned by one user and is that user's login.
	KindPersonal Kind = iota + 1
	// KindShared has no login of its own; access comes only from membership.
	KindShared
)

// SyncKind is a mailbox's server-side synchronisation; tracker reads it.
type SyncKind uint8

// The sync kinds.
const (
	// SyncNone means no server-side synchronisation.
	SyncNone SyncKind = iota + 1
	// SyncExchange is Exchange server-side synchronisation: the only kind sent-item tracking works with.
	SyncExchange
	// SyncIMAP is IMAP/SMTP synchronisation.
	SyncIMAP
)

// Source says why a user is a member of a mailbox.
type Source uint8

// The membership sources.
const (
	// SourceExplicit is a membership an admin added.
	SourceExplicit Source = iota + 1
	// SourceAllUsers comes from the mailbox's all-users flag.
	SourceAllUsers
	// SourceOwner is the owner of a personal mailbox.
	SourceOwner
)

// SendMode is how a user may send from an address.
type SendMode uint8

// The send modes; SendDenied is the zero value so a forgotten decision denies.
const (
	// SendDenied means the user may not send from the address.
	SendDenied SendMode = iota
	// SendOwner is the user's own personal mailbox.
	SendOwner
	// SendAs sends with From: the mailbox and no Sender.
	SendAs
	// SendOnBehalf sends with From: the mailbox and Sender: the user.
	SendOnBehalf
)

// DenyReason says why a send is denied.
type DenyReason uint8

// The deny reasons.
const (
	// DenyNone is the zero value: not denied.
	DenyNone DenyReason = iota
	// DenyUnknownAddress means no mailbox of the tenant has the address.
	DenyUnknownAddress
	// DenyNoSendRight means the user holds no send right on the mailbox.
	DenyNoSendRight
	// DenyUnknownUser means the user does not exist.
	DenyUnknownUser
)

// DefaultSharedQuota is the storage quota of a shared mailbox unless set (seed 001: 50 GB).
const DefaultSharedQuota int64 = 50 * 1000 * 1000 * 1000

// Tenant is one firm.
type Tenant struct {
	ID                 string
	DisplayName        string
	DefaultSharedQuota int64
	Version            int64
	Created, Updated   time.Time
}

// User is a person of the directory.
type User struct {
	ID                string
	DisplayName       string
	Email             string
	DirectoryUsername string
	PracticeUsername  string
	Roles             []string
	// DefaultSender is the mailbox the user sends from unless they choose another.
	DefaultSender string
	// Personal is the id of the personal mailbox the user owns, if any; kept by the store.
	Personal         string
	Version          int64
	Created, Updated time.Time
}

// Team is a group of users with leads.
type Team struct {
	ID               string
	DisplayName      string
	Members          []string
	Leads            []string
	Version          int64
	Created, Updated time.Time
}

// Mailbox is an address people read and send from.
type Mailbox struct {
	ID             string
	Address        string
	DisplayName    string
	Kind           Kind
	Owner          string
	AllUsers       bool
	AllUsersRights Rights
	Sync           SyncKind
	QuotaBytes     int64
	UsageBytes     int64
	Version        int64
	Created        time.Time
	Updated        time.Time
}

// OverQuota reports whether usage exceeds the quota.
func (m *Mailbox) OverQuota() bool { return m.QuotaBytes > 0 && m.UsageBytes > m.QuotaBytes }

// NeedsLicense reports whether a shared mailbox is over its quota and so needs a licence (seed 001).
func (m *Mailbox) NeedsLicense() bool { return m.Kind == KindShared && m.OverQuota() }

// RightsOf returns the rights user holds on m, given their explicit rights, and why.
func (m *Mailbox) RightsOf(userID string, explicit Rights) (Rights, Source) {
	switch {
	case m.Kind == KindPersonal && m.Owner == userID:
		return rightsAll, SourceOwner
	case m.AllUsers:
		return explicit | m.AllUsersRights, SourceAllUsers
	case explicit != 0:
		return explicit, SourceExplicit
	}
	return 0, 0
}

// Member is a user's rights on a mailbox.
type Member struct {
	MailboxID string
	UserID    string
	Rights    Rights
	Source    Source
}

// VisibleMailbox is a mailbox a user sees, with their rights on it.
type VisibleMailbox struct {
	Mailbox Mailbox
	Rights  Rights
	Source  Source
}

// SendDecision is the answer to "may user U send from address A?".
type SendDecision struct {
	Allowed   bool
	Mode      SendMode
	MailboxID string
	// From and Sender are RFC 5322 header values ready to use; Sender only for on-behalf mail.
	From   string
	Sender string
	Deny   DenyReason
}

// SendGrant is what the store knows about an address and a user for the send question, read in
// one round trip.
type SendGrant struct {
	UserFound       bool
	UserDisplayName string
	UserEmail       string
	// AddressFound is false when no mailbox of the tenant has the address.
	AddressFound   bool
	MailboxID      string
	Kind           Kind
	Owner          string
	DisplayName    string
	Address        string
	AllUsers       bool
	AllUsersRights Rights
	// Explicit is the user's explicit rights on the mailbox.
	Explicit Rights
}

// SentItem is a sent email as a sent view shows it.
type SentItem struct {
	EmailID     string
	MessageID   string
	MailboxID   string
	FromAddress string
	SenderUser  string
	SenderName  string
	Subject     string
	To          []string
	Mode        SendMode
	SentAt      time.Time
	// Own is set in a listing when the item is in the listing user's own Sent folder.
	Own bool
}

// Attribution renders the line a sent view shows, e.g. "sent by Martina Musterfrau via
// info@kanzlei.example"; it names the sender because a shared address alone hides who sent it.
func (s *SentItem) Attribution() string {
	name := s.SenderName
	if name == "" {
		name = s.SenderUser
	}
	if name == "" {
		return "sent via " + s.FromAddress
	}
	return "sent by " + name + " via " + s.FromAddress
}

// PageRequest asks for one page of a keyset-paged list.
type PageRequest struct {
	Size  int
	Token string
}

// sortedUnique returns ids sorted without duplicates, so stored lists compare and diff cheaply.
func sortedUnique(ids []string) []string {
	out := slices.Clone(ids)
	slices.Sort(out)
	return slices.Compact(out)
}

// normalizeAddress lower-cases an address: addresses are unique and compared case-insensitively.
func normalizeAddress(a string) string { return strings.ToLower(strings.TrimSpace(a)) }
