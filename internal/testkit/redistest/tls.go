package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// tlsFiles are the PEM files a TLS server runs with, generated per topology so no key is checked
// in and none outlives the test. A nil *tlsFiles means no TLS; its methods then return zero
// values.
type tlsFiles struct {
	ca, cert, key string
	pool          *x509.CertPool
}

// tlsFor generates the files in dir when cfg asks for TLS, and returns nil otherwise.
func tlsFor(cfg config, dir string) (*tlsFiles, error) {
	if !cfg.tls {
		return nil, nil
	}
	f, err := generateTLS(filepath.Join(dir, "tls"))
	if err != nil {
		return nil, fmt.Errorf("generate TLS certificates: %w", err)
	}
	return f, nil
}

// generateTLS writes a CA and a certificate for 127.0.0.1, ::1 and localhost signed by it into
// dir. The certificate serves as both server and client certificate, since a replica or a
// cluster node presents it when it connects to another.
func generateTLS(dir string) (*tlsFiles, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "redistest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	f := &tlsFiles{
		ca:   filepath.Join(dir, "ca.crt"),
		cert: filepath.Join(dir, "redis.crt"),
		key:  filepath.Join(dir, "redis.key"),
		pool: x509.NewCertPool(),
	}
	f.pool.AddCert(caCert)
	for _, w := range []struct {
		path, typ string
		der       []byte
	}{{f.ca, "CERTIFICATE", caDER}, {f.cert, "CERTIFICATE", der}, {f.key, "PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(w.path, pem.EncodeToMemory(&pem.Block{Type: w.typ, Bytes: w.der}), 0o600); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// config is a client configuration trusting the CA; nil without TLS. ServerName is left empty:
// crypto/tls then verifies the address dialled (127.0.0.1), which the certificate names.
func (f *tlsFiles) config() *tls.Config {
	if f == nil {
		return nil
	}
	return &tls.Config{RootCAs: f.pool, MinVersion: tls.VersionTLS12}
}

func (f *tlsFiles) caFile() string {
	if f == nil {
		return ""
	}
	return f.ca
}
