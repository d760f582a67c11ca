package redisstore

import (
	"strconv"
	"strings"
	"time"

	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
)

// listSep separates list elements inside one hash field; ids and roles never contain it.
const listSep = ","

// fieldSep separates the parts of an address summary; validated text never contains control
// characters, so the unit separator is safe.
const fieldSep = "\x1f"

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

func fromMs(s string) time.Time {
	n, _ := strconv.ParseInt(s, 10, 64)
	if n == 0 {
		return time.Time{}
	}
	return time.UnixMilli(n).UTC()
}

func atoi64(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

func joinList(l []string) string { return strings.Join(l, listSep) }

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, listSep)
}

func itoa64(n int64) string { return strconv.FormatInt(n, 10) }

func tenantFields(t *mailbox.Tenant) []any {
	return []any{
		"id", t.ID, "display_name", t.DisplayName, "default_shared_quota", itoa64(t.DefaultSharedQuota),
		"version", itoa64(t.Version), "created", ms(t.Created), "updated", ms(t.Updated),
	}
}

func decodeTenant(h map[string]string) *mailbox.Tenant {
	return &mailbox.Tenant{
		ID: h["id"], DisplayName: h["display_name"], DefaultSharedQuota: atoi64(h["default_shared_quota"]),
		Version: atoi64(h["version"]), Created: fromMs(h["created"]), Updated: fromMs(h["updated"]),
	}
}

func userFields(u *mailbox.User) []any {
	return []any{
		"id", u.ID, "display_name", u.DisplayName, "email", u.Email,
		"directory_username", u.DirectoryUsername, "practice_username", u.PracticeUsername,
		"roles", joinList(u.Roles), "default_sender", u.DefaultSender, "personal", u.Personal,
		"version", itoa64(u.Version), "created", ms(u.Created), "updated", ms(u.Updated),
	}
}

func decodeUser(h map[string]string) *mailbox.User {
	return &mailbox.User{
		ID: h["id"], DisplayName: h["display_name"], Email: h["email"],
		DirectoryUsername: h["directory_username"], PracticeUsername: h["practice_username"],
		Roles: splitList(h["roles"]), DefaultSender: h["default_sender"], Personal: h["personal"],
		Version: atoi64(h["version"]), Created: fromMs(h["created"]), Updated: fromMs(h["updated"]),
	}
}

func teamFields(t *mailbox.Team) []any {
	return []any{
		"id", t.ID, "display_name", t.DisplayName, "members", joinList(t.Members), "leads", joinList(t.Leads),
		"version", itoa64(t.Version), "created", ms(t.Created), "updated", ms(t.Updated),
	}
}

func decodeTeam(h map[string]string) *mailbox.Team {
	return &mailbox.Team{
		ID: h["id"], DisplayName: h["display_name"], Members: splitList(h["members"]), Leads: splitList(h["leads"]),
		Version: atoi64(h["version"]), Created: fromMs(h["created"]), Updated: fromMs(h["updated"]),
	}
}

func boolStr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

func mailboxFields(m *mailbox.Mailbox) []any {
	return []any{
		"id", m.ID, "address", m.Address, "display_name", m.DisplayName, "kind", itoa64(int64(m.Kind)),
		"owner", m.Owner, "all_users", boolStr(m.AllUsers), "all_users_rights", itoa64(int64(m.AllUsersRights)),
		"sync", itoa64(int64(m.Sync)), "quota", itoa64(m.QuotaBytes), "usage", itoa64(m.UsageBytes),
		"version", itoa64(m.Version), "created", ms(m.Created), "updated", ms(m.Updated),
	}
}

func decodeMailbox(h map[string]string) *mailbox.Mailbox {
	return &mailbox.Mailbox{
		ID: h["id"], Address: h["address"], DisplayName: h["display_name"], Kind: mailbox.Kind(atoi64(h["kind"])),
		Owner: h["owner"], AllUsers: h["all_users"] == "1", AllUsersRights: mailbox.Rights(atoi64(h["all_users_rights"])),
		Sync: mailbox.SyncKind(atoi64(h["sync"])), QuotaBytes: atoi64(h["quota"]), UsageBytes: atoi64(h["usage"]),
		Version: atoi64(h["version"]), Created: fromMs(h["created"]), Updated: fromMs(h["updated"]),
	}
}

// addrSummary is what the send check needs of a mailbox, stored under its address so the check
// reads it without first resolving the mailbox id.
func addrSummary(m *mailbox.Mailbox) string {
	return strings.Join([]string{
		m.ID, itoa64(int64(m.Kind)), m.Owner, boolStr(m.AllUsers), itoa64(int64(m.AllUsersRights)), m.DisplayName, m.Address,
	}, fieldSep)
}

func decodeAddrSummary(s string, g *mailbox.SendGrant) bool {
	p := strings.SplitN(s, fieldSep, 7)
	if len(p) != 7 {
		return false
	}
	g.AddressFound = true
	g.MailboxID = p[0]
	g.Kind = mailbox.Kind(atoi64(p[1]))
	g.Owner = p[2]
	g.AllUsers = p[3] == "1"
	g.AllUsersRights = mailbox.Rights(atoi64(p[4]))
	g.DisplayName = p[5]
	g.Address = p[6]
	return true
}

func rightsStr(r mailbox.Rights) string { return strconv.Itoa(int(r)) }

func parseRights(s string) mailbox.Rights {
	n, _ := strconv.Atoi(s)
	return mailbox.Rights(n)
}

func sentFields(it *mailbox.SentItem) []any {
	return []any{
		"email_id", it.EmailID, "message_id", it.MessageID, "mailbox_id", it.MailboxID, "from", it.FromAddress,
		"sender_user", it.SenderUser, "sender_name", it.SenderName, "subject", it.Subject,
		"to", strings.Join(it.To, fieldSep), "mode", itoa64(int64(it.Mode)), "sent", ms(it.SentAt),
	}
}

func decodeSent(h map[string]string) mailbox.SentItem {
	var to []string
	if h["to"] != "" {
		to = strings.Split(h["to"], fieldSep)
	}
	return mailbox.SentItem{
		EmailID: h["email_id"], MessageID: h["message_id"], MailboxID: h["mailbox_id"], FromAddress: h["from"],
		SenderUser: h["sender_user"], SenderName: h["sender_name"], Subject: h["subject"], To: to,
		Mode: mailbox.SendMode(atoi64(h["mode"])), SentAt: fromMs(h["sent"]),
	}
}
