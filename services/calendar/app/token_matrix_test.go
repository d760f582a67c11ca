package app_test

import (
	"context"
	"errors"
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
	calendarv1 "github.com/postamt/postamt/proto/gen/postamt/calendar/v1"
	"github.com/postamt/postamt/services/calendar/app"
)

// TestTokenMatrix: the wired calendar, verifying with a production-like JWKS configuration,
// refuses every credential of the shared token matrix with UNAUTHENTICATED, over a real socket,
// on a unary call and on the agents' Connect stream.
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
	cal, err := app.New(testConfig("127.0.0.1:1"), app.Deps{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Redis: redistest.Start(t).Client(t), JS: natstest.Start(t).JetStream(t),
		Verifier: verifier, Signer: signer, Metrics: prometheus.NewRegistry(),
		Server: grpcserver.Options{ReadinessInterval: 50 * time.Millisecond, DrainDelay: time.Millisecond, DrainTimeout: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := calendarv1.NewCalendarServiceClient(servetest.Dial(t, servetest.Run(t, cal.Run)))
	t.Run("unary", func(t *testing.T) {
		authtest.CheckMatrix(t, cfg, func(ctx context.Context) error {
			_, err := c.GetTenantSettings(ctx, &calendarv1.GetTenantSettingsRequest{})
			return err
		})
	})
	t.Run("Connect stream", func(t *testing.T) {
		authtest.CheckMatrix(t, cfg, func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			s, err := c.Connect(ctx)
			if err != nil {
				return err
			}
			// A stream the server ended already takes no message (io.EOF); Recv has its status.
			hello := &calendarv1.ConnectRequest{Message: &calendarv1.ConnectRequest_Hello{Hello: &calendarv1.Hello{AgentId: "agent-1"}}}
			if err := s.Send(hello); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			_, err = s.Recv()
			return err
		})
	})
}
