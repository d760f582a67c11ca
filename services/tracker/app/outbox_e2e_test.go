package app_test

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/servetest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	outboxapp "github.com/postamt/postamt/services/outbox/app"
)

// TestOutboxSendIsTracked is the whole path: the CRM asks for a tracking token, max submits the
// email through the real outbox, it is delivered over SMTP to a sink, the outbox's EmailSent
// reaches the tracker over JetStream, and the tracker announces EmailTracked, correlated by the
// token and regarding the CRM's record.
func TestOutboxSendIsTracked(t *testing.T) {
	e := startEnv(t)
	sink := smtptest.Start(t)
	ob, err := outboxapp.New(outboxapp.Config{
		MailboxAddr: e.mailboxAddr, DefaultConnector: "default", MaxUndoDelay: 10 * time.Minute,
		MaxMessageBytes: 1 << 20, MaxRecipients: 50, ScheduleHorizon: 30 * 24 * time.Hour, Retention: time.Hour, Dispatch: true,
		ClaimBatch: 64, Lease: 10 * time.Second, SMTPCommandTimeout: 2 * time.Second, SMTPSubmitTimeout: 3 * time.Second,
		SecretEnvPrefix: "POSTAMT_SMTP_", SecretDir: "/run/secrets/postamt", RelayBatch: 256, RelayClaimIdle: time.Second,
		MaxFilterScan: 10_000, MaxSelection: 100_000,
	}, outboxapp.Deps{
		Logger: e.logger, Redis: e.rdb, JS: e.js, Verifier: e.verifier, Signer: e.signer, Metrics: prometheus.NewRegistry(),
		Server: grpcserver.Options{DrainTimeout: time.Second}, Getenv: func(string) string { return "" },
	})
	if err != nil {
		t.Fatal(err)
	}
	outbox := outboxv1.NewOutboxServiceClient(servetest.Dial(t, servetest.Run(t, ob.Run)))
	host, port, _ := net.SplitHostPort(sink.Addr())
	p, _ := strconv.Atoi(port)
	if _, err := outbox.CreateConnector(e.admin(), &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
		ConnectorId: "default", Host: host, Port: int32(p), TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		RetryPattern: []*durationpb.Duration{durationpb.New(time.Minute)}, MaxAttempts: 3,
	}}); err != nil {
		t.Fatal(err)
	}

	tok, err := e.tracker.IssueTrackingToken(e.crm(), &trackerv1.IssueTrackingTokenRequest{RegardingRecordId: "a-1", Subject: "Ihr Angebot"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := outbox.SubmitEmail(e.as("max"), &outboxv1.SubmitEmailRequest{
		FromAddress: "max@kanzlei.example", To: []string{"office@muster.example"}, Subject: tok.GetSubject(), TextBody: "Anbei das Angebot.",
	})
	if err != nil {
		t.Fatal(err)
	}
	msgs := sink.WaitForMessages(t, 1, 10*time.Second)
	if !strings.Contains(string(msgs[0].Data), "Subject: "+tok.GetSubject()) {
		t.Fatalf("delivered without the token in the subject:\n%s", msgs[0].Data)
	}
	te := e.waitTracked(1)[0].GetTrackedEmail()
	if te.GetSource() != trackerv1.Source_SOURCE_OUTBOX || te.GetMessageId() != m.GetEmail().GetMessageId() ||
		te.GetCorrelationMethod() != trackerv1.CorrelationMethod_CORRELATION_METHOD_TRACKING_TOKEN || te.GetRegarding().GetRecordId() != "a-1" {
		t.Fatalf("tracked = %v, want the outbox's email %s by its token, regarding a-1", te, m.GetEmail().GetMessageId())
	}
}
