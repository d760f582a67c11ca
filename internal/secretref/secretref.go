// Package secretref resolves secrets that configuration names by reference, "env:NAME" or
// "file:/path", never by value: an SMTP connector's password, a CalDAV target's. The reference is
// resolved when the secret is needed, so a rotated file is picked up without a restart. Because
// tenant admins and users write these references, a Scope set by the operator bounds what they
// may name; without it one could point a reference at any variable or file the service can read
// and have it sent as a password to a server of their own.
package secretref

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"strings"
)

var envName = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)

// CheckForm checks a reference's form (not whether it resolves: the secret may be put in place
// after the setting is written) and says what is wrong without repeating it, since a malformed
// reference may be a password pasted into the wrong field.
func CheckForm(ref string) error {
	if ref == "" {
		return errors.New(`is required: "env:NAME" or "file:/absolute/path"`)
	}
	if name, ok := strings.CutPrefix(ref, "env:"); ok {
		if !envName.MatchString(name) {
			return errors.New(`"env:NAME" needs NAME of A-Z, 0-9 and '_', not starting with a digit`)
		}
		return nil
	}
	if p, ok := strings.CutPrefix(ref, "file:"); ok {
		if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, "\x00\r\n") {
			return errors.New(`"file:" needs an absolute path`)
		}
		return nil
	}
	return errors.New(`must be a reference "env:NAME" or "file:/absolute/path", never the secret itself`)
}

// Resolve reads the secret a well-formed reference names, with no scope: for references the
// operator wrote. A file's trailing line break is dropped (editors and "echo" add one). Errors
// name the reference, never a secret; a malformed reference is not even echoed. getenv and
// readFile are injected so tests need no process environment; nil means os.Getenv and
// os.ReadFile.
func Resolve(ref string, getenv func(string) string, readFile func(string) ([]byte, error)) (string, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	if readFile == nil {
		readFile = os.ReadFile
	}
	if err := CheckForm(ref); err != nil {
		return "", fmt.Errorf("malformed secret reference: %w", err)
	}
	if name, ok := strings.CutPrefix(ref, "env:"); ok {
		s := getenv(name)
		if s == "" {
			return "", fmt.Errorf("secret reference %q: the variable is not set", ref)
		}
		return s, nil
	}
	b, err := readFile(strings.TrimPrefix(ref, "file:"))
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is in the reference already
		}
		return "", fmt.Errorf("secret reference %q: %w", ref, err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("secret reference %q: the file is empty", ref)
	}
	return s, nil
}

// Scope bounds what references written by tenants or users may name. The operator sets it.
type Scope struct {
	// EnvPrefix is the prefix every env: reference must carry, e.g. "POSTAMT_SMTP_"; empty
	// forbids env: references.
	EnvPrefix string
	// Dir is the directory every file: reference must be inside, e.g. "/run/secrets/postamt";
	// empty forbids file: references.
	Dir string
}

// Check reports whether ref is well formed and inside the scope.
func (s Scope) Check(ref string) error {
	if err := CheckForm(ref); err != nil {
		return err
	}
	if name, ok := strings.CutPrefix(ref, "env:"); ok {
		if s.EnvPrefix == "" || !strings.HasPrefix(name, s.EnvPrefix) {
			return fmt.Errorf("env: references must name a variable starting with %q", s.EnvPrefix)
		}
		return nil
	}
	p := strings.TrimPrefix(ref, "file:")
	dir := strings.TrimSuffix(s.Dir, "/")
	if dir == "" || path.Clean(p) != p || !strings.HasPrefix(p, dir+"/") {
		return fmt.Errorf("file: references must name a file in %s", s.Dir)
	}
	return nil
}

// Resolve checks ref against the scope, again at the moment of use (a setting written under an
// older, wider scope is not trusted), and reads the secret.
func (s Scope) Resolve(ref string, getenv func(string) string, readFile func(string) ([]byte, error)) (string, error) {
	if err := CheckForm(ref); err != nil {
		return "", fmt.Errorf("malformed secret reference: %w", err)
	}
	if err := s.Check(ref); err != nil {
		return "", fmt.Errorf("secret reference %q refused: %w", ref, err)
	}
	return Resolve(ref, getenv, readFile)
}
