package app_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/app"
)

// TestTokenMatrix: the wired outbox, verifying with a production-like JWKS configuration, refuses
// every credential of the shared token matrix with UNAUTHENTICATED, over a real socket, on a
// unary call and at the start of a server stream.
func TestTokenMatrix(t *testing.T) {
	cfg := authtest.JWKSConfig(t)
	verifier, err := auth.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := auth.NewSigner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ob, err := app.New(app.Config{
		MailboxAddr: "127.0.0.1:1", DefaultConnector: "default", MaxUndoDelay: 10 * time.Minute,
		MaxMessageBytes: 1 << 20, MaxRecipients: 50, ScheduleHorizon: 30 * 24 * time.Hour, Retention: time.Hour,
		ClaimBatch: 64, Lease: 10 * time.Second, ClaimAhead: 1, StopTimeout: 10 * time.Second, SMTPCommandTimeout: 2 * time.Second, SMTPSubmitTimeout: 3 * time.Second,
		SecretEnvPrefix: "POSTAMT_SMTP_", SecretDir: "/run/secrets/postamt", RelayBatch: 256, RelayClaimIdle: time.Second,
		MaxFilterScan: 10_000, MaxSelection: 100_000,
	}, app.Deps{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Redis: redistest.Suite(t), JS: natstest.Start(t).JetStream(t),
		Verifier: verifier, Signer: signer, Metrics: prometheus.NewRegistry(), Getenv: func(string) string { return "" },
		Server: grpcserver.Options{ReadinessInterval: 50 * time.Millisecond, DrainDelay: time.Millisecond, DrainTimeout: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := outboxv1.NewOutboxServiceClient(servetest.Dial(t, servetest.Run(t, ob.Run)))
	t.Run("unary", func(t *testing.T) {
		authtest.CheckMatrix(t, cfg, func(ctx context.Context) error {
			_, err := c.ListConnectors(ctx, &outboxv1.ListConnectorsRequest{})
			return err
		})
	})
	t.Run("server stream", func(t *testing.T) {
		authtest.CheckMatrix(t, cfg, func(ctx context.Context) error {
			// A good token watches until the deadline; a bad one ends the stream at once.
			ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			s, err := c.WatchEmails(ctx, &outboxv1.WatchEmailsRequest{View: outboxv1.View_VIEW_ALL})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		})
	})
}
