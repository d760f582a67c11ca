package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
)

// ReadPublicKey reads the public half of a PEM key file: a private key as AUTH_SIGNING_KEY_FILE
// holds it (PKCS#8 or PKCS#1), or a public key (PKIX "PUBLIC KEY"), RSA of at least 2048 bits or
// Ed25519. `postamt jwks` builds the services' JWKS from such files, so the JWKS can be built
// where only the public keys are at hand.
func ReadPublicKey(path string) (crypto.PublicKey, error) {
	b, err := os.ReadFile(path) //nolint:gosec // G304: a key file the operator names
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM block", path)
	}
	if block.Type != "PUBLIC KEY" {
		key, err := readPrivateKey(path)
		if err != nil {
			return nil, err
		}
		return key.(crypto.Signer).Public(), nil
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("%s: RSA key has %d bits, want at least %d", path, k.N.BitLen(), minRSABits)
		}
		return k, nil
	case ed25519.PublicKey:
		return k, nil
	}
	return nil, fmt.Errorf("%s: unsupported key type %T (want RSA or Ed25519)", path, pub)
}

// MarshalPublicJWKS writes a JWKS of public keys, each under its RFC 7638 thumbprint as kid (the
// kid a Signer writes when AUTH_SIGNING_KEY_ID is empty), followed by the keys of extra (JWKS
// documents, e.g. the identity provider's, kept as they are). A kid twice is an error.
func MarshalPublicJWKS(keys []crypto.PublicKey, extra ...[]byte) ([]byte, error) {
	out := make([]json.RawMessage, 0, len(keys))
	seen := map[string]bool{}
	for _, pub := range keys {
		var alg string
		switch pub.(type) {
		case *rsa.PublicKey:
			alg = "RS256"
		case ed25519.PublicKey:
			alg = "EdDSA"
		default:
			return nil, fmt.Errorf("marshal JWKS: unsupported key type %T", pub)
		}
		k := publicJWK(pub)
		k.Kid, k.Use, k.Alg = thumbprint(pub), "sig", alg
		if seen[k.Kid] {
			return nil, fmt.Errorf("marshal JWKS: the key %s is given twice", k.Kid)
		}
		seen[k.Kid] = true
		b, err := json.Marshal(k)
		if err != nil {
			return nil, fmt.Errorf("marshal JWKS: %w", err)
		}
		out = append(out, b)
	}
	for i, doc := range extra {
		if _, err := ParseJWKS(doc); err != nil {
			return nil, fmt.Errorf("JWKS %d to include: %w", i+1, err)
		}
		var d struct {
			Keys []json.RawMessage `json:"keys"`
		}
		if err := json.Unmarshal(doc, &d); err != nil {
			return nil, fmt.Errorf("JWKS %d to include: %w", i+1, err)
		}
		for _, k := range d.Keys {
			var id struct {
				Kid string `json:"kid"`
			}
			_ = json.Unmarshal(k, &id) // the document parsed above
			if id.Kid != "" && seen[id.Kid] {
				return nil, fmt.Errorf("JWKS %d to include: kid %q is there already", i+1, id.Kid)
			}
			seen[id.Kid] = true
			out = append(out, k)
		}
	}
	b, err := json.MarshalIndent(struct {
		Keys []json.RawMessage `json:"keys"`
	}{out}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marshal JWKS: %w", err)
	}
	return append(b, '\n'), nil
}
