package grpcapi_test

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
)

const (
	read     = mailboxv1.Right_RIGHT_READ
	sendAs   = mailboxv1.Right_RIGHT_SEND_AS
	onBehalf = mailboxv1.Right_RIGHT_SEND_ON_BEHALF
)

func TestMembers(t *testing.T) {
	e := newEnv(t)
	admin := e.tenant("kanzlei")
	e.user(admin, "max", "Max Mustermann", "max@kanzlei.example")
	e.user(admin, "martina", "Martina Musterfrau", "martina@kanzlei.example")
	e.personal(admin, "max-pm", "max", "mustermann@kanzlei.example", "Max Mustermann")
	e.shared(admin, "support", "support@kanzlei.example", "Support", false)

	e.member(admin, "support", "martina", read, onBehalf)

	tests := []struct {
		name   string
		mb, u  string
		rights []mailboxv1.Right
		ctx    bool // as a non-admin
		code   codes.Code
		fld    string
	}{
		{name: "duplicate", mb: "support", u: "martina", rights: []mailboxv1.Right{read}, code: codes.AlreadyExists},
		{name: "owner of the personal mailbox", mb: "max-pm", u: "max", rights: []mailboxv1.Right{read}, code: codes.AlreadyExists},
		{name: "unknown mailbox", mb: "nope", u: "martina", rights: []mailboxv1.Right{read}, code: codes.NotFound},
		{name: "unknown user", mb: "support", u: "ghost", rights: []mailboxv1.Right{read}, code: codes.NotFound},
		{name: "no rights", mb: "support", u: "max", code: codes.InvalidArgument, fld: "rights"},
		{name: "unspecified right", mb: "support", u: "max", rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_UNSPECIFIED}, code: codes.InvalidArgument, fld: "rights"},
		{name: "non-admin", mb: "support", u: "max", rights: []mailboxv1.Right{read}, ctx: true, code: codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := admin
			if tt.ctx {
				ctx = e.as("kanzlei", "martina")
			}
			_, err := e.client.AddMember(ctx, &mailboxv1.AddMemberRequest{MailboxId: tt.mb, UserId: tt.u, Rights: tt.rights})
			if tt.fld != "" {
				wantField(t, err, tt.fld)
				return
			}
			wantCode(t, err, tt.code)
		})
	}

	t.Run("a member of another tenant's mailbox is not found", func(t *testing.T) {
		other := e.tenant("other")
		e.user(other, "martina", "Other Martina", "martina@other.example")
		_, err := e.client.AddMember(other, &mailboxv1.AddMemberRequest{MailboxId: "support", UserId: "martina", Rights: []mailboxv1.Right{read}})
		wantCode(t, err, codes.NotFound)
	})
	t.Run("delegate on a personal mailbox", func(t *testing.T) {
		e.member(admin, "max-pm", "martina", onBehalf)
		r := must(e.client.ListMembers(admin, &mailboxv1.ListMembersRequest{MailboxId: "max-pm"}))(t)
		got := fmt.Sprint(r.GetMembers())
		want := fmt.Sprint([]*mailboxv1.Member{
			{MailboxId: "max-pm", UserId: "martina", Rights: []mailboxv1.Right{onBehalf}, Source: mailboxv1.MembershipSource_MEMBERSHIP_SOURCE_EXPLICIT},
			{MailboxId: "max-pm", UserId: "max", Rights: []mailboxv1.Right{read, sendAs, onBehalf}, Source: mailboxv1.MembershipSource_MEMBERSHIP_SOURCE_OWNER},
		})
		if got != want {
			t.Errorf("members = %s, want %s", got, want)
		}
	})
	t.Run("update rights", func(t *testing.T) {
		r := must(e.client.UpdateMember(admin, &mailboxv1.UpdateMemberRequest{MailboxId: "support", UserId: "martina", Rights: []mailboxv1.Right{read, sendAs}}))(t)
		if fmt.Sprint(r.GetMember().GetRights()) != fmt.Sprint([]mailboxv1.Right{read, sendAs}) {
			t.Errorf("rights = %v", r.GetMember().GetRights())
		}
		_, err := e.client.UpdateMember(admin, &mailboxv1.UpdateMemberRequest{MailboxId: "support", UserId: "max", Rights: []mailboxv1.Right{read}})
		wantCode(t, err, codes.NotFound)
	})
	t.Run("visible mailboxes", func(t *testing.T) {
		r := must(e.client.ListVisibleMailboxes(e.as("kanzlei", "martina"), &mailboxv1.ListVisibleMailboxesRequest{}))(t)
		var got []string
		for _, v := range r.GetMailboxes() {
			got = append(got, fmt.Sprintf("%s:%v", v.GetMailbox().GetAddress(), v.GetRights()))
		}
		want := "[mustermann@kanzlei.example:[RIGHT_SEND_ON_BEHALF] support@kanzlei.example:[RIGHT_READ RIGHT_SEND_AS]]"
		if fmt.Sprint(got) != want {
			t.Errorf("visible = %v, want %v", got, want)
		}
		_, err := e.client.ListVisibleMailboxes(e.as("kanzlei", "martina"), &mailboxv1.ListVisibleMailboxesRequest{UserId: "max"})
		wantCode(t, err, codes.PermissionDenied)
	})
	t.Run("remove", func(t *testing.T) {
		must(e.client.RemoveMember(admin, &mailboxv1.RemoveMemberRequest{MailboxId: "support", UserId: "martina"}))(t)
		_, err := e.client.RemoveMember(admin, &mailboxv1.RemoveMemberRequest{MailboxId: "support", UserId: "martina"})
		wantCode(t, err, codes.NotFound)
		r := must(e.client.CheckSend(admin, &mailboxv1.CheckSendRequest{UserId: "martina", FromAddress: "support@kanzlei.example"}))(t)
		if r.GetAllowed() || r.GetDenyReason() != mailboxv1.DenyReason_DENY_REASON_NO_SEND_RIGHT {
			t.Errorf("after removal: %v", r)
		}
	})
}

func TestAllUsersMailboxIncludesLaterUsers(t *testing.T) {
	e := newEnv(t)
	admin := e.tenant("kanzlei")
	e.user(admin, "max", "Max Mustermann", "max@kanzlei.example")
	e.shared(admin, "info", "info@kanzlei.example", "Kanzlei Muster", true)
	e.user(admin, "neu", "Nora Neu", "neu@kanzlei.example")

	t.Run("the later user may send as the office address", func(t *testing.T) {
		r := must(e.client.CheckSend(e.as("kanzlei", "neu"), &mailboxv1.CheckSendRequest{FromAddress: "info@kanzlei.example"}))(t)
		if !r.GetAllowed() || r.GetMode() != mailboxv1.SendMode_SEND_MODE_SEND_AS || r.GetFrom() != `"Kanzlei Muster" <info@kanzlei.example>` {
			t.Errorf("CheckSend = %v", r)
		}
	})
	t.Run("the later user sees it", func(t *testing.T) {
		r := must(e.client.ListVisibleMailboxes(e.as("kanzlei", "neu"), &mailboxv1.ListVisibleMailboxesRequest{}))(t)
		if len(r.GetMailboxes()) != 1 || r.GetMailboxes()[0].GetSource() != mailboxv1.MembershipSource_MEMBERSHIP_SOURCE_ALL_USERS {
			t.Errorf("visible = %v", r.GetMailboxes())
		}
	})
	t.Run("members list every user", func(t *testing.T) {
		var got []string
		token := ""
		for range 5 {
			r := must(e.client.ListMembers(admin, &mailboxv1.ListMembersRequest{MailboxId: "info", PageSize: 1, PageToken: token}))(t)
			for _, m := range r.GetMembers() {
				got = append(got, m.GetUserId())
			}
			if token = r.GetNextPageToken(); token == "" {
				break
			}
		}
		if fmt.Sprint(got) != "[max neu]" {
			t.Errorf("members = %v", got)
		}
	})
	t.Run("an all-users member cannot be removed", func(t *testing.T) {
		_, err := e.client.RemoveMember(admin, &mailboxv1.RemoveMemberRequest{MailboxId: "info", UserId: "neu"})
		wantCode(t, err, codes.FailedPrecondition) // ALL_USERS_MEMBERSHIP: the membership comes from all-users
	})
}

func TestDefaultSender(t *testing.T) {
	e := newEnv(t)
	admin := e.tenant("kanzlei")
	e.user(admin, "martina", "Martina Musterfrau", "martina@kanzlei.example")
	e.personal(admin, "martina-pm", "martina", "musterfrau@kanzlei.example", "Martina Musterfrau")
	e.shared(admin, "info", "info@kanzlei.example", "Kanzlei Muster", false)
	e.shared(admin, "archive", "archive@kanzlei.example", "Archive", false)
	e.member(admin, "info", "martina", read, sendAs)
	e.member(admin, "archive", "martina", read)
	martina := e.as("kanzlei", "martina")

	defaultOf := func(t *testing.T) string {
		t.Helper()
		return must(e.client.GetUser(admin, &mailboxv1.GetUserRequest{UserId: "martina"}))(t).GetUser().GetDefaultSenderMailboxId()
	}
	setInfo := func(t *testing.T) {
		t.Helper()
		must(e.client.SetDefaultSender(martina, &mailboxv1.SetDefaultSenderRequest{MailboxId: "info"}))(t)
		if got := defaultOf(t); got != "info" {
			t.Fatalf("default = %q, want info", got)
		}
	}

	t.Run("a read-only mailbox cannot be the default", func(t *testing.T) {
		_, err := e.client.SetDefaultSender(martina, &mailboxv1.SetDefaultSenderRequest{MailboxId: "archive"})
		wantCode(t, err, codes.PermissionDenied)
	})
	t.Run("another user's default needs an admin", func(t *testing.T) {
		e.user(admin, "max", "Max", "max@kanzlei.example")
		_, err := e.client.SetDefaultSender(e.as("kanzlei", "max"), &mailboxv1.SetDefaultSenderRequest{UserId: "martina", MailboxId: "info"})
		wantCode(t, err, codes.PermissionDenied)
	})
	t.Run("removing the membership resets to the personal mailbox", func(t *testing.T) {
		setInfo(t)
		must(e.client.RemoveMember(admin, &mailboxv1.RemoveMemberRequest{MailboxId: "info", UserId: "martina"}))(t)
		if got := defaultOf(t); got != "martina-pm" {
			t.Errorf("default = %q, want martina-pm", got)
		}
	})
	t.Run("losing the send right resets", func(t *testing.T) {
		e.member(admin, "info", "martina", sendAs)
		setInfo(t)
		must(e.client.UpdateMember(admin, &mailboxv1.UpdateMemberRequest{MailboxId: "info", UserId: "martina", Rights: []mailboxv1.Right{read}}))(t)
		if got := defaultOf(t); got != "martina-pm" {
			t.Errorf("default = %q, want martina-pm", got)
		}
	})
	t.Run("turning all-users off resets those who relied on it", func(t *testing.T) {
		must(e.client.RemoveMember(admin, &mailboxv1.RemoveMemberRequest{MailboxId: "info", UserId: "martina"}))(t)
		must(e.client.UpdateMailbox(admin, &mailboxv1.UpdateMailboxRequest{
			Mailbox: &mailboxv1.Mailbox{MailboxId: "info", AllUsers: true}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"all_users"}},
		}))(t)
		setInfo(t)
		must(e.client.UpdateMailbox(admin, &mailboxv1.UpdateMailboxRequest{
			Mailbox: &mailboxv1.Mailbox{MailboxId: "info", AllUsers: false}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"all_users"}},
		}))(t)
		if got := defaultOf(t); got != "martina-pm" {
			t.Errorf("default = %q, want martina-pm", got)
		}
	})
	t.Run("deleting the mailbox resets", func(t *testing.T) {
		e.member(admin, "info", "martina", sendAs)
		setInfo(t)
		must(e.client.DeleteMailbox(admin, &mailboxv1.DeleteMailboxRequest{MailboxId: "info"}))(t)
		if got := defaultOf(t); got != "martina-pm" {
			t.Errorf("default = %q, want martina-pm", got)
		}
	})
	t.Run("deleting the personal mailbox leaves no default", func(t *testing.T) {
		must(e.client.DeleteMailbox(admin, &mailboxv1.DeleteMailboxRequest{MailboxId: "martina-pm"}))(t)
		if got := defaultOf(t); got != "" {
			t.Errorf("default = %q, want none", got)
		}
	})
}

func TestCheckSend(t *testing.T) {
	e := newEnv(t)
	admin := e.tenant("kanzlei")
	e.user(admin, "max", "Max Mustermann", "max@kanzlei.example")
	e.user(admin, "martina", "Martina Musterfrau", "martina@kanzlei.example")
	e.personal(admin, "max-pm", "max", "mustermann@kanzlei.example", "Max Mustermann")
	e.shared(admin, "info", "info@kanzlei.example", "Kanzlei Muster", false)
	e.member(admin, "info", "martina", onBehalf)

	tests := []struct {
		name, asUser, user, from string
		want                     *mailboxv1.CheckSendResponse
		code                     codes.Code
	}{
		{name: "own personal address", asUser: "max", from: "Mustermann@Kanzlei.Example",
			want: &mailboxv1.CheckSendResponse{Allowed: true, Mode: mailboxv1.SendMode_SEND_MODE_OWNER, MailboxId: "max-pm", From: `"Max Mustermann" <mustermann@kanzlei.example>`}},
		{name: "on behalf of the shared address", asUser: "martina", from: "info@kanzlei.example",
			want: &mailboxv1.CheckSendResponse{Allowed: true, Mode: mailboxv1.SendMode_SEND_MODE_ON_BEHALF, MailboxId: "info",
				From: `"Kanzlei Muster" <info@kanzlei.example>`, Sender: `"Martina Musterfrau" <martina@kanzlei.example>`}},
		{name: "not a member", asUser: "max", from: "info@kanzlei.example",
			want: &mailboxv1.CheckSendResponse{MailboxId: "info", DenyReason: mailboxv1.DenyReason_DENY_REASON_NO_SEND_RIGHT}},
		{name: "someone else's personal address", asUser: "martina", from: "mustermann@kanzlei.example",
			want: &mailboxv1.CheckSendResponse{MailboxId: "max-pm", DenyReason: mailboxv1.DenyReason_DENY_REASON_NO_SEND_RIGHT}},
		{name: "unknown address", asUser: "max", from: "nobody@kanzlei.example",
			want: &mailboxv1.CheckSendResponse{DenyReason: mailboxv1.DenyReason_DENY_REASON_UNKNOWN_ADDRESS}},
		{name: "admin asks for an unknown user", asUser: "admin", user: "ghost", from: "info@kanzlei.example",
			want: &mailboxv1.CheckSendResponse{DenyReason: mailboxv1.DenyReason_DENY_REASON_UNKNOWN_USER}},
		{name: "a service asks for a user", asUser: "service:outbox", user: "martina", from: "info@kanzlei.example",
			want: &mailboxv1.CheckSendResponse{Allowed: true, Mode: mailboxv1.SendMode_SEND_MODE_ON_BEHALF, MailboxId: "info",
				From: `"Kanzlei Muster" <info@kanzlei.example>`, Sender: `"Martina Musterfrau" <martina@kanzlei.example>`}},
		{name: "a user asks for another", asUser: "max", user: "martina", from: "info@kanzlei.example", code: codes.PermissionDenied},
		{name: "header injection in the address", asUser: "max", from: "info@kanzlei.example\r\nBcc: x@y", code: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ctx context.Context
			switch tt.asUser {
			case "admin":
				ctx = admin
			case "service:outbox":
				ctx = e.service("kanzlei", "outbox")
			default:
				ctx = e.as("kanzlei", tt.asUser)
			}
			got, err := e.client.CheckSend(ctx, &mailboxv1.CheckSendRequest{UserId: tt.user, FromAddress: tt.from})
			if tt.code != codes.OK {
				wantCode(t, err, tt.code)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tt.want.String() {
				t.Errorf("CheckSend = {%v}, want {%v}", got, tt.want)
			}
		})
	}
}

// TestSystemSender: a service asking without a user asks for the system, which may send
// system-generated mail as any mailbox of the tenant; unknown addresses are denied, and users
// still ask only for themselves.
func TestSystemSender(t *testing.T) {
	e := newEnv(t)
	admin := e.tenant("kanzlei")
	e.shared(admin, "info", "info@kanzlei.example", "Kanzlei Muster", false)
	svc := e.service("kanzlei", "outbox")

	r := must(e.client.CheckSend(svc, &mailboxv1.CheckSendRequest{FromAddress: "info@kanzlei.example"}))(t)
	if !r.GetAllowed() || r.GetMode() != mailboxv1.SendMode_SEND_MODE_SEND_AS || r.GetMailboxId() != "info" || r.GetFrom() != `"Kanzlei Muster" <info@kanzlei.example>` {
		t.Errorf("system CheckSend = %v", r)
	}
	r = must(e.client.CheckSend(svc, &mailboxv1.CheckSendRequest{FromAddress: "unbekannt@kanzlei.example"}))(t)
	if r.GetAllowed() || r.GetDenyReason() != mailboxv1.DenyReason_DENY_REASON_UNKNOWN_ADDRESS {
		t.Errorf("unknown address = %v", r)
	}
	r = must(e.client.CheckSend(e.service("andere", "outbox"), &mailboxv1.CheckSendRequest{FromAddress: "info@kanzlei.example"}))(t)
	if r.GetAllowed() {
		t.Errorf("another tenant's system may send as kanzlei's mailbox: %v", r)
	}
	e.user(admin, "eva", "Eva Beispiel", "eva@kanzlei.example")
	r = must(e.client.CheckSend(e.as("kanzlei", "eva"), &mailboxv1.CheckSendRequest{FromAddress: "info@kanzlei.example"}))(t)
	if r.GetAllowed() {
		t.Errorf("a user without rights asking for herself is allowed: %v", r)
	}
}
