// Package wire converts between the mailbox domain types and their protobuf form. The API
// handlers and the events both speak protobuf; keeping the mapping in one place means a field
// added to a resource reaches the API and the events together.
package wire

import (
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// Tenant converts a tenant to protobuf.
func Tenant(t *mailbox.Tenant) *mailboxv1.Tenant {
	return &mailboxv1.Tenant{
		TenantId: t.ID, DisplayName: t.DisplayName, DefaultSharedQuotaBytes: t.DefaultSharedQuota,
		Version: t.Version, CreateTime: ts(t.Created), UpdateTime: ts(t.Updated),
	}
}

// TenantFrom converts a request's tenant to the domain type.
func TenantFrom(t *mailboxv1.Tenant) mailbox.Tenant {
	if t == nil {
		return mailbox.Tenant{}
	}
	return mailbox.Tenant{ID: t.GetTenantId(), DisplayName: t.GetDisplayName(), DefaultSharedQuota: t.GetDefaultSharedQuotaBytes()}
}

// User converts a user to protobuf.
func User(u *mailbox.User) *mailboxv1.User {
	return &mailboxv1.User{
		UserId: u.ID, DisplayName: u.DisplayName, Email: u.Email, DirectoryUsername: u.DirectoryUsername,
		PracticeUsername: u.PracticeUsername, Roles: slices.Clone(u.Roles), DefaultSenderMailboxId: u.DefaultSender,
		Version: u.Version, CreateTime: ts(u.Created), UpdateTime: ts(u.Updated),
	}
}

// UserFrom converts a request's user to the domain type; output-only fields are ignored.
func UserFrom(u *mailboxv1.User) mailbox.User {
	if u == nil {
		return mailbox.User{}
	}
	return mailbox.User{
		ID: u.GetUserId(), DisplayName: u.GetDisplayName(), Email: u.GetEmail(),
		DirectoryUsername: u.GetDirectoryUsername(), PracticeUsername: u.GetPracticeUsername(), Roles: u.GetRoles(),
	}
}

// Team converts a team to protobuf.
func Team(t *mailbox.Team) *mailboxv1.Team {
	return &mailboxv1.Team{
		TeamId: t.ID, DisplayName: t.DisplayName, MemberUserIds: slices.Clone(t.Members), LeadUserIds: slices.Clone(t.Leads),
		Version: t.Version, CreateTime: ts(t.Created), UpdateTime: ts(t.Updated),
	}
}

// TeamFrom converts a request's team to the domain type.
func TeamFrom(t *mailboxv1.Team) mailbox.Team {
	if t == nil {
		return mailbox.Team{}
	}
	return mailbox.Team{ID: t.GetTeamId(), DisplayName: t.GetDisplayName(), Members: t.GetMemberUserIds(), Leads: t.GetLeadUserIds()}
}

var kinds = map[mailbox.Kind]mailboxv1.MailboxKind{
	mailbox.KindPersonal: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL,
	mailbox.KindShared:   mailboxv1.MailboxKind_MAILBOX_KIND_SHARED,
}

var syncKinds = map[mailbox.SyncKind]mailboxv1.SyncKind{
	mailbox.SyncNone:     mailboxv1.SyncKind_SYNC_KIND_NONE,
	mailbox.SyncExchange: mailboxv1.SyncKind_SYNC_KIND_EXCHANGE,
	mailbox.SyncIMAP:     mailboxv1.SyncKind_SYNC_KIND_IMAP,
}

func reverse[K, V comparable](m map[K]V) map[V]K {
	out := make(map[V]K, len(m))
	for k, v := range m {
		out[v] = k
	}
	return out
}

var (
	kindsFrom     = reverse(kinds)
	syncKindsFrom = reverse(syncKinds)
)

// Mailbox converts a mailbox to protobuf.
func Mailbox(m *mailbox.Mailbox) *mailboxv1.Mailbox {
	return &mailboxv1.Mailbox{
		MailboxId: m.ID, Address: m.Address, DisplayName: m.DisplayName, Kind: kinds[m.Kind], OwnerUserId: m.Owner,
		AllUsers: m.AllUsers, AllUsersRights: Rights(m.AllUsersRights), SyncKind: syncKinds[m.Sync],
		QuotaBytes: m.QuotaBytes, UsageBytes: m.UsageBytes, OverQuota: m.OverQuota(), NeedsLicense: m.NeedsLicense(),
		Version: m.Version, CreateTime: ts(m.Created), UpdateTime: ts(m.Updated),
	}
}

// MailboxFrom converts a request's mailbox to the domain type. An unknown enum value becomes an
// invalid domain value (not zero), so validation names the field instead of applying a default.
func MailboxFrom(m *mailboxv1.Mailbox) mailbox.Mailbox {
	if m == nil {
		return mailbox.Mailbox{}
	}
	out := mailbox.Mailbox{
		ID: m.GetMailboxId(), Address: m.GetAddress(), DisplayName: m.GetDisplayName(), Owner: m.GetOwnerUserId(),
		AllUsers: m.GetAllUsers(), AllUsersRights: RightsFrom(m.GetAllUsersRights()), QuotaBytes: m.GetQuotaBytes(),
		Kind: kindsFrom[m.GetKind()],
	}
	if m.GetSyncKind() != mailboxv1.SyncKind_SYNC_KIND_UNSPECIFIED {
		out.Sync = syncKindsFrom[m.GetSyncKind()]
		if out.Sync == 0 {
			out.Sync = 255
		}
	}
	return out
}

var rightOrder = []struct {
	r  mailbox.Rights
	pb mailboxv1.Right
}{
	{mailbox.RightRead, mailboxv1.Right_RIGHT_READ},
	{mailbox.RightSendAs, mailboxv1.Right_RIGHT_SEND_AS},
	{mailbox.RightSendOnBehalf, mailboxv1.Right_RIGHT_SEND_ON_BEHALF},
}

// Rights converts a rights set to its sorted protobuf list.
func Rights(r mailbox.Rights) []mailboxv1.Right {
	var out []mailboxv1.Right
	for _, o := range rightOrder {
		if r.Has(o.r) {
			out = append(out, o.pb)
		}
	}
	return out
}

// invalidRight marks an unknown right so validation rejects it.
const invalidRight mailbox.Rights = 1 << 7

// RightsFrom converts a protobuf list to a rights set; unknown values set a bit validation rejects.
func RightsFrom(rs []mailboxv1.Right) mailbox.Rights {
	var out mailbox.Rights
	for _, r := range rs {
		found := false
		for _, o := range rightOrder {
			if o.pb == r {
				out |= o.r
				found = true
			}
		}
		if !found {
			out |= invalidRight
		}
	}
	return out
}

var sources = map[mailbox.Source]mailboxv1.MembershipSource{
	mailbox.SourceExplicit: mailboxv1.MembershipSource_MEMBERSHIP_SOURCE_EXPLICIT,
	mailbox.SourceAllUsers: mailboxv1.MembershipSource_MEMBERSHIP_SOURCE_ALL_USERS,
	mailbox.SourceOwner:    mailboxv1.MembershipSource_MEMBERSHIP_SOURCE_OWNER,
}

// Member converts a membership to protobuf.
func Member(m *mailbox.Member) *mailboxv1.Member {
	return &mailboxv1.Member{MailboxId: m.MailboxID, UserId: m.UserID, Rights: Rights(m.Rights), Source: sources[m.Source]}
}

// VisibleMailbox converts a visible mailbox to protobuf.
func VisibleMailbox(v *mailbox.VisibleMailbox) *mailboxv1.VisibleMailbox {
	return &mailboxv1.VisibleMailbox{Mailbox: Mailbox(&v.Mailbox), Rights: Rights(v.Rights), Source: sources[v.Source]}
}

var modes = map[mailbox.SendMode]mailboxv1.SendMode{
	mailbox.SendOwner:    mailboxv1.SendMode_SEND_MODE_OWNER,
	mailbox.SendAs:       mailboxv1.SendMode_SEND_MODE_SEND_AS,
	mailbox.SendOnBehalf: mailboxv1.SendMode_SEND_MODE_ON_BEHALF,
}

var denyReasons = map[mailbox.DenyReason]mailboxv1.DenyReason{
	mailbox.DenyUnknownAddress: mailboxv1.DenyReason_DENY_REASON_UNKNOWN_ADDRESS,
	mailbox.DenyNoSendRight:    mailboxv1.DenyReason_DENY_REASON_NO_SEND_RIGHT,
	mailbox.DenyUnknownUser:    mailboxv1.DenyReason_DENY_REASON_UNKNOWN_USER,
}

// SendDecision converts the send answer to its response.
func SendDecision(d *mailbox.SendDecision) *mailboxv1.CheckSendResponse {
	return &mailboxv1.CheckSendResponse{
		Allowed: d.Allowed, Mode: modes[d.Mode], MailboxId: d.MailboxID, From: d.From, Sender: d.Sender,
		DenyReason: denyReasons[d.Deny],
	}
}

// SendModeFrom converts a protobuf send mode (the outbox's enum has the same numbers).
func SendModeFrom(n int32) mailbox.SendMode {
	for k, v := range modes {
		if int32(v) == n {
			return k
		}
	}
	return mailbox.SendDenied
}

// SentItem converts a sent-view item to protobuf.
func SentItem(it *mailbox.SentItem) *mailboxv1.SentItem {
	folder := mailboxv1.SentItemFolder_SENT_ITEM_FOLDER_SHARED
	if it.Own {
		folder = mailboxv1.SentItemFolder_SENT_ITEM_FOLDER_OWN
	}
	return &mailboxv1.SentItem{
		EmailId: it.EmailID, MessageId: it.MessageID, MailboxId: it.MailboxID, FromAddress: it.FromAddress,
		SentByUserId: it.SenderUser, SentByDisplayName: it.SenderName, Subject: it.Subject, To: slices.Clone(it.To),
		SentTime: ts(it.SentAt), Folder: folder, Attribution: it.Attribution(), Mode: modes[it.Mode],
	}
}
