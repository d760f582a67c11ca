package app_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/gateway/app"
	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/grpcserver"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
)

// TestTokenMatrix: the gateway, verifying with a production-like JWKS configuration, refuses
// every credential of the shared token matrix at both doors before anything reaches a service:
// over HTTP with 401, a google.rpc.Status JSON body of code UNAUTHENTICATED, a Bearer challenge
// in WWW-Authenticate, and nothing of the token repeated; over gRPC with UNAUTHENTICATED. The
// services behind it are stand-ins that answer UNIMPLEMENTED, so a good token is seen to pass.
func TestTokenMatrix(t *testing.T) {
	cfg := authtest.JWKSConfig(t)
	verifier, err := auth.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	fake := upstream(t, nil)
	gw, err := app.New(context.Background(), app.Config{
		HTTPAddr: "127.0.0.1:0", MailboxAddr: fake, OutboxAddr: fake, TrackerAddr: fake, CalendarAddr: fake,
		RatePerSec: 1e5, RateBurst: 1e5, RateCallers: 1000, MaxBodyBytes: 1 << 20, HTTPTimeout: 10 * time.Second,
	}, app.Deps{Verifier: verifier, Metrics: prometheus.NewRegistry(), Server: grpcserver.Options{DrainTimeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	conn := servetest.Dial(t, servetest.Run(t, gw.Run))
	url := "http://" + gw.HTTPAddr() + "/v1/outbox/emails"

	get := func(t *testing.T, b authtest.BadToken) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		b.SetHeader(req.Header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}

	t.Run("HTTP", func(t *testing.T) {
		if resp, body := get(t, authtest.BadToken{Authorization: "Bearer " + authtest.GoodToken(t, cfg)}); resp.StatusCode != http.StatusNotImplemented {
			t.Fatalf("a good token: %s %s, want the stand-in's 501", resp.Status, body)
		}
		for _, b := range authtest.BadTokens(t, cfg) {
			t.Run(b.Name, func(t *testing.T) {
				resp, body := get(t, b)
				var st rpcStatus
				if err := json.Unmarshal(body, &st); err != nil {
					t.Fatalf("%s: body %q is not a google.rpc.Status: %v", resp.Status, body, err)
				}
				if resp.StatusCode != http.StatusUnauthorized || codes.Code(st.Code) != codes.Unauthenticated || st.Message == "" {
					t.Fatalf("%s %+v, want 401 with code UNAUTHENTICATED", resp.Status, st)
				}
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
					t.Errorf("Content-Type %q, want JSON", ct)
				}
				challenge := resp.Header.Get("WWW-Authenticate")
				if !strings.HasPrefix(challenge, "Bearer ") {
					t.Errorf("WWW-Authenticate %q, want a Bearer challenge", challenge)
				}
				if got, want := strings.Contains(challenge, `error="invalid_token"`), b.Authorization != ""; got != want {
					t.Errorf("WWW-Authenticate %q: invalid_token %v, want %v", challenge, got, want)
				}
				if b.Echoes(string(body)) {
					t.Errorf("the body repeats the token: %s", body)
				}
				for k, vs := range resp.Header {
					for _, v := range vs {
						if b.Echoes(v) {
							t.Errorf("header %s repeats the token", k)
						}
					}
				}
			})
		}
	})
	t.Run("gRPC", func(t *testing.T) {
		c := mailboxv1.NewMailboxServiceClient(conn)
		authtest.CheckMatrix(t, cfg, func(ctx context.Context) error {
			_, err := c.GetTenant(ctx, &mailboxv1.GetTenantRequest{})
			if status.Code(err) == codes.Unimplemented && !strings.Contains(status.Convert(err).Message(), "no status asked for") {
				t.Errorf("the gateway itself does not know the method: %v", err)
			}
			return err
		})
	})
}
