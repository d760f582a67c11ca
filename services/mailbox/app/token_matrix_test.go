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
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/mailbox/app"
)

// TestTokenMatrix: the wired service, verifying with a production-like JWKS configuration,
// refuses every credential of the shared token matrix with UNAUTHENTICATED, over a real socket.
func TestTokenMatrix(t *testing.T) {
	cfg := authtest.JWKSConfig(t)
	verifier, err := auth.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	a, err := app.New(app.Config{RelayBatch: 64, RelayClaimIdle: time.Second}, app.Deps{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Redis: redistest.Suite(t), JS: natstest.Start(t).JetStream(t),
		Verifier: verifier, Metrics: prometheus.NewRegistry(), Server: grpcserver.Options{ReadinessInterval: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := mailboxv1.NewMailboxServiceClient(servetest.Dial(t, servetest.Run(t, a.Run)))
	authtest.CheckMatrix(t, cfg, func(ctx context.Context) error {
		_, err := c.GetTenant(ctx, &mailboxv1.GetTenantRequest{})
		return err
	})
}
