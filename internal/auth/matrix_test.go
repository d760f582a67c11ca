package auth_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/testkit/authtest"
)

// TestVerifierRefusesTheTokenMatrix: every bad credential of the shared matrix is refused with an
// Unauthenticated error that does not repeat it, under every shape of configuration: a
// development secret, a production JWKS (where HS256 keyed with a public key is the attack), and
// both at once; and a good token of the same configuration passes, so the refusals are the
// verifier's.
func TestVerifierRefusesTheTokenMatrix(t *testing.T) {
	jwks := authtest.JWKSConfig(t)
	both := jwks
	both.HS256Secret = testSecret
	for _, c := range []struct {
		name string
		cfg  auth.Config
	}{
		{"HS256 secret", auth.Config{HS256Secret: testSecret, Audience: auth.DefaultAudience, Leeway: 30 * time.Second}},
		{"HS256 secret and issuer", auth.Config{HS256Secret: testSecret, Issuer: testIssuer}},
		{"JWKS", jwks},
		{"JWKS and HS256 secret", both},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, err := auth.NewVerifier(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			s, err := auth.NewSigner(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			good, err := s.Mint(authtest.MatrixPrincipal, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.Authenticate(incoming("Bearer " + good)); err != nil {
				t.Fatalf("a good token: %v", err)
			}
			for _, b := range authtest.BadTokens(t, c.cfg) {
				t.Run(b.Name, func(t *testing.T) {
					ctx, err := v.Authenticate(incoming(b.Authorization))
					if err == nil {
						p, _ := auth.FromContext(ctx)
						t.Fatalf("accepted as %+v", p)
					}
					if k := errs.KindOf(err); k != errs.KindUnauthenticated {
						t.Errorf("kind %v, want unauthenticated", k)
					}
					b.CheckRefused(t, errs.ToStatus(err).Err())
				})
			}
		})
	}
}

func incoming(authorization string) context.Context {
	if authorization == "" {
		return context.Background()
	}
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", authorization))
}

func TestBearerToken(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		wantErr  bool
	}{
		{in: "Bearer abc", want: "abc"},
		{in: "bearer abc", want: "abc"},
		{in: "BEARER  abc ", want: "abc"},
		{in: "Bearer", wantErr: true},
		{in: "Bearer ", wantErr: true},
		{in: "Basic abc", wantErr: true},
		{in: "abc", wantErr: true},
		{in: "", wantErr: true},
	} {
		got, err := auth.BearerToken(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("BearerToken(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err != nil && errs.KindOf(err) != errs.KindUnauthenticated {
			t.Errorf("BearerToken(%q): %v, want an Unauthenticated error", tc.in, err)
		}
	}
}
