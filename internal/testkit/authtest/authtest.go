// Package authtest gives tests a matching token verifier and signer, and contexts that carry a
// token, so every test authenticates through the real auth code instead of bypassing it.
package authtest

import (
	"context"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/metadata"

	"github.com/postamt/postamt/internal/auth"
)

// Config returns the HS256 configuration the helpers use, for tests that build their own.
func Config() auth.Config {
	return auth.Config{HS256Secret: "authtest-secret-authtest-secret-authtest", Audience: auth.DefaultAudience}
}

// Keys returns a verifier and a signer that trust each other.
func Keys(tb testing.TB) (*auth.Verifier, *auth.Signer) {
	tb.Helper()
	v, err := auth.NewVerifier(Config())
	if err != nil {
		tb.Fatal(err)
	}
	s, err := auth.NewSigner(Config())
	if err != nil {
		tb.Fatal(err)
	}
	return v, s
}

// Outgoing returns a context whose outgoing gRPC metadata carries a one-hour token for p.
func Outgoing(tb testing.TB, s *auth.Signer, p auth.Principal) context.Context {
	tb.Helper()
	tok, err := s.Mint(p, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

// Forged returns a context whose outgoing metadata carries a correctly signed (Config's secret)
// one-hour token with the given tenant and user claims, bypassing the checks of auth.Signer.Mint:
// for tests that a verifier refuses what a signer would never mint (a malformed tenant id).
func Forged(tb testing.TB, tenant, user string) context.Context {
	tb.Helper()
	now := time.Now()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"tid": tenant, "sub": user, "aud": auth.DefaultAudience,
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}).SignedString([]byte(Config().HS256Secret))
	if err != nil {
		tb.Fatal(err)
	}
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}
