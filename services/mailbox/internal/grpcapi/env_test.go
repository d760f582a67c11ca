package grpcapi_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/mailbox/internal/grpcapi"
	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
	"github.com/postamt/postamt/services/mailbox/internal/redisstore"
)

// env is a mailbox API over a real gRPC connection, a real server chain (auth, error mapping) and
// a spawned redis-server of its own.
type env struct {
	t      *testing.T
	client mailboxv1.MailboxServiceClient
	conn   *grpc.ClientConn
	signer *auth.Signer
	svc    *mailbox.Service
}

func newEnv(t *testing.T) *env {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	svc := mailbox.New(redisstore.New(rdb, redisstore.Options{}), mailbox.Options{})
	verifier, signer := authtest.Keys(t)
	h := grpcapi.New(svc)
	srv, err := grpcserver.New(grpcserver.Options{
		Name:     []string{mailboxv1.MailboxService_ServiceDesc.ServiceName},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Verifier: verifier,
		Register: func(s *grpc.Server) { mailboxv1.RegisterMailboxServiceServer(s, h) },
	})
	if err != nil {
		t.Fatal(err)
	}
	conn := servetest.Dial(t, servetest.Run(t, srv.Serve))
	return &env{t: t, client: mailboxv1.NewMailboxServiceClient(conn), conn: conn, signer: signer, svc: svc}
}

// as returns a context carrying a token for the given caller.
func (e *env) as(tenant, user string, roles ...string) context.Context {
	e.t.Helper()
	return authtest.Outgoing(e.t, e.signer, auth.Principal{Tenant: tenant, User: user, Roles: roles})
}

// service returns a context carrying a service token, as another Postamt service would send.
func (e *env) service(tenant, name string) context.Context {
	e.t.Helper()
	return authtest.Outgoing(e.t, e.signer, auth.Principal{Tenant: tenant, Service: name})
}

func (e *env) operator() context.Context { return e.as("acme", "op", "operator", "admin") }

// tenant creates a tenant and returns an admin context for it.
func (e *env) tenant(id string) context.Context {
	e.t.Helper()
	if _, err := e.client.CreateTenant(e.operator(), &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: id, DisplayName: id}}); err != nil {
		e.t.Fatalf("CreateTenant(%s): %v", id, err)
	}
	return e.as(id, "admin", "admin")
}

func (e *env) user(ctx context.Context, id, name, email string) *mailboxv1.User {
	e.t.Helper()
	r, err := e.client.CreateUser(ctx, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: id, DisplayName: name, Email: email}})
	if err != nil {
		e.t.Fatalf("CreateUser(%s): %v", id, err)
	}
	return r.GetUser()
}

func (e *env) personal(ctx context.Context, id, owner, address, name string) *mailboxv1.Mailbox {
	e.t.Helper()
	r, err := e.client.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
		MailboxId: id, Address: address, DisplayName: name, Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL, OwnerUserId: owner,
	}})
	if err != nil {
		e.t.Fatalf("CreateMailbox(%s): %v", id, err)
	}
	return r.GetMailbox()
}

func (e *env) shared(ctx context.Context, id, address, name string, allUsers bool) *mailboxv1.Mailbox {
	e.t.Helper()
	r, err := e.client.CreateMailbox(ctx, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
		MailboxId: id, Address: address, DisplayName: name, Kind: mailboxv1.MailboxKind_MAILBOX_KIND_SHARED, AllUsers: allUsers,
	}})
	if err != nil {
		e.t.Fatalf("CreateMailbox(%s): %v", id, err)
	}
	return r.GetMailbox()
}

func (e *env) member(ctx context.Context, mailboxID, userID string, rights ...mailboxv1.Right) {
	e.t.Helper()
	if _, err := e.client.AddMember(ctx, &mailboxv1.AddMemberRequest{MailboxId: mailboxID, UserId: userID, Rights: rights}); err != nil {
		e.t.Fatalf("AddMember(%s, %s): %v", mailboxID, userID, err)
	}
}

// wantCode fails unless err is a status with the code.
func wantCode(t *testing.T, err error, want codes.Code) *status.Status {
	t.Helper()
	s, ok := status.FromError(err)
	if !ok || s.Code() != want {
		t.Fatalf("got error %v, want code %s", err, want)
	}
	return s
}

// wantField fails unless err is InvalidArgument with a BadRequest violation of field.
func wantField(t *testing.T, err error, field string) {
	t.Helper()
	s := wantCode(t, err, codes.InvalidArgument)
	var fields []string
	for _, d := range s.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	if !slices.Contains(fields, field) {
		t.Fatalf("violations %v do not name %q (error %v)", fields, field, err)
	}
}

// must returns v, failing the test passed to the returned function if err is set:
// must(client.Call(ctx, req))(t).
func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			var se interface{ GRPCStatus() *status.Status }
			if errors.As(err, &se) {
				t.Fatalf("unexpected error: %v (details %v)", err, se.GRPCStatus().Details())
			}
			t.Fatalf("unexpected error: %v", err)
		}
		return v
	}
}
