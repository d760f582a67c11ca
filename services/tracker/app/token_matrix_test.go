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
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	"github.com/postamt/postamt/services/tracker/app"
)

// TestTokenMatrix: the wired tracker, verifying with a production-like JWKS configuration,
// refuses every credential of the shared token matrix with UNAUTHENTICATED, over a real socket.
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
	tr, err := app.New(app.Config{
		MailboxAddr: "127.0.0.1:1", SyncKindCacheTTL: time.Hour, DecisionRetention: time.Hour,
		RelayBatch: 256, RelayClaimIdle: time.Second, JournalDomain: "localhost", JournalMaxBytes: 1 << 20,
	}, app.Deps{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Redis: redistest.Suite(t), JS: natstest.Start(t).JetStream(t),
		Verifier: verifier, Signer: signer, Metrics: prometheus.NewRegistry(),
		Server: grpcserver.Options{ReadinessInterval: 50 * time.Millisecond, DrainDelay: time.Millisecond, DrainTimeout: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := trackerv1.NewTrackerServiceClient(servetest.Dial(t, servetest.Run(t, tr.Run)))
	authtest.CheckMatrix(t, cfg, func(ctx context.Context) error {
		_, err := c.GetOrgSettings(ctx, &trackerv1.GetOrgSettingsRequest{})
		return err
	})
}
