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

// Scope bounds what references written by tenants or users may name. The operator sets it for
// the deployment; the services narrow it to the writer's tenant with For before checking or
// resolving, because one tenant's admin must not be able to name another tenant's password.
type Scope struct {
	// EnvPrefix is the prefix every env: reference must carry, e.g. "POSTAMT_SMTP_"; empty
	// forbids env: references.
	EnvPrefix string
	// Dir is the directory every file: reference must be inside, e.g. "/run/secrets/postamt";
	// empty forbids file: references.
	Dir string

	// tenant is set by For; see there.
	tenant string
}

// keyName is what a tenant's file may be called after "TENANT.": a Kubernetes Secret's key
// (letters, digits, '-', '_' and '.'), so one Secret mounted at Dir holds every tenant's files.
var keyName = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// For narrows the scope to one tenant: file: references must name a file Dir/TENANT.NAME,
// env: references a variable EnvPrefix + TENANT + "__" + NAME, TENANT being the tenant id in
// upper case with '-' as '_' (POSTAMT_SMTP_KANZLEI_MUELLER__RELAY for tenant kanzlei-mueller,
// /run/secrets/postamt/kanzlei-mueller.relay).
//
// Files are named, not nested, so that adding a tenant's password is adding a key to the one
// Secret mounted at Dir (Secret keys cannot hold '/'); tenant ids (internal/ids.ValidTenant)
// hold no '.', so the first '.' ends the tenant. Environment names cannot carry '-', so two
// tenants' variable prefixes could be prefixes of each other's (kanzlei and kanzlei--x); NAME
// therefore must not start with '_' nor contain "__", which leaves one way to split a name.
func (s Scope) For(tenant string) Scope {
	n := Scope{tenant: tenant}
	if s.EnvPrefix != "" {
		n.EnvPrefix = s.EnvPrefix + strings.ToUpper(strings.ReplaceAll(tenant, "-", "_")) + "__"
	}
	n.Dir = s.Dir
	return n
}

// Check reports whether ref is well formed and inside the scope.
func (s Scope) Check(ref string) error {
	if err := CheckForm(ref); err != nil {
		return err
	}
	if name, ok := strings.CutPrefix(ref, "env:"); ok {
		rest, ok := strings.CutPrefix(name, s.EnvPrefix)
		if s.EnvPrefix == "" || !ok || rest == "" {
			return fmt.Errorf("env: references must name a variable starting with %q", s.EnvPrefix)
		}
		if s.tenant != "" && (strings.HasPrefix(rest, "_") || strings.Contains(rest, "__")) {
			return fmt.Errorf(`env: references must name a variable %q + NAME, NAME neither starting with '_' nor containing "__"`, s.EnvPrefix)
		}
		return nil
	}
	p := strings.TrimPrefix(ref, "file:")
	dir := strings.TrimSuffix(s.Dir, "/")
	if s.tenant != "" {
		name, ok := strings.CutPrefix(p, dir+"/"+s.tenant+".")
		if dir == "" || !ok || !keyName.MatchString(name) {
			return fmt.Errorf("file: references must name a file %s/%s.NAME, NAME of letters, digits, '-', '_' and '.'", dir, s.tenant)
		}
		return nil
	}
	if dir == "" || path.Clean(p) != p || !strings.HasPrefix(p, dir+"/") {
		return fmt.Errorf("file: references must name a file in %s/", dir)
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
