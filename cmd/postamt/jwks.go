package main

import (
	"crypto"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/postamt/postamt/internal/auth"
)

// runJWKS prints the JWKS (for AUTH_JWKS_FILE) of the public keys of the given key files, the
// services' signing keys (AUTH_SIGNING_KEY_FILE, or their public halves), each under its
// RFC 7638 thumbprint as kid; -include adds the keys of existing JWKS files (the identity
// provider's, when it has no URL). To rotate: list the old and the new key, roll out, switch
// the signers to the new key, then list only the new one (docs/operations.md).
func runJWKS(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("jwks", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var include []string
	fs.Func("include", "a JWKS file whose keys to add as they are (repeatable)", func(s string) error {
		include = append(include, s)
		return nil
	})
	fs.Usage = func() {
		_, _ = fmt.Fprintln(stderr, "usage: postamt jwks [-include jwks.json]... KEY.pem...\n\n"+
			"Prints the JWKS of the public keys of the PEM key files (private or public, RSA or Ed25519).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 && len(include) == 0 {
		fs.Usage()
		return errors.New("jwks: name at least one key file")
	}
	keys := make([]crypto.PublicKey, 0, fs.NArg())
	for _, path := range fs.Args() {
		pub, err := auth.ReadPublicKey(path)
		if err != nil {
			return fmt.Errorf("jwks: %w", err)
		}
		keys = append(keys, pub)
	}
	extra := make([][]byte, 0, len(include))
	for _, path := range include {
		b, err := os.ReadFile(path) //nolint:gosec // G304: a file the operator names
		if err != nil {
			return fmt.Errorf("jwks: %w", err)
		}
		extra = append(extra, b)
	}
	doc, err := auth.MarshalPublicJWKS(keys, extra...)
	if err != nil {
		return fmt.Errorf("jwks: %s", strings.TrimPrefix(err.Error(), "marshal JWKS: "))
	}
	_, err = stdout.Write(doc)
	return err
}
