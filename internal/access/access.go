// Package access holds the rules of who may see what that more than one service applies, so
// that the outbox, the tracker and mailbox's sent view answer a caller alike: a second copy of a
// rule drifts (a Bcc shown by one service and hidden by another is a leak, whichever is right).
// The rules are unit-tested here and proved over every RPC that returns mail, for every kind of
// caller, by gateway/app/access_matrix_test.go (the whole suite behind its gateway).
package access

import (
	"context"
	"fmt"
	"slices"

	"github.com/postamt/postamt/internal/auth"
)

// SeesBcc reports whether p may see the Bcc recipients of mail sent by sender (a user id; empty
// for system-generated mail): the sender, the tenant's admins and other Postamt services. Anyone
// else who may read the mail (a colleague in the team view, a member of the shared mailbox) sees
// it without Bcc, and a text filter of theirs must not match a Bcc address either, or the filter
// would tell them who was in Bcc.
func SeesBcc(p auth.Principal, sender string) bool {
	return p.IsAdmin() || p.IsService() || (p.User != "" && p.User == sender)
}

// Teams returns the teams a user's mail and views are built from: the directory's teams of the
// user (mailbox's teams, where they are a member or a lead), narrowed to those the token names
// when it names any. A token can hide a team from a view (a session scoped to one team) but
// never add one, since the identity provider's claim is not where teams are kept.
func Teams(directory, token []string) []string {
	if len(token) == 0 {
		return directory
	}
	out := make([]string, 0, len(directory))
	for _, t := range directory {
		if slices.Contains(token, t) {
			out = append(out, t)
		}
	}
	return out
}

// RoleCRM is the role that reads every tracked email of the tenant (the CRM's integration user,
// support staff reconciling records), without Bcc unless it is also an admin.
const RoleCRM = "crm"

// Reader is who asks to read mail, with what the directory (mailbox's GetReadAccess) says they
// may read.
type Reader struct {
	auth.Principal
	// Mailboxes are the mailboxes whose mail the user may read: their own, and those where they
	// hold RIGHT_READ. A send right alone is not among them.
	Mailboxes []string
	// Teams are the user's teams (access.Teams: the directory's, narrowed by the token).
	Teams []string
}

// ReadAccess answers what a user may read: the mailboxes whose mail they may read and their teams,
// as mailbox's GetReadAccess says (each service caches it its own way).
type ReadAccess func(ctx context.Context, tenant, user string) (mailboxes, teams []string, err error)

// ReaderOf is the Reader of p. The directory is asked only when the rule needs its answer: not
// for admins and services (they read everything of their tenant) nor for callers without a user;
// the token's teams narrow the directory's (Teams). A nil lookup gives a user no mailboxes and no
// teams: they read what they sent.
func ReaderOf(ctx context.Context, p auth.Principal, lookup ReadAccess) (Reader, error) {
	r := Reader{Principal: p}
	if p.User == "" || p.IsAdmin() || p.IsService() || lookup == nil {
		return r, nil
	}
	mbs, teams, err := lookup(ctx, p.Tenant, p.User)
	if err != nil {
		return r, fmt.Errorf("read access of %s: %w", p.User, err)
	}
	r.Mailboxes, r.Teams = mbs, Teams(teams, p.Teams)
	return r, nil
}

// Mail is what the rule looks at of one email, sent or being sent.
type Mail struct {
	Tenant string
	// Sender is the user who sent it; empty for system-generated mail.
	Sender string
	// Mailbox is the mailbox of its From address.
	Mailbox string
	// Teams are the teams it is listed under: the sender's at sending time and the work item's.
	Teams []string
}

// MayRead is the one visibility rule of the suite: who may read an email — in the outbox, the
// tracker's tracked mail and explanations, and mailbox's sent view. The same tenant, and one of:
//   - an admin or a service of the tenant;
//   - the sender;
//   - a user who may read the mail's mailbox (owner, or RIGHT_READ — SEND_AS or SEND_ON_BEHALF
//     alone lets a member send from a shared mailbox, not read what others sent from it);
//   - a member or lead of one of the mail's teams (the outbox's MY TEAM view, seed 003).
//
// Anyone else gets NOT_FOUND, so ids cannot be probed. Bcc is a further rule (SeesBcc).
func (r Reader) MayRead(m Mail) bool {
	switch {
	case m.Tenant != r.Tenant:
		return false
	case r.IsAdmin() || r.IsService():
		return true
	case r.User != "" && m.Sender == r.User:
		return true
	case m.Mailbox != "" && slices.Contains(r.Mailboxes, m.Mailbox):
		return true
	}
	for _, t := range m.Teams {
		if slices.Contains(r.Teams, t) {
			return true
		}
	}
	return false
}

// MayReadTracked is MayRead for the tracker's tracked mail and explanations, where RoleCRM
// reads every email of its tenant too (the CRM's integration, support reconciling records).
func (r Reader) MayReadTracked(m Mail) bool {
	return r.MayRead(m) || (m.Tenant == r.Tenant && r.HasRole(RoleCRM))
}
