package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"testing"
)

func TestThumbprintRFC8037(t *testing.T) {
	// RFC 8037 appendix A.3: the thumbprint of the example Ed25519 key.
	x, err := base64.RawURLEncoding.DecodeString("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := thumbprint(ed25519.PublicKey(x)), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"; got != want {
		t.Errorf("thumbprint = %s, want %s", got, want)
	}
}

func TestParseJWKS(t *testing.T) {
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ed := publicJWK(edPub)
	ed.Kid = "ed"
	withKid := func(k jwk, kid string) jwk { k.Kid = kid; return k }
	tests := []struct {
		name            string
		keys            []jwk
		raw             string
		wantErr         bool
		wantRSA, wantEd int
	}{
		{name: "one Ed25519 key", keys: []jwk{ed}, wantEd: 1},
		{name: "encryption and EC keys are skipped", keys: []jwk{ed, withKid(jwk{Kty: "EC", Crv: "P-256"}, "ec"), {Kty: "OKP", Crv: "Ed25519", Kid: "enc", Use: "enc", X: "??"}}, wantEd: 1},
		{name: "other RSA algorithms are skipped", keys: []jwk{ed, {Kty: "RSA", Kid: "ps", Alg: "PS256"}}, wantEd: 1},
		{name: "no kid", keys: []jwk{withKid(ed, "")}, wantErr: true},
		{name: "duplicate kid", keys: []jwk{ed, ed}, wantErr: true},
		{name: "RSA under 2048 bits", keys: []jwk{withKid(publicJWK(&small.PublicKey), "small")}, wantErr: true},
		{name: "bad RSA modulus", keys: []jwk{{Kty: "RSA", Kid: "r", N: "!!", E: "AQAB"}}, wantErr: true},
		{name: "OKP of another curve", keys: []jwk{{Kty: "OKP", Kid: "x", Crv: "X25519", X: ed.X}}, wantErr: true},
		{name: "Ed25519 key of wrong length", keys: []jwk{{Kty: "OKP", Kid: "x", Crv: "Ed25519", X: "AAAA"}}, wantErr: true},
		{name: "no usable key", keys: []jwk{withKid(jwk{Kty: "EC"}, "ec")}, wantErr: true},
		{name: "not JSON", raw: "{", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := []byte(tt.raw)
			if tt.raw == "" {
				var err error
				if data, err = json.Marshal(map[string]any{"keys": tt.keys}); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ParseJWKS(data)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("ParseJWKS error = %v, want error %v", err, tt.wantErr)
			}
			if len(got.RSA) != tt.wantRSA || len(got.Ed25519) != tt.wantEd {
				t.Errorf("keys = %d RSA, %d Ed25519, want %d, %d", len(got.RSA), len(got.Ed25519), tt.wantRSA, tt.wantEd)
			}
		})
	}
}
