package app_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/logtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/mailbox/app"
)

// contractEnv is the mailbox served over gRPC on the test suite's Redis (redistest.Suite), or on
// a spawned Redis the test may kill, with its log in a buffer.
type contractEnv struct {
	t      *testing.T
	redis  *redistest.Server // nil on the suite's Redis
	signer *auth.Signer
	log    *logtest.Buffer
	c      mailboxv1.MailboxServiceClient
}

func startContractEnv(t *testing.T) *contractEnv {
	t.Helper()
	return newContractEnv(t, redistest.Suite(t), nil)
}

// startOutageEnv is a contractEnv on a Redis of its own, for a test that kills it.
func startOutageEnv(t *testing.T) *contractEnv {
	t.Helper()
	rs := redistest.Start(t)
	return newContractEnv(t, rs.Client(t), rs)
}

func newContractEnv(t *testing.T, rdb redis.UniversalClient, rs *redistest.Server) *contractEnv {
	t.Helper()
	ns := natstest.Start(t)
	verifier, signer := authtest.Keys(t)
	logs := &logtest.Buffer{}
	a, err := app.New(app.Config{RelayBatch: 64, RelayClaimIdle: time.Second}, app.Deps{
		Logger: slog.New(slog.NewTextHandler(logs, nil)), Redis: rdb, JS: ns.JetStream(t), Verifier: verifier,
		Metrics: prometheus.NewRegistry(), Server: grpcserver.Options{ReadinessInterval: 50 * time.Millisecond, DrainDelay: time.Millisecond, DrainTimeout: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	e := &contractEnv{t: t, redis: rs, signer: signer, log: logs,
		c: mailboxv1.NewMailboxServiceClient(servetest.Dial(t, servetest.Run(t, a.Run)))}
	ctx := e.admin()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(e.c.CreateTenant(ctx, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "kanzlei"}}))
	for _, u := range []string{"max", "eva"} {
		must(e.c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: u, DisplayName: u, Email: u + "@kanzlei.example"}}))
	}
	must(e.c.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
		MailboxId: "info", Address: "info@kanzlei.example", DisplayName: "Info", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED,
		AllUsers: true,
	}}))
	return e
}

func (e *contractEnv) admin() context.Context {
	return authtest.Outgoing(e.t, e.signer, auth.Principal{Tenant: "kanzlei", User: "admin", Roles: []string{auth.RoleAdmin, "operator"}})
}

// wantCode fails the test unless err has code want, and returns the status.
func wantCode(t *testing.T, err error, want codes.Code) *status.Status {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != want {
		t.Fatalf("code = %s (%q), want %s", st.Code(), st.Message(), want)
	}
	return st
}

// badFields are the fields of the BadRequest detail of st.
func badFields(st *status.Status) []string {
	var out []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, v.GetField())
			}
		}
	}
	return out
}

func hasRetryInfo(st *status.Status) bool {
	for _, d := range st.Details() {
		if _, ok := d.(*errdetails.RetryInfo); ok {
			return true
		}
	}
	return false
}

// TestRedisOutageIsUnavailable kills Redis under a running mailbox: every call is UNAVAILABLE
// with RetryInfo (not INTERNAL, which means a bug), and the log says so at WARN, naming the
// dependency.
func TestRedisOutageIsUnavailable(t *testing.T) {
	e := startOutageEnv(t)
	ctx := e.admin()
	if _, err := e.c.GetUser(ctx, &mailboxv1.GetUserRequest{UserId: "max"}); err != nil {
		t.Fatal(err)
	}
	e.redis.Kill()
	calls := map[string]func() error{
		"GetUser": func() error {
			_, err := e.c.GetUser(ctx, &mailboxv1.GetUserRequest{UserId: "max"})
			return err
		},
		"CreateUser": func() error {
			_, err := e.c.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: "neu", DisplayName: "Neu", Email: "neu@kanzlei.example"}})
			return err
		},
		"ListMailboxes": func() error {
			_, err := e.c.ListMailboxes(ctx, &mailboxv1.ListMailboxesRequest{})
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			st := wantCode(t, call(), codes.Unavailable)
			if !hasRetryInfo(st) {
				t.Errorf("no RetryInfo in %v", st.Details())
			}
			if strings.Contains(st.Message(), "127.0.0.1") {
				t.Errorf("message leaks the address: %q", st.Message())
			}
		})
	}
	logs := e.log.String()
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "dependency=") || strings.Contains(logs, "code=Internal") {
		t.Errorf("outage not logged at WARN with its dependency:\n%s", logs)
	}
}

// TestIDsAreValidated sends a malformed id to every RPC of mailbox that takes one: each is
// INVALID_ARGUMENT naming the field, and no message repeats the raw id.
func TestIDsAreValidated(t *testing.T) {
	e := startContractEnv(t)
	ctx := e.admin()
	bad := "x\r\n" + strings.Repeat("a", 5000)
	calls := []struct {
		name, field string
		call        func() error
	}{
		{"GetTenant", "tenant_id", func() error { _, err := e.c.GetTenant(ctx, &mailboxv1.GetTenantRequest{TenantId: bad}); return err }},
		{"DeleteTenant", "tenant_id", func() error {
			_, err := e.c.DeleteTenant(ctx, &mailboxv1.DeleteTenantRequest{TenantId: bad})
			return err
		}},
		{"GetUser", "user_id", func() error { _, err := e.c.GetUser(ctx, &mailboxv1.GetUserRequest{UserId: bad}); return err }},
		{"UpdateUser", "user.user_id", func() error {
			_, err := e.c.UpdateUser(ctx, &mailboxv1.UpdateUserRequest{User: &mailboxv1.User{UserId: bad, DisplayName: "x"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
			return err
		}},
		{"DeleteUser", "user_id", func() error { _, err := e.c.DeleteUser(ctx, &mailboxv1.DeleteUserRequest{UserId: bad}); return err }},
		{"GetTeam", "team_id", func() error { _, err := e.c.GetTeam(ctx, &mailboxv1.GetTeamRequest{TeamId: bad}); return err }},
		{"UpdateTeam", "team.team_id", func() error {
			_, err := e.c.UpdateTeam(ctx, &mailboxv1.UpdateTeamRequest{Team: &mailboxv1.Team{TeamId: bad, DisplayName: "x"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
			return err
		}},
		{"DeleteTeam", "team_id", func() error { _, err := e.c.DeleteTeam(ctx, &mailboxv1.DeleteTeamRequest{TeamId: bad}); return err }},
		{"GetMailbox", "mailbox_id", func() error { _, err := e.c.GetMailbox(ctx, &mailboxv1.GetMailboxRequest{MailboxId: bad}); return err }},
		{"UpdateMailbox", "mailbox.mailbox_id", func() error {
			_, err := e.c.UpdateMailbox(ctx, &mailboxv1.UpdateMailboxRequest{Mailbox: &mailboxv1.Mailbox{MailboxId: bad, DisplayName: "x"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"display_name"}}})
			return err
		}},
		{"DeleteMailbox", "mailbox_id", func() error {
			_, err := e.c.DeleteMailbox(ctx, &mailboxv1.DeleteMailboxRequest{MailboxId: bad})
			return err
		}},
		{"SetMailboxUsage", "mailbox_id", func() error {
			_, err := e.c.SetMailboxUsage(ctx, &mailboxv1.SetMailboxUsageRequest{MailboxId: bad})
			return err
		}},
		{"AddMember", "user_id", func() error {
			_, err := e.c.AddMember(ctx, &mailboxv1.AddMemberRequest{MailboxId: "info", UserId: bad, Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_READ}})
			return err
		}},
		{"UpdateMember", "mailbox_id", func() error {
			_, err := e.c.UpdateMember(ctx, &mailboxv1.UpdateMemberRequest{MailboxId: bad, UserId: "max", Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_READ}})
			return err
		}},
		{"RemoveMember", "user_id", func() error {
			_, err := e.c.RemoveMember(ctx, &mailboxv1.RemoveMemberRequest{MailboxId: "info", UserId: bad})
			return err
		}},
		{"ListMembers", "mailbox_id", func() error {
			_, err := e.c.ListMembers(ctx, &mailboxv1.ListMembersRequest{MailboxId: bad})
			return err
		}},
		{"ListVisibleMailboxes", "user_id", func() error {
			_, err := e.c.ListVisibleMailboxes(ctx, &mailboxv1.ListVisibleMailboxesRequest{UserId: bad})
			return err
		}},
		{"SetDefaultSender", "mailbox_id", func() error {
			_, err := e.c.SetDefaultSender(ctx, &mailboxv1.SetDefaultSenderRequest{UserId: "max", MailboxId: bad})
			return err
		}},
		{"CheckSend", "user_id", func() error {
			_, err := e.c.CheckSend(ctx, &mailboxv1.CheckSendRequest{UserId: bad, FromAddress: "info@kanzlei.example"})
			return err
		}},
		{"ListSentItems", "user_id", func() error {
			_, err := e.c.ListSentItems(ctx, &mailboxv1.ListSentItemsRequest{UserId: bad})
			return err
		}},
	}
	for _, tt := range calls {
		t.Run(tt.name, func(t *testing.T) {
			st := wantCode(t, tt.call(), codes.InvalidArgument)
			if got := badFields(st); len(got) == 0 || got[0] != tt.field {
				t.Errorf("fields = %v, want %s", got, tt.field)
			}
			if strings.ContainsAny(st.Message(), "\r\n") || strings.Contains(st.Message(), strings.Repeat("a", 100)) {
				t.Errorf("message echoes the raw id: %.200q", st.Message())
			}
		})
	}
}

// TestMalformedTenantInToken: a correctly signed token whose tenant id is malformed is
// UNAUTHENTICATED, before any handler sees it.
func TestMalformedTenantInToken(t *testing.T) {
	e := startContractEnv(t)
	for _, tenant := range []string{"../x", "", strings.Repeat("t", 65), "kanzlei\r\n", "Kanzlei"} {
		_, err := e.c.ListMailboxes(authtest.Forged(t, tenant, "max"), &mailboxv1.ListMailboxesRequest{})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("tenant %q: %v, want Unauthenticated", tenant, err)
		}
	}
}

// TestPaging: every list of mailbox follows the one paging rule (internal/paging): a token it did
// not issue is INVALID_ARGUMENT naming page_token, a page size above the maximum is clamped, a
// negative one is INVALID_ARGUMENT naming page_size.
func TestPaging(t *testing.T) {
	e := startContractEnv(t)
	ctx := e.admin()
	forged := "bWF4" // base64 of "max": what a token looked like before, forged by hand
	lists := map[string]func(size int32, token string) error{
		"ListTenants": func(size int32, token string) error {
			_, err := e.c.ListTenants(ctx, &mailboxv1.ListTenantsRequest{PageSize: size, PageToken: token})
			return err
		},
		"ListUsers": func(size int32, token string) error {
			_, err := e.c.ListUsers(ctx, &mailboxv1.ListUsersRequest{PageSize: size, PageToken: token})
			return err
		},
		"ListTeams": func(size int32, token string) error {
			_, err := e.c.ListTeams(ctx, &mailboxv1.ListTeamsRequest{PageSize: size, PageToken: token})
			return err
		},
		"ListMailboxes": func(size int32, token string) error {
			_, err := e.c.ListMailboxes(ctx, &mailboxv1.ListMailboxesRequest{PageSize: size, PageToken: token})
			return err
		},
		"ListMembers": func(size int32, token string) error {
			_, err := e.c.ListMembers(ctx, &mailboxv1.ListMembersRequest{MailboxId: "info", PageSize: size, PageToken: token})
			return err
		},
		"ListSentItems": func(size int32, token string) error {
			_, err := e.c.ListSentItems(ctx, &mailboxv1.ListSentItemsRequest{UserId: "max", PageSize: size, PageToken: token})
			return err
		},
	}
	for name, list := range lists {
		t.Run(name, func(t *testing.T) {
			st := wantCode(t, list(0, forged), codes.InvalidArgument)
			if got := badFields(st); len(got) != 1 || got[0] != "page_token" {
				t.Errorf("forged token: fields %v", got)
			}
			if err := list(1_000_000, ""); err != nil {
				t.Errorf("page size above the maximum: %v, want clamped", err)
			}
			st = wantCode(t, list(-1, ""), codes.InvalidArgument)
			if got := badFields(st); len(got) != 1 || got[0] != "page_size" {
				t.Errorf("negative page size: fields %v", got)
			}
		})
	}
	t.Run("a token of one list is not one of another", func(t *testing.T) {
		r, err := e.c.ListUsers(ctx, &mailboxv1.ListUsersRequest{PageSize: 1})
		if err != nil || r.GetNextPageToken() == "" {
			t.Fatalf("ListUsers: %v, token %q", err, r.GetNextPageToken())
		}
		if _, err := e.c.ListUsers(ctx, &mailboxv1.ListUsersRequest{PageSize: 1, PageToken: r.GetNextPageToken()}); err != nil {
			t.Errorf("own token: %v", err)
		}
		wantCode(t, func() error {
			_, err := e.c.ListTeams(ctx, &mailboxv1.ListTeamsRequest{PageToken: r.GetNextPageToken()})
			return err
		}(), codes.InvalidArgument)
	})
	t.Run("a token of one mailbox's members is not one of another's", func(t *testing.T) {
		if _, err := e.c.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
			MailboxId: "empfang", Address: "empfang@kanzlei.example", DisplayName: "Empfang", Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED, AllUsers: true,
		}}); err != nil {
			t.Fatal(err)
		}
		r, err := e.c.ListMembers(ctx, &mailboxv1.ListMembersRequest{MailboxId: "info", PageSize: 1})
		if err != nil || r.GetNextPageToken() == "" {
			t.Fatalf("ListMembers: %v, token %q", err, r.GetNextPageToken())
		}
		if _, err := e.c.ListMembers(ctx, &mailboxv1.ListMembersRequest{MailboxId: "info", PageSize: 1, PageToken: r.GetNextPageToken()}); err != nil {
			t.Errorf("own token: %v", err)
		}
		_, err = e.c.ListMembers(ctx, &mailboxv1.ListMembersRequest{MailboxId: "empfang", PageToken: r.GetNextPageToken()})
		if got := badFields(wantCode(t, err, codes.InvalidArgument)); len(got) != 1 || got[0] != "page_token" {
			t.Errorf("another mailbox's token: fields %v", got)
		}
	})
}

// TestAllUsersMembershipCannotBeRemoved: removing a user who is a member only because the
// mailbox is all-users says so (FAILED_PRECONDITION ALL_USERS_MEMBERSHIP), not "not found".
func TestAllUsersMembershipCannotBeRemoved(t *testing.T) {
	e := startContractEnv(t)
	_, err := e.c.RemoveMember(e.admin(), &mailboxv1.RemoveMemberRequest{MailboxId: "info", UserId: "max"})
	st := wantCode(t, err, codes.FailedPrecondition)
	var reason string
	for _, d := range st.Details() {
		if pf, ok := d.(*errdetails.PreconditionFailure); ok && len(pf.GetViolations()) > 0 {
			reason = pf.GetViolations()[0].GetType()
		}
	}
	if reason != "ALL_USERS_MEMBERSHIP" || !strings.Contains(st.Message(), "all-users") {
		t.Errorf("reason %q, message %q", reason, st.Message())
	}
}

// TestSharedQuotaZeroMeansDefault: setting a shared mailbox's quota to 0 restores the default (as
// on create); it never removes the quota.
func TestSharedQuotaZeroMeansDefault(t *testing.T) {
	e := startContractEnv(t)
	ctx := e.admin()
	get := func() int64 {
		t.Helper()
		r, err := e.c.GetMailbox(ctx, &mailboxv1.GetMailboxRequest{MailboxId: "info"})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetMailbox().GetQuotaBytes()
	}
	def := get()
	if def == 0 {
		t.Fatal("a new shared mailbox has no quota")
	}
	update := func(q int64) error {
		_, err := e.c.UpdateMailbox(ctx, &mailboxv1.UpdateMailboxRequest{Mailbox: &mailboxv1.Mailbox{MailboxId: "info", QuotaBytes: q}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"quota_bytes"}}})
		return err
	}
	if err := update(1 << 20); err != nil {
		t.Fatal(err)
	}
	if err := update(0); err != nil {
		t.Fatal(err)
	}
	if got := get(); got != def {
		t.Errorf("quota after setting 0 = %d, want the default %d", got, def)
	}
}
