package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/auth"
)

// TestJWKSCommand: the JWKS `postamt jwks` builds from the services' key files (a private key,
// and the public half of another) verifies the tokens each signs; an included JWKS is kept.
func TestJWKSCommand(t *testing.T) {
	dir := t.TempDir()
	keyFile := func(name string, public bool) string {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(priv)
		path := filepath.Join(dir, name+".pem")
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		if public {
			der, _ := x509.MarshalPKIXPublicKey(pub)
			pubPath := filepath.Join(dir, name+".pub.pem")
			if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return path
	}
	outboxKey, trackerKey, idpKey := keyFile("outbox", false), keyFile("tracker", true), keyFile("idp", false)
	var idp bytes.Buffer
	if err := runCmd(context.Background(), []string{"jwks", idpKey}, &idp, io.Discard, env(nil)); err != nil {
		t.Fatal(err)
	}
	idpFile := filepath.Join(dir, "idp.json")
	if err := os.WriteFile(idpFile, idp.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	if err := runCmd(context.Background(), []string{"jwks", "-include", idpFile, outboxKey, strings.TrimSuffix(trackerKey, ".pem") + ".pub.pem"}, &out, io.Discard, env(nil)); err != nil {
		t.Fatal(err)
	}
	jwks := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwks, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(auth.Config{JWKSFile: jwks})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{outboxKey, trackerKey, idpKey} {
		s, err := auth.NewSigner(auth.Config{SigningKeyFile: key})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := s.Mint(auth.Principal{Tenant: "t1", Service: "outbox"}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(tok); err != nil {
			t.Errorf("a token signed with %s: %v", filepath.Base(key), err)
		}
	}

	if err := runCmd(context.Background(), []string{"jwks", outboxKey, outboxKey}, io.Discard, io.Discard, env(nil)); err == nil {
		t.Error("a key given twice was accepted")
	}
	if err := runCmd(context.Background(), []string{"jwks"}, io.Discard, io.Discard, env(nil)); err == nil {
		t.Error("no key files accepted")
	}
}
