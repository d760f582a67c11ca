package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

// TestServeReportsAServiceThatCannotBeBuilt: a service whose wiring fails (here the outbox,
// which signs its calls to the mailbox, given keys to verify with but none to sign) is an error
// from serve, not a nil service run.
func TestServeReportsAServiceThatCannotBeBuilt(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	doc := fmt.Sprintf(`{"keys":[{"kty":"OKP","crv":"Ed25519","use":"sig","kid":"k1","x":%q}]}`, base64.RawURLEncoding.EncodeToString(pub))
	if err := os.WriteFile(jwks, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = serve(ctx, "outbox", io.Discard, env(map[string]string{
		"REDIS_URL": redistest.Start(t).URL(), "NATS_URL": natstest.Start(t).URL(), "AUTH_JWKS_FILE": jwks,
		"GRPC_ADDR": "127.0.0.1:0", "OPS_ADDR": "",
	}), nil, libs, nil)
	if err == nil || !strings.Contains(err.Error(), "no signing key") {
		t.Fatalf("serve outbox without a signing key: %v, want the signer's error", err)
	}
}
