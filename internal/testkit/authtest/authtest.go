// Package authtest gives tests a matching token verifier and signer, and contexts that carry a
// token, so every test authenticates through the real auth code instead of bypassing it.
package authtest

import (
	"context"
	"testing"
	"time"

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
