package app_test

import (
	"net"
	"slices"
	"strconv"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// TestSecretReferencesAreTenantScoped: a connector's secret_ref names a variable or file of its
// own tenant (POSTAMT_SMTP_KANZLEI__NAME, /run/secrets/postamt/kanzlei.NAME); another tenant's
// admin cannot name it, not even through a variable that exists, and the secret is read through
// the tenant's scope when the relay asks for it.
func TestSecretReferencesAreTenantScoped(t *testing.T) {
	e := startEnv(t)
	relay := smtptest.Start(t, smtptest.WithAuth("kanzlei", "s3cret"))
	e.secrets.Store("POSTAMT_SMTP_KANZLEI__RELAY", "s3cret")
	e.secrets.Store("POSTAMT_SMTP_RELAY", "s3cret") // a deployment-wide name: no tenant may use it
	h, p, err := net.SplitHostPort(relay.Addr())
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(p)
	connector := func(id, ref string) *outboxv1.Connector {
		return &outboxv1.Connector{
			ConnectorId: id, Host: h, Port: int32(port), TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
			AuthMechanism: outboxv1.AuthMechanism_AUTH_MECHANISM_PLAIN, Username: "kanzlei", SecretRef: ref,
		}
	}

	notariat := authtest.Outgoing(t, e.signer, auth.Principal{Tenant: "notariat", User: "admin", Roles: []string{auth.RoleAdmin, "operator"}})
	if _, err := e.mailbox.CreateTenant(notariat, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: "notariat"}}); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{
		"env:POSTAMT_SMTP_KANZLEI__RELAY",                  // kanzlei's variable
		"file:/run/secrets/postamt/kanzlei.relay",          // kanzlei's file
		"env:POSTAMT_SMTP_RELAY",                           // the shared prefix without a tenant
		"file:/run/secrets/postamt/relay",                  // the shared directory
		"env:POSTAMT_SMTP_NOTARIAT_KANZLEI__RELAY",         // no "__" right after the tenant
		"file:/run/secrets/postamt/notariat./../kanzlei.x", // out of its name
	} {
		_, err := e.outbox.CreateConnector(notariat, &outboxv1.CreateConnectorRequest{Connector: connector("fremd", ref)})
		if st := code(t, err, codes.InvalidArgument); !slices.Contains(fields(st), "connector.secret_ref") {
			t.Errorf("notariat naming %s: violations %v", ref, fields(st))
		}
	}
	if _, err := e.outbox.CreateConnector(notariat, &outboxv1.CreateConnectorRequest{
		Connector: connector("eigen", "file:/run/secrets/postamt/notariat.relay"),
	}); err != nil {
		t.Errorf("notariat naming its own file: %v", err)
	}

	e.createConnector(connector("authed", "env:POSTAMT_SMTP_KANZLEI__RELAY"))
	eva := e.as("eva", nil)
	req := email("eva@kanzlei.example", "client@example.com", "Mit Anmeldung")
	req.ConnectorId = "authed"
	m := e.submit(eva, req)
	e.waitStatus(eva, m.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)
	if n := copies(t, relay, m); n != 1 {
		t.Errorf("%d copies at the relay that asks for the password, want 1", n)
	}
}
