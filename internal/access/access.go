// Package access holds the rules of who may see what that more than one service applies, so
// that the outbox, the tracker and mailbox's sent view answer a caller alike: a second copy of a
// rule drifts (a Bcc shown by one service and hidden by another is a leak, whichever is right).
package access

import "github.com/postamt/postamt/internal/auth"

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
		for _, k := range token {
			if t == k {
				out = append(out, t)
				break
			}
		}
	}
	return out
}
