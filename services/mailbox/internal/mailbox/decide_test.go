package mailbox

import (
	"net/mail"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	shared := SendGrant{
		UserFound: true, UserDisplayName: "Martina Musterfrau", UserEmail: "m.musterfrau@kanzlei.example",
		AddressFound: true, MailboxID: "info", Kind: KindShared, DisplayName: "Kanzlei Muster", Address: "info@kanzlei.example",
	}
	with := func(f func(g *SendGrant)) *SendGrant {
		g := shared
		f(&g)
		return &g
	}
	tests := []struct {
		name string
		user string
		g    *SendGrant
		want SendDecision
	}{
		{
			name: "unknown user",
			user: "ghost",
			g:    &SendGrant{AddressFound: true},
			want: SendDecision{Deny: DenyUnknownUser},
		},
		{
			name: "unknown address",
			user: "martina",
			g:    &SendGrant{UserFound: true},
			want: SendDecision{Deny: DenyUnknownAddress},
		},
		{
			name: "owner of personal mailbox",
			user: "max",
			g: &SendGrant{UserFound: true, AddressFound: true, MailboxID: "max-pm", Kind: KindPersonal, Owner: "max",
				DisplayName: "Max Mustermann", Address: "mustermann@kanzlei.example"},
			want: SendDecision{Allowed: true, Mode: SendOwner, MailboxID: "max-pm", From: `"Max Mustermann" <mustermann@kanzlei.example>`},
		},
		{
			name: "someone else's personal mailbox without rights",
			user: "martina",
			g: &SendGrant{UserFound: true, AddressFound: true, MailboxID: "max-pm", Kind: KindPersonal, Owner: "max",
				Address: "mustermann@kanzlei.example"},
			want: SendDecision{MailboxID: "max-pm", Deny: DenyNoSendRight},
		},
		{
			name: "delegate on behalf of a personal mailbox",
			user: "martina",
			g: &SendGrant{UserFound: true, UserDisplayName: "Martina Musterfrau", UserEmail: "m@kanzlei.example",
				AddressFound: true, MailboxID: "max-pm", Kind: KindPersonal, Owner: "max", Address: "mustermann@kanzlei.example",
				Explicit: RightSendOnBehalf},
			want: SendDecision{Allowed: true, Mode: SendOnBehalf, MailboxID: "max-pm", From: "mustermann@kanzlei.example",
				Sender: `"Martina Musterfrau" <m@kanzlei.example>`},
		},
		{
			name: "read only member",
			user: "martina",
			g:    with(func(g *SendGrant) { g.Explicit = RightRead }),
			want: SendDecision{MailboxID: "info", Deny: DenyNoSendRight},
		},
		{
			name: "send as wins over on behalf",
			user: "martina",
			g:    with(func(g *SendGrant) { g.Explicit = RightSendAs | RightSendOnBehalf }),
			want: SendDecision{Allowed: true, Mode: SendAs, MailboxID: "info", From: `"Kanzlei Muster" <info@kanzlei.example>`},
		},
		{
			name: "all-users rights apply to everyone",
			user: "martina",
			g:    with(func(g *SendGrant) { g.AllUsers, g.AllUsersRights = true, DefaultAllUsersRights }),
			want: SendDecision{Allowed: true, Mode: SendAs, MailboxID: "info", From: `"Kanzlei Muster" <info@kanzlei.example>`},
		},
		{
			name: "explicit rights add to all-users rights",
			user: "martina",
			g:    with(func(g *SendGrant) { g.AllUsers, g.AllUsersRights, g.Explicit = true, RightRead, RightSendOnBehalf }),
			want: SendDecision{Allowed: true, Mode: SendOnBehalf, MailboxID: "info", From: `"Kanzlei Muster" <info@kanzlei.example>`,
				Sender: `"Martina Musterfrau" <m.musterfrau@kanzlei.example>`},
		},
		{
			name: "non-ASCII display name is encoded",
			user: "max",
			g: &SendGrant{UserFound: true, AddressFound: true, MailboxID: "j", Kind: KindPersonal, Owner: "max",
				DisplayName: "Jürgen Groß", Address: "j@kanzlei.example"},
			want: SendDecision{Allowed: true, Mode: SendOwner, MailboxID: "j", From: "=?utf-8?q?J=C3=BCrgen_Gro=C3=9F?= <j@kanzlei.example>"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Decide(tt.user, tt.g)
			if got != tt.want {
				t.Errorf("Decide() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSentCursorOrdersNewestFirst(t *testing.T) {
	base := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	older := SentItem{EmailID: "b", SentAt: base}
	newer := SentItem{EmailID: "a", SentAt: base.Add(time.Millisecond)}
	tieA := SentItem{EmailID: "a", SentAt: base}
	if !(SentCursor(&newer) < SentCursor(&older)) {
		t.Errorf("newer item sorts after older: %q >= %q", SentCursor(&newer), SentCursor(&older))
	}
	if !(SentCursor(&tieA) < SentCursor(&older)) {
		t.Errorf("ties are not broken by id: %q >= %q", SentCursor(&tieA), SentCursor(&older))
	}
}

func TestAttribution(t *testing.T) {
	tests := []struct {
		name string
		it   SentItem
		want string
	}{
		{"named sender", SentItem{SenderName: "Martina Musterfrau", FromAddress: "info@kanzlei.example"}, "sent by Martina Musterfrau via info@kanzlei.example"},
		{"sender without name", SentItem{SenderUser: "martina", FromAddress: "info@kanzlei.example"}, "sent by martina via info@kanzlei.example"},
		{"system mail", SentItem{FromAddress: "info@kanzlei.example"}, "sent via info@kanzlei.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.it.Attribution(); got != tt.want {
				t.Errorf("Attribution() = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestFormatAddressReadsBack: the From of a send decision is read by the outbox with
// net/mail.ParseAddress; a mailbox name with a backslash and non-ASCII letters once made it
// unreadable, and every send from that mailbox failed (found by FuzzSenderAddress).
func TestFormatAddressReadsBack(t *testing.T) {
	for _, name := range []string{"Kanzlei Muster", `Müller \ Partner`, `Muster \ Partner`, "Jürgen Groß", ""} {
		v := formatAddress(name, "info@kanzlei.example")
		a, err := mail.ParseAddress(v)
		if err != nil || a.Name != name || a.Address != "info@kanzlei.example" {
			t.Errorf("formatAddress(%q) = %s reads back as %+v, %v", name, v, a, err)
		}
	}
}
