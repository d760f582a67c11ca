package app_test

import (
	"context"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/postamt/postamt/internal/testkit/fieldtest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
)

// TestHeaderFieldsRefuseLineBreaks: CR, LF, CRLF and NUL in every field of the mailbox API that
// ends up in a mail header (display names in From and Sender, addresses), in the directory or in
// a key (ids) is INVALID_ARGUMENT naming the field, and nothing is stored.
func TestHeaderFieldsRefuseLineBreaks(t *testing.T) {
	e := startContractEnv(t)
	ctx := e.admin()
	c := e.c
	mask := func(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }
	user := func(edit func(*mailboxv1.User)) *mailboxv1.User {
		u := &mailboxv1.User{UserId: "neu", DisplayName: "Neu", Email: "neu@kanzlei.example", DirectoryUsername: `KANZLEI\neu`, PracticeUsername: "neu", Roles: []string{"admin"}}
		edit(u)
		return u
	}
	mailbox := func(edit func(*mailboxv1.Mailbox)) *mailboxv1.Mailbox {
		m := &mailboxv1.Mailbox{MailboxId: "neu", Address: "neu-box@kanzlei.example", DisplayName: "Neu", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED}
		edit(m)
		return m
	}
	type call func(ctx context.Context, bad func(string) string) error
	for _, tc := range []struct {
		rpc, field string
		call       call
	}{
		{"CreateTenant", "tenant.display_name", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateTenant(ctx, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "neu", DisplayName: bad("Kanzlei Neu")}})
			return err
		}},
		{"CreateTenant", "tenant.tenant_id", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateTenant(ctx, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: bad("neu")}})
			return err
		}},
		{"UpdateTenant", "tenant.display_name", func(ctx context.Context, bad func(string) string) error {
			_, err := c.UpdateTenant(ctx, &mailboxv1.UpdateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "kanzlei", DisplayName: bad("Kanzlei")}, UpdateMask: mask("display_name")})
			return err
		}},
		{"UpdateTenant", "update_mask", func(ctx context.Context, bad func(string) string) error {
			_, err := c.UpdateTenant(ctx, &mailboxv1.UpdateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "kanzlei", DisplayName: "Kanzlei"}, UpdateMask: mask(bad("display_name"))})
			return err
		}},
		{"CreateUser", "user.user_id", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: user(func(u *mailboxv1.User) { u.UserId = bad(u.UserId) })})
			return err
		}},
		{"CreateUser", "user.display_name", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: user(func(u *mailboxv1.User) { u.DisplayName = bad("Martina Neu") })})
			return err
		}},
		{"CreateUser", "user.email", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: user(func(u *mailboxv1.User) { u.Email = bad(u.Email) })})
			return err
		}},
		{"CreateUser", "user.directory_username", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: user(func(u *mailboxv1.User) { u.DirectoryUsername = bad(u.DirectoryUsername) })})
			return err
		}},
		{"CreateUser", "user.practice_username", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: user(func(u *mailboxv1.User) { u.PracticeUsername = bad(u.PracticeUsername) })})
			return err
		}},
		{"CreateUser", "user.roles[1]", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: user(func(u *mailboxv1.User) { u.Roles = []string{"admin", bad("crm")} })})
			return err
		}},
		{"UpdateUser", "user.display_name", func(ctx context.Context, bad func(string) string) error {
			_, err := c.UpdateUser(ctx, &mailboxv1.UpdateUserRequest{User: &mailboxv1.User{UserId: "max", DisplayName: bad("Max Muster")}, UpdateMask: mask("display_name")})
			return err
		}},
		{"UpdateUser", "user.email", func(ctx context.Context, bad func(string) string) error {
			_, err := c.UpdateUser(ctx, &mailboxv1.UpdateUserRequest{User: &mailboxv1.User{UserId: "max", Email: bad("max2@kanzlei.example")}, UpdateMask: mask("email")})
			return err
		}},
		{"UpdateUser", "user.directory_username", func(ctx context.Context, bad func(string) string) error {
			_, err := c.UpdateUser(ctx, &mailboxv1.UpdateUserRequest{User: &mailboxv1.User{UserId: "max", DirectoryUsername: bad(`KANZLEI\max`)}, UpdateMask: mask("directory_username")})
			return err
		}},
		{"UpdateUser", "user.practice_username", func(ctx context.Context, bad func(string) string) error {
			_, err := c.UpdateUser(ctx, &mailboxv1.UpdateUserRequest{User: &mailboxv1.User{UserId: "max", PracticeUsername: bad("max")}, UpdateMask: mask("practice_username")})
			return err
		}},
		{"CreateTeam", "team.display_name", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateTeam(ctx, &mailboxv1.CreateTeamRequest{Team: &mailboxv1.Team{TeamId: "empfang", DisplayName: bad("Empfang")}})
			return err
		}},
		{"CreateTeam", "team.member_user_ids[0]", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateTeam(ctx, &mailboxv1.CreateTeamRequest{Team: &mailboxv1.Team{TeamId: "empfang", DisplayName: "Empfang", MemberUserIds: []string{bad("max")}}})
			return err
		}},
		{"CreateTeam", "team.lead_user_ids[0]", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateTeam(ctx, &mailboxv1.CreateTeamRequest{Team: &mailboxv1.Team{TeamId: "empfang", DisplayName: "Empfang", LeadUserIds: []string{bad("max")}}})
			return err
		}},
		{"CreateMailbox", "mailbox.mailbox_id", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: mailbox(func(m *mailboxv1.Mailbox) { m.MailboxId = bad(m.MailboxId) })})
			return err
		}},
		{"CreateMailbox", "mailbox.address", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: mailbox(func(m *mailboxv1.Mailbox) { m.Address = bad(m.Address) })})
			return err
		}},
		{"CreateMailbox", "mailbox.display_name", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: mailbox(func(m *mailboxv1.Mailbox) { m.DisplayName = bad("Kanzlei Neu") })})
			return err
		}},
		{"UpdateMailbox", "mailbox.display_name", func(ctx context.Context, bad func(string) string) error {
			_, err := c.UpdateMailbox(ctx, &mailboxv1.UpdateMailboxRequest{Mailbox: &mailboxv1.Mailbox{MailboxId: "info", DisplayName: bad("Info")}, UpdateMask: mask("display_name")})
			return err
		}},
		{"UpdateMailbox", "mailbox.address", func(ctx context.Context, bad func(string) string) error {
			_, err := c.UpdateMailbox(ctx, &mailboxv1.UpdateMailboxRequest{Mailbox: &mailboxv1.Mailbox{MailboxId: "info", Address: bad("info2@kanzlei.example")}, UpdateMask: mask("address")})
			return err
		}},
		{"AddMember", "user_id", func(ctx context.Context, bad func(string) string) error {
			_, err := c.AddMember(ctx, &mailboxv1.AddMemberRequest{MailboxId: "info", UserId: bad("eva"), Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_READ}})
			return err
		}},
		{"SetDefaultSender", "mailbox_id", func(ctx context.Context, bad func(string) string) error {
			_, err := c.SetDefaultSender(ctx, &mailboxv1.SetDefaultSenderRequest{UserId: "max", MailboxId: bad("info")})
			return err
		}},
		{"CheckSend", "from_address", func(ctx context.Context, bad func(string) string) error {
			_, err := c.CheckSend(ctx, &mailboxv1.CheckSendRequest{UserId: "max", FromAddress: bad("info@kanzlei.example")})
			return err
		}},
	} {
		for _, b := range fieldtest.Breakers {
			for _, bad := range []struct {
				name string
				f    func(string) string
			}{{"inside", b.Break}, {"header injected", b.Inject}} {
				t.Run(tc.rpc+"/"+tc.field+"/"+b.Name+" "+bad.name, func(t *testing.T) {
					before := e.snapshot(ctx)
					fieldtest.WantViolation(t, tc.call(ctx, bad.f), tc.field)
					fieldtest.Unchanged(t, before, e.snapshot(ctx))
				})
			}
		}
	}
}

// snapshot is everything the contract env's tenant stores, as the list calls show it.
func (e *contractEnv) snapshot(ctx context.Context) []proto.Message {
	e.t.Helper()
	var out []proto.Message
	add := func(m proto.Message, err error) {
		e.t.Helper()
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, m)
	}
	add(e.c.ListTenants(ctx, &mailboxv1.ListTenantsRequest{PageSize: 500}))
	add(e.c.ListUsers(ctx, &mailboxv1.ListUsersRequest{PageSize: 500}))
	add(e.c.ListTeams(ctx, &mailboxv1.ListTeamsRequest{PageSize: 500}))
	add(e.c.ListMailboxes(ctx, &mailboxv1.ListMailboxesRequest{PageSize: 500}))
	add(e.c.ListMembers(ctx, &mailboxv1.ListMembersRequest{MailboxId: "info", PageSize: 500}))
	return out
}
