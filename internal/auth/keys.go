package auth

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
)

// minRSABits is the smallest RSA modulus accepted, for verification and signing alike.
const minRSABits = 2048

// JWKS holds the public keys of a JSON Web Key Set (RFC 7517) that Postamt can verify with, by kid.
type JWKS struct {
	// RSA are the RS256 keys, by kid.
	RSA map[string]*rsa.PublicKey
	// Ed25519 are the EdDSA keys, by kid.
	Ed25519 map[string]ed25519.PublicKey
}

// jwk is the part of an RFC 7517/7518/8037 key Postamt reads and writes.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid,omitempty"`
	Use string `json:"use,omitempty"`
	Alg string `json:"alg,omitempty"`
	Crv string `json:"crv,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
	X   string `json:"x,omitempty"`
}

// ReadJWKS reads the RSA and Ed25519 signature keys of a JWKS file (AUTH_JWKS_FILE). Encryption
// keys, keys for other algorithms and other key types (EC) are skipped; a usable key without a kid,
// a malformed one, a duplicate kid or an RSA key under 2048 bits is an error, so that a typo does
// not silently drop a key the operator meant to trust.
func ReadJWKS(path string) (JWKS, error) {
	b, err := os.ReadFile(path) //nolint:gosec // G304: the operator's AUTH_JWKS_FILE
	if err != nil {
		return JWKS{}, fmt.Errorf("read AUTH_JWKS_FILE: %w", err)
	}
	set, err := ParseJWKS(b)
	if err != nil {
		return JWKS{}, fmt.Errorf("AUTH_JWKS_FILE %s: %w", path, err)
	}
	return set, nil
}

// ParseJWKS is ReadJWKS on the file's content.
func ParseJWKS(data []byte) (JWKS, error) {
	var doc struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return JWKS{}, fmt.Errorf("parse JWKS: %w", err)
	}
	set := JWKS{RSA: map[string]*rsa.PublicKey{}, Ed25519: map[string]ed25519.PublicKey{}}
	b64 := base64.RawURLEncoding
	for i, k := range doc.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		switch {
		case k.Kty == "RSA" && (k.Alg == "" || k.Alg == "RS256"):
		case k.Kty == "OKP" && (k.Alg == "" || k.Alg == "EdDSA" || k.Alg == "Ed25519"):
		default:
			continue
		}
		if k.Kid == "" {
			return JWKS{}, fmt.Errorf("key %d (%s) has no kid", i, k.Kty)
		}
		if _, dup := set.RSA[k.Kid]; dup {
			return JWKS{}, fmt.Errorf("kid %q appears twice", k.Kid)
		}
		if _, dup := set.Ed25519[k.Kid]; dup {
			return JWKS{}, fmt.Errorf("kid %q appears twice", k.Kid)
		}
		switch k.Kty {
		case "RSA":
			n, errN := b64.DecodeString(k.N)
			e, errE := b64.DecodeString(k.E)
			if errN != nil || errE != nil || len(e) == 0 || len(e) > 4 {
				return JWKS{}, fmt.Errorf("key %q: bad RSA n or e", k.Kid)
			}
			pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
			if pub.N.BitLen() < minRSABits || pub.E < 3 || pub.E%2 == 0 {
				return JWKS{}, fmt.Errorf("key %q: RSA key must have at least %d bits and an odd exponent >= 3", k.Kid, minRSABits)
			}
			set.RSA[k.Kid] = pub
		case "OKP":
			x, err := b64.DecodeString(k.X)
			if k.Crv != "Ed25519" || err != nil || len(x) != ed25519.PublicKeySize {
				return JWKS{}, fmt.Errorf("key %q: only Ed25519 OKP keys are supported", k.Kid)
			}
			set.Ed25519[k.Kid] = ed25519.PublicKey(x)
		}
	}
	if len(set.RSA)+len(set.Ed25519) == 0 {
		return JWKS{}, errors.New("no RSA or Ed25519 signature key")
	}
	return set, nil
}

// MarshalJWKS writes a JWKS with the public keys of asymmetric signers, each under its kid, so a
// Verifier (AUTH_JWKS_FILE) trusts what they mint: `postamt up` writes its development key set
// with it, and tests build their key files. HS256 signers have no public key and are an error.
func MarshalJWKS(signers ...*Signer) ([]byte, error) {
	keys := make([]jwk, 0, len(signers))
	for _, s := range signers {
		sk := s.key()
		if sk.pub == nil {
			return nil, fmt.Errorf("marshal JWKS: a %s signer has no public key", sk.method.Alg())
		}
		k := publicJWK(sk.pub)
		k.Kid, k.Use, k.Alg = sk.kid, "sig", sk.method.Alg()
		keys = append(keys, k)
	}
	out, err := json.MarshalIndent(struct {
		Keys []jwk `json:"keys"`
	}{keys}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marshal JWKS: %w", err)
	}
	return out, nil
}

// publicJWK renders the key members of an RSA or Ed25519 public key (no kid, use or alg).
func publicJWK(pub any) jwk {
	b64 := base64.RawURLEncoding
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return jwk{Kty: "RSA", N: b64.EncodeToString(k.N.Bytes()), E: b64.EncodeToString(big.NewInt(int64(k.E)).Bytes())}
	case ed25519.PublicKey:
		return jwk{Kty: "OKP", Crv: "Ed25519", X: b64.EncodeToString(k)}
	}
	return jwk{}
}

// thumbprint is the RFC 7638 JWK thumbprint of a public key: SHA-256 over the required members in
// lexicographic order, base64url. It is a stable kid that anyone holding the key can recompute.
func thumbprint(pub any) string {
	k := publicJWK(pub)
	var canonical string
	switch k.Kty {
	case "RSA":
		canonical = fmt.Sprintf(`{"e":%q,"kty":"RSA","n":%q}`, k.E, k.N)
	case "OKP":
		canonical = fmt.Sprintf(`{"crv":%q,"kty":"OKP","x":%q}`, k.Crv, k.X)
	}
	sum := sha256.Sum256([]byte(canonical))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// readPrivateKey reads a PEM private key: PKCS#8 (RSA or Ed25519) or PKCS#1 (RSA).
func readPrivateKey(path string) (any, error) {
	b, err := os.ReadFile(path) //nolint:gosec // G304: the operator's AUTH_SIGNING_KEY_FILE
	if err != nil {
		return nil, fmt.Errorf("read AUTH_SIGNING_KEY_FILE: %w", err)
	}
	return parsePrivateKey(path, b)
}

// parsePrivateKey is readPrivateKey on the content b of the file path.
func parsePrivateKey(path string, b []byte) (any, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("AUTH_SIGNING_KEY_FILE %s holds no PEM block", path)
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("parse AUTH_SIGNING_KEY_FILE %s: %w", path, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("AUTH_SIGNING_KEY_FILE %s: RSA key has %d bits, want at least %d", path, k.N.BitLen(), minRSABits)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("AUTH_SIGNING_KEY_FILE %s: unsupported key type %T (want RSA or Ed25519)", path, key)
}
