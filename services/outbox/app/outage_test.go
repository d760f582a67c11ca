package app_test

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/freeport"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/app"
)

// TestMailboxDownIsUnavailable: with the mailbox service unreachable, a submit (which must ask
// mailbox) is UNAVAILABLE with a RetryInfo, as a Redis outage is — never INTERNAL — and reads
// that need no mailbox answer still work.
func TestMailboxDownIsUnavailable(t *testing.T) {
	rs, ns := redistest.Start(t), natstest.Start(t)
	verifier, signer := authtest.Keys(t)
	ob, err := app.New(app.Config{
		MailboxAddr: freeport.Addr(t), DefaultConnector: "default", MaxUndoDelay: time.Minute, MaxMessageBytes: 1 << 20,
		MaxRecipients: 50, ScheduleHorizon: time.Hour, Retention: time.Hour, Dispatch: false,
		ClaimBatch: 64, Lease: 10 * time.Second, ClaimAhead: 1, StopTimeout: time.Second, SMTPCommandTimeout: time.Second, SMTPSubmitTimeout: time.Second,
		SecretEnvPrefix: "POSTAMT_SMTP_", SecretDir: "/run/secrets/postamt", RelayBatch: 64, RelayClaimIdle: time.Second,
		MaxFilterScan: 1000, MaxSelection: 1000,
	}, app.Deps{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Redis: rs.Client(t), JS: ns.JetStream(t), Verifier: verifier, Signer: signer,
		Metrics: prometheus.NewRegistry(), Server: grpcserver.Options{ReadinessInterval: 50 * time.Millisecond, DrainTimeout: time.Second},
		Getenv: func(string) string { return "" },
	})
	if err != nil {
		t.Fatal(err)
	}
	client := outboxv1.NewOutboxServiceClient(servetest.Dial(t, servetest.Run(t, ob.Run)))
	max := authtest.Outgoing(t, signer, auth.Principal{Tenant: "kanzlei", User: "max"})
	_, err = client.SubmitEmail(max, email("max@kanzlei.example", "client@example.com", "Mailbox ist weg"))
	st := status.Convert(err)
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if st.Code() != codes.Unavailable || retry == nil {
		t.Fatalf("submit with mailbox down: %v %v, want UNAVAILABLE with RetryInfo", st.Code(), st.Message())
	}
	if _, err := client.ListConnectors(max, &outboxv1.ListConnectorsRequest{}); err != nil {
		t.Errorf("a read that needs no mailbox: %v", err)
	}
}
