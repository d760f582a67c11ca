package grpcapi_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
)

func TestAuthentication(t *testing.T) {
	e := newEnv(t)
	t.Run("no token is unauthenticated", func(t *testing.T) {
		_, err := e.client.GetTenant(context.Background(), &mailboxv1.GetTenantRequest{})
		wantCode(t, err, codes.Unauthenticated)
	})
	t.Run("health stays open", func(t *testing.T) {
		_, err := grpc_health_v1.NewHealthClient(e.conn).Check(context.Background(), &grpc_health_v1.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("health without a token: %v", err)
		}
	})
}

func TestTenants(t *testing.T) {
	e := newEnv(t)
	op := e.operator()
	must(e.client.CreateTenant(op, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "kanzlei", DisplayName: "Kanzlei Muster"}}))(t)

	t.Run("duplicate", func(t *testing.T) {
		_, err := e.client.CreateTenant(op, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "kanzlei"}})
		wantCode(t, err, codes.AlreadyExists)
	})
	t.Run("invalid id", func(t *testing.T) {
		_, err := e.client.CreateTenant(op, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "Not Valid"}})
		wantField(t, err, "tenant.tenant_id")
	})
	t.Run("non-operator may not create", func(t *testing.T) {
		_, err := e.client.CreateTenant(e.as("kanzlei", "admin", "admin"), &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "other"}})
		wantCode(t, err, codes.PermissionDenied)
	})
	t.Run("own tenant", func(t *testing.T) {
		got := must(e.client.GetTenant(e.as("kanzlei", "u"), &mailboxv1.GetTenantRequest{}))(t)
		if got.GetTenant().GetDisplayName() != "Kanzlei Muster" {
			t.Errorf("display name = %q", got.GetTenant().GetDisplayName())
		}
	})
	t.Run("another tenant is not found", func(t *testing.T) {
		must(e.client.CreateTenant(op, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "secret"}}))(t)
		_, err := e.client.GetTenant(e.as("kanzlei", "u", "admin"), &mailboxv1.GetTenantRequest{TenantId: "secret"})
		wantCode(t, err, codes.NotFound)
	})
	t.Run("list pages", func(t *testing.T) {
		for i := range 5 {
			must(e.client.CreateTenant(op, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: fmt.Sprintf("page-%d", i)}}))(t)
		}
		var got []string
		token := ""
		for {
			r := must(e.client.ListTenants(op, &mailboxv1.ListTenantsRequest{PageSize: 3, PageToken: token}))(t)
			for _, t := range r.GetTenants() {
				got = append(got, t.GetTenantId())
			}
			if token = r.GetNextPageToken(); token == "" {
				break
			}
		}
		want := []string{"kanzlei", "page-0", "page-1", "page-2", "page-3", "page-4", "secret"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("tenants = %v, want %v", got, want)
		}
	})
	t.Run("update by admin", func(t *testing.T) {
		r := must(e.client.UpdateTenant(e.as("kanzlei", "a", "admin"), &mailboxv1.UpdateTenantRequest{
			Tenant:     &mailboxv1.Tenant{DisplayName: "Kanzlei Muster & Partner"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}},
		}))(t)
		if r.GetTenant().GetDisplayName() != "Kanzlei Muster & Partner" || r.GetTenant().GetVersion() != 2 {
			t.Errorf("updated tenant = %v", r.GetTenant())
		}
	})
	t.Run("delete refuses a tenant with users", func(t *testing.T) {
		e.user(e.as("kanzlei", "a", "admin"), "max", "Max", "max@kanzlei.example")
		_, err := e.client.DeleteTenant(op, &mailboxv1.DeleteTenantRequest{TenantId: "kanzlei"})
		wantCode(t, err, codes.FailedPrecondition)
	})
	t.Run("delete an empty tenant", func(t *testing.T) {
		must(e.client.DeleteTenant(op, &mailboxv1.DeleteTenantRequest{TenantId: "secret"}))(t)
		_, err := e.client.GetTenant(op, &mailboxv1.GetTenantRequest{TenantId: "secret"})
		wantCode(t, err, codes.NotFound)
	})
}

func TestUsers(t *testing.T) {
	e := newEnv(t)
	admin := e.tenant("kanzlei")
	e.user(admin, "max", "Max Mustermann", "Mustermann@Kanzlei.example")

	tests := []struct {
		name string
		ctx  context.Context
		user *mailboxv1.User
		code codes.Code
		fld  string
	}{
		{"duplicate id", admin, &mailboxv1.User{UserId: "max", DisplayName: "X", Email: "x@kanzlei.example"}, codes.AlreadyExists, ""},
		{"duplicate email, other case", admin, &mailboxv1.User{UserId: "max2", DisplayName: "X", Email: "mustermann@kanzlei.EXAMPLE"}, codes.AlreadyExists, ""},
		{"invalid email", admin, &mailboxv1.User{UserId: "u1", DisplayName: "X", Email: "not an address"}, codes.InvalidArgument, "user.email"},
		{"display name with CR LF", admin, &mailboxv1.User{UserId: "u2", DisplayName: "X\r\nBcc: evil@example.com", Email: "u2@kanzlei.example"}, codes.InvalidArgument, "user.display_name"},
		{"email with a display name", admin, &mailboxv1.User{UserId: "u3", DisplayName: "X", Email: "X <u3@kanzlei.example>"}, codes.InvalidArgument, "user.email"},
		{"bad role", admin, &mailboxv1.User{UserId: "u4", DisplayName: "X", Email: "u4@kanzlei.example", Roles: []string{"Admin!"}}, codes.InvalidArgument, "user.roles[0]"},
		{"non-admin", e.as("kanzlei", "max"), &mailboxv1.User{UserId: "u5", DisplayName: "X", Email: "u5@kanzlei.example"}, codes.PermissionDenied, ""},
		{"unknown tenant", e.as("nowhere", "a", "admin"), &mailboxv1.User{UserId: "u6", DisplayName: "X", Email: "u6@kanzlei.example"}, codes.FailedPrecondition, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.client.CreateUser(tt.ctx, &mailboxv1.CreateUserRequest{User: tt.user})
			if tt.fld != "" {
				wantField(t, err, tt.fld)
				return
			}
			wantCode(t, err, tt.code)
		})
	}

	t.Run("email is normalised", func(t *testing.T) {
		got := must(e.client.GetUser(admin, &mailboxv1.GetUserRequest{UserId: "max"}))(t)
		if got.GetUser().GetEmail() != "mustermann@kanzlei.example" {
			t.Errorf("email = %q", got.GetUser().GetEmail())
		}
	})
	t.Run("generated id", func(t *testing.T) {
		u := e.user(admin, "", "Nameless", "nameless@kanzlei.example")
		if len(u.GetUserId()) != 20 {
			t.Errorf("generated id %q", u.GetUserId())
		}
	})
	t.Run("unknown user", func(t *testing.T) {
		_, err := e.client.GetUser(admin, &mailboxv1.GetUserRequest{UserId: "nobody"})
		wantCode(t, err, codes.NotFound)
	})
	t.Run("user of another tenant is not found", func(t *testing.T) {
		other := e.tenant("other")
		_, err := e.client.GetUser(other, &mailboxv1.GetUserRequest{UserId: "max"})
		wantCode(t, err, codes.NotFound)
	})
	t.Run("update with mask", func(t *testing.T) {
		r := must(e.client.UpdateUser(admin, &mailboxv1.UpdateUserRequest{
			User:       &mailboxv1.User{UserId: "max", PracticeUsername: "mmustermann", DisplayName: "ignored"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"practice_username"}},
		}))(t)
		if u := r.GetUser(); u.GetPracticeUsername() != "mmustermann" || u.GetDisplayName() != "Max Mustermann" || u.GetVersion() != 2 {
			t.Errorf("updated user = %v", u)
		}
	})
	t.Run("update with unknown mask path", func(t *testing.T) {
		_, err := e.client.UpdateUser(admin, &mailboxv1.UpdateUserRequest{
			User: &mailboxv1.User{UserId: "max"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"version"}},
		})
		wantField(t, err, "update_mask")
	})
	t.Run("update to a taken email", func(t *testing.T) {
		e.user(admin, "martina", "Martina", "martina@kanzlei.example")
		_, err := e.client.UpdateUser(admin, &mailboxv1.UpdateUserRequest{
			User: &mailboxv1.User{UserId: "martina", Email: "mustermann@kanzlei.example"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"email"}},
		})
		wantCode(t, err, codes.AlreadyExists)
	})
	t.Run("list pages", func(t *testing.T) {
		var got []string
		token := ""
		for range 10 {
			r := must(e.client.ListUsers(admin, &mailboxv1.ListUsersRequest{PageSize: 1, PageToken: token}))(t)
			for _, u := range r.GetUsers() {
				got = append(got, u.GetUserId())
			}
			if token = r.GetNextPageToken(); token == "" {
				break
			}
		}
		// Three users, each once, ordered by id (the generated id sorts anywhere).
		if len(got) != 3 || !slices.IsSorted(got) || !slices.Contains(got, "martina") || !slices.Contains(got, "max") {
			t.Errorf("users = %v", got)
		}
	})
	t.Run("bad page token", func(t *testing.T) {
		_, err := e.client.ListUsers(admin, &mailboxv1.ListUsersRequest{PageToken: "!!"})
		wantField(t, err, "page_token")
	})
	t.Run("delete", func(t *testing.T) {
		must(e.client.DeleteUser(admin, &mailboxv1.DeleteUserRequest{UserId: "martina"}))(t)
		_, err := e.client.GetUser(admin, &mailboxv1.GetUserRequest{UserId: "martina"})
		wantCode(t, err, codes.NotFound)
		_, err = e.client.DeleteUser(admin, &mailboxv1.DeleteUserRequest{UserId: "martina"})
		wantCode(t, err, codes.NotFound)
	})
	t.Run("delete refuses the owner of a personal mailbox", func(t *testing.T) {
		e.personal(admin, "max-pm", "max", "mustermann@kanzlei.example", "Max Mustermann")
		_, err := e.client.DeleteUser(admin, &mailboxv1.DeleteUserRequest{UserId: "max"})
		wantCode(t, err, codes.FailedPrecondition)
	})
}

func TestTeams(t *testing.T) {
	e := newEnv(t)
	admin := e.tenant("kanzlei")
	e.user(admin, "max", "Max", "max@kanzlei.example")
	e.user(admin, "martina", "Martina", "martina@kanzlei.example")

	t.Run("unknown member", func(t *testing.T) {
		_, err := e.client.CreateTeam(admin, &mailboxv1.CreateTeamRequest{Team: &mailboxv1.Team{TeamId: "t", DisplayName: "T", MemberUserIds: []string{"ghost"}}})
		wantCode(t, err, codes.NotFound)
	})
	t.Run("missing name", func(t *testing.T) {
		_, err := e.client.CreateTeam(admin, &mailboxv1.CreateTeamRequest{Team: &mailboxv1.Team{TeamId: "t"}})
		wantField(t, err, "team.display_name")
	})
	team := must(e.client.CreateTeam(admin, &mailboxv1.CreateTeamRequest{Team: &mailboxv1.Team{
		TeamId: "litigation", DisplayName: "Litigation", MemberUserIds: []string{"max", "martina"}, LeadUserIds: []string{"martina"},
	}}))(t).GetTeam()
	if fmt.Sprint(team.GetMemberUserIds()) != "[martina max]" {
		t.Errorf("members = %v", team.GetMemberUserIds())
	}
	t.Run("duplicate", func(t *testing.T) {
		_, err := e.client.CreateTeam(admin, &mailboxv1.CreateTeamRequest{Team: &mailboxv1.Team{TeamId: "litigation", DisplayName: "L"}})
		wantCode(t, err, codes.AlreadyExists)
	})
	t.Run("update", func(t *testing.T) {
		r := must(e.client.UpdateTeam(admin, &mailboxv1.UpdateTeamRequest{
			Team: &mailboxv1.Team{TeamId: "litigation", LeadUserIds: []string{"max"}}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"lead_user_ids"}},
		}))(t)
		if fmt.Sprint(r.GetTeam().GetLeadUserIds()) != "[max]" || len(r.GetTeam().GetMemberUserIds()) != 2 {
			t.Errorf("team = %v", r.GetTeam())
		}
	})
	t.Run("deleting a user takes them out of teams", func(t *testing.T) {
		must(e.client.DeleteUser(admin, &mailboxv1.DeleteUserRequest{UserId: "martina"}))(t)
		got := must(e.client.GetTeam(admin, &mailboxv1.GetTeamRequest{TeamId: "litigation"}))(t).GetTeam()
		if fmt.Sprint(got.GetMemberUserIds()) != "[max]" {
			t.Errorf("members after delete = %v", got.GetMemberUserIds())
		}
	})
	t.Run("list and delete", func(t *testing.T) {
		r := must(e.client.ListTeams(admin, &mailboxv1.ListTeamsRequest{}))(t)
		if len(r.GetTeams()) != 1 {
			t.Fatalf("teams = %v", r.GetTeams())
		}
		must(e.client.DeleteTeam(admin, &mailboxv1.DeleteTeamRequest{TeamId: "litigation"}))(t)
		_, err := e.client.GetTeam(admin, &mailboxv1.GetTeamRequest{TeamId: "litigation"})
		wantCode(t, err, codes.NotFound)
	})
}

func TestMailboxes(t *testing.T) {
	e := newEnv(t)
	admin := e.tenant("kanzlei")
	e.user(admin, "max", "Max Mustermann", "max@kanzlei.example")

	t.Run("personal mailbox becomes the owner's default sender", func(t *testing.T) {
		e.personal(admin, "max-pm", "max", "Mustermann@kanzlei.example", "Max Mustermann")
		u := must(e.client.GetUser(admin, &mailboxv1.GetUserRequest{UserId: "max"}))(t).GetUser()
		if u.GetDefaultSenderMailboxId() != "max-pm" {
			t.Errorf("default sender = %q", u.GetDefaultSenderMailboxId())
		}
	})
	t.Run("second personal mailbox for the same owner", func(t *testing.T) {
		_, err := e.client.CreateMailbox(admin, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
			MailboxId: "max-pm2", Address: "max2@kanzlei.example", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL, OwnerUserId: "max",
		}})
		wantCode(t, err, codes.FailedPrecondition)
	})
	info := e.shared(admin, "info", "info@kanzlei.example", "Kanzlei Muster", false)
	t.Run("shared mailbox gets the 50 GB quota", func(t *testing.T) {
		if info.GetQuotaBytes() != 50_000_000_000 || info.GetSyncKind() != mailboxv1.SyncKind_SYNC_KIND_NONE {
			t.Errorf("mailbox = %v", info)
		}
	})

	tests := []struct {
		name string
		mb   *mailboxv1.Mailbox
		code codes.Code
		fld  string
	}{
		{"duplicate address, other case", &mailboxv1.Mailbox{MailboxId: "x", Address: "INFO@kanzlei.example", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED}, codes.AlreadyExists, ""},
		{"duplicate id", &mailboxv1.Mailbox{MailboxId: "info", Address: "other@kanzlei.example", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED}, codes.AlreadyExists, ""},
		{"no kind", &mailboxv1.Mailbox{MailboxId: "x", Address: "x@kanzlei.example"}, codes.InvalidArgument, "mailbox.kind"},
		{"bad address", &mailboxv1.Mailbox{MailboxId: "x", Address: "x@", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED}, codes.InvalidArgument, "mailbox.address"},
		{"address with CRLF", &mailboxv1.Mailbox{MailboxId: "x", Address: "x@kanzlei.example\r\nBcc: y@z", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED}, codes.InvalidArgument, "mailbox.address"},
		{"personal without owner", &mailboxv1.Mailbox{MailboxId: "x", Address: "x@kanzlei.example", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL}, codes.InvalidArgument, "mailbox.owner_user_id"},
		{"personal of an unknown owner", &mailboxv1.Mailbox{MailboxId: "x", Address: "x@kanzlei.example", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL, OwnerUserId: "ghost"}, codes.NotFound, ""},
		{"personal all-users", &mailboxv1.Mailbox{MailboxId: "x", Address: "x@kanzlei.example", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL, OwnerUserId: "max", AllUsers: true}, codes.InvalidArgument, "mailbox.all_users"},
		{"negative quota", &mailboxv1.Mailbox{MailboxId: "x", Address: "x@kanzlei.example", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED, QuotaBytes: -1}, codes.InvalidArgument, "mailbox.quota_bytes"},
		{"unknown right", &mailboxv1.Mailbox{MailboxId: "x", Address: "x@kanzlei.example", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED, AllUsers: true, AllUsersRights: []mailboxv1.Right{99}}, codes.InvalidArgument, "mailbox.all_users_rights"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.client.CreateMailbox(admin, &mailboxv1.CreateMailboxRequest{Mailbox: tt.mb})
			if tt.fld != "" {
				wantField(t, err, tt.fld)
				return
			}
			wantCode(t, err, tt.code)
		})
	}

	t.Run("usage over quota needs a licence", func(t *testing.T) {
		r := must(e.client.SetMailboxUsage(admin, &mailboxv1.SetMailboxUsageRequest{MailboxId: "info", UsageBytes: 50_000_000_001}))(t)
		if !r.GetMailbox().GetOverQuota() || !r.GetMailbox().GetNeedsLicense() {
			t.Errorf("mailbox = %v", r.GetMailbox())
		}
		_, err := e.client.SetMailboxUsage(admin, &mailboxv1.SetMailboxUsageRequest{MailboxId: "info", UsageBytes: -1})
		wantField(t, err, "usage_bytes")
	})
	t.Run("sync kind for tracker", func(t *testing.T) {
		r := must(e.client.UpdateMailbox(admin, &mailboxv1.UpdateMailboxRequest{
			Mailbox:    &mailboxv1.Mailbox{MailboxId: "info", SyncKind: mailboxv1.SyncKind_SYNC_KIND_EXCHANGE},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"sync_kind"}},
		}))(t)
		if r.GetMailbox().GetSyncKind() != mailboxv1.SyncKind_SYNC_KIND_EXCHANGE || r.GetMailbox().GetDisplayName() != "Kanzlei Muster" {
			t.Errorf("mailbox = %v", r.GetMailbox())
		}
	})
	t.Run("non-admin sees only own mailboxes", func(t *testing.T) {
		maxCtx := e.as("kanzlei", "max")
		must(e.client.GetMailbox(maxCtx, &mailboxv1.GetMailboxRequest{MailboxId: "max-pm"}))(t)
		_, err := e.client.GetMailbox(maxCtx, &mailboxv1.GetMailboxRequest{MailboxId: "info"})
		wantCode(t, err, codes.NotFound)
		_, err = e.client.ListMailboxes(maxCtx, &mailboxv1.ListMailboxesRequest{})
		wantCode(t, err, codes.PermissionDenied)
	})
	t.Run("list", func(t *testing.T) {
		r := must(e.client.ListMailboxes(admin, &mailboxv1.ListMailboxesRequest{}))(t)
		if len(r.GetMailboxes()) != 2 {
			t.Errorf("mailboxes = %v", r.GetMailboxes())
		}
	})
	t.Run("address change moves the send check", func(t *testing.T) {
		e.user(admin, "martina", "Martina", "martina@kanzlei.example")
		e.member(admin, "info", "martina", mailboxv1.Right_RIGHT_SEND_AS)
		must(e.client.UpdateMailbox(admin, &mailboxv1.UpdateMailboxRequest{
			Mailbox: &mailboxv1.Mailbox{MailboxId: "info", Address: "kanzlei@kanzlei.example"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"address"}},
		}))(t)
		old := must(e.client.CheckSend(admin, &mailboxv1.CheckSendRequest{UserId: "martina", FromAddress: "info@kanzlei.example"}))(t)
		if old.GetAllowed() || old.GetDenyReason() != mailboxv1.DenyReason_DENY_REASON_UNKNOWN_ADDRESS {
			t.Errorf("old address: %v", old)
		}
		cur := must(e.client.CheckSend(admin, &mailboxv1.CheckSendRequest{UserId: "martina", FromAddress: "kanzlei@kanzlei.example"}))(t)
		if !cur.GetAllowed() || cur.GetMode() != mailboxv1.SendMode_SEND_MODE_SEND_AS {
			t.Errorf("new address: %v", cur)
		}
	})
	t.Run("delete", func(t *testing.T) {
		must(e.client.DeleteMailbox(admin, &mailboxv1.DeleteMailboxRequest{MailboxId: "info"}))(t)
		_, err := e.client.GetMailbox(admin, &mailboxv1.GetMailboxRequest{MailboxId: "info"})
		wantCode(t, err, codes.NotFound)
		r := must(e.client.CheckSend(admin, &mailboxv1.CheckSendRequest{UserId: "martina", FromAddress: "kanzlei@kanzlei.example"}))(t)
		if r.GetAllowed() {
			t.Errorf("send from a deleted mailbox allowed: %v", r)
		}
		_, err = e.client.DeleteMailbox(admin, &mailboxv1.DeleteMailboxRequest{MailboxId: "info"})
		wantCode(t, err, codes.NotFound)
	})
}
