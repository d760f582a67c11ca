package secretref

import (
	"errors"
	"io/fs"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	env := func(k string) string { return map[string]string{"SMTP_PASSWORD": "s3cret"}[k] }
	files := func(p string) ([]byte, error) {
		switch p {
		case "/run/secrets/smtp":
			return []byte("from-file\n"), nil
		case "/run/secrets/crlf":
			return []byte("from-file\r\n"), nil
		case "/run/secrets/bare":
			return []byte(" sp aces "), nil
		case "/run/secrets/empty":
			return []byte("\n"), nil
		case "/run/secrets/locked":
			return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrPermission}
		}
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
	tests := []struct {
		ref, want string
	}{
		{"env:SMTP_PASSWORD", "s3cret"},
		{"file:/run/secrets/smtp", "from-file"},
		{"file:/run/secrets/crlf", "from-file"},
		{"file:/run/secrets/bare", " sp aces "},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			if got, err := Resolve(tt.ref, env, files); err != nil || got != tt.want {
				t.Errorf("Resolve(%q) = %q, %v; want %q", tt.ref, got, err, tt.want)
			}
		})
	}
	failures := []struct {
		name, ref string
		named     bool // the error names the reference
		is        error
	}{
		{"unset variable", "env:MISSING", true, nil},
		{"missing file", "file:/nope", true, fs.ErrNotExist},
		{"unreadable file", "file:/run/secrets/locked", true, fs.ErrPermission},
		{"empty file", "file:/run/secrets/empty", true, nil},
		{"malformed, maybe a pasted password", "hunter2", false, nil},
		{"relative file", "file:run/secrets/smtp", false, nil},
	}
	for _, tt := range failures {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Resolve(tt.ref, env, files)
			if err == nil {
				t.Fatalf("Resolve(%q) = %q, want an error", tt.ref, got)
			}
			if strings.Contains(err.Error(), tt.ref) != tt.named {
				t.Errorf("error %q: naming the reference = %v, want %v", err, !tt.named, tt.named)
			}
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "from-file") {
				t.Errorf("error %q contains a secret", err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %q is not %v", err, tt.is)
			}
		})
	}
}

// TestResolveDefaults: nil functions mean the process environment and file system, which
// is what the service passes in production.
func TestResolveDefaults(t *testing.T) {
	t.Setenv("POSTAMT_TEST_SMTP_SECRET", "from-env")
	if got, err := Resolve("env:POSTAMT_TEST_SMTP_SECRET", nil, nil); err != nil || got != "from-env" {
		t.Errorf("env = %q, %v", got, err)
	}
	if _, err := Resolve("file:/nonexistent/postamt/secret", nil, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
}

func TestSecretScope(t *testing.T) {
	s := Scope{EnvPrefix: "POSTAMT_SMTP_", Dir: "/run/secrets/postamt"}
	for ref, ok := range map[string]bool{
		"env:POSTAMT_SMTP_KANZLEI":                 true,
		"env:AUTH_HS256_SECRET":                    false,
		"file:/run/secrets/postamt/kanzlei":        true,
		"file:/etc/shadow":                         false,
		"file:/run/secrets/postamt/../other":       false,
		"file:/run/secrets/postamt-other/password": false,
	} {
		if err := s.Check(ref); (err == nil) != ok {
			t.Errorf("Check(%q) = %v, want allowed %v", ref, err, ok)
		}
	}
	if err := (Scope{}).Check("env:ANY"); err == nil {
		t.Error("an empty scope allows env references")
	}
}

// TestScopeResolve: the scope is checked again when the secret is read.
func TestScopeResolve(t *testing.T) {
	s := Scope{EnvPrefix: "POSTAMT_CALDAV_", Dir: "/run/secrets/postamt"}
	env := func(k string) string { return map[string]string{"POSTAMT_CALDAV_X": "pw", "HOME": "/root"}[k] }
	if got, err := s.Resolve("env:POSTAMT_CALDAV_X", env, nil); err != nil || got != "pw" {
		t.Errorf("in scope: %q, %v", got, err)
	}
	for _, ref := range []string{"env:HOME", "file:/etc/shadow", "file:/run/secrets/postamt/a/../../x", "hunter2"} {
		if got, err := s.Resolve(ref, env, nil); err == nil {
			t.Errorf("Resolve(%q) = %q, want refused", ref, got)
		}
	}
}

// TestScopeForTenant: a tenant's scope admits its own references only, and no tenant id can be
// chosen so that its variables or files fall into another tenant's scope.
func TestScopeForTenant(t *testing.T) {
	base := Scope{EnvPrefix: "POSTAMT_SMTP_", Dir: "/run/secrets/postamt/"}
	s := base.For("kanzlei-mueller")
	for ref, ok := range map[string]bool{
		"env:POSTAMT_SMTP_KANZLEI_MUELLER__PASSWORD":                 true,
		"env:POSTAMT_SMTP_KANZLEI_MUELLER__RELAY_2":                  true,
		"file:/run/secrets/postamt/kanzlei-mueller.smtp":             true,
		"file:/run/secrets/postamt/kanzlei-mueller.a.b-c":            true,
		"env:POSTAMT_SMTP_KANZLEI_MUELLER_PASSWORD":                  false, // no "__" after the tenant
		"env:POSTAMT_SMTP_KANZLEI_MUELLER__":                         false,
		"env:POSTAMT_SMTP_KANZLEI_MUELLER___X":                       false, // NAME starts with '_'
		"env:POSTAMT_SMTP_KANZLEI_MUELLER__X__Y":                     false, // NAME contains "__"
		"env:POSTAMT_SMTP_KANZLEI__PASSWORD":                         false, // tenant kanzlei's
		"file:/run/secrets/postamt/kanzlei.smtp":                     false,
		"file:/run/secrets/postamt/kanzlei-mueller.":                 false,
		"file:/run/secrets/postamt/kanzlei-mueller./../kanzlei.smtp": false,
		"file:/run/secrets/postamt/kanzlei-mueller/smtp":             false, // nested: Secret keys hold no '/'
		"file:/run/secrets/postamt/smtp":                             false, // the shared directory
		"file:/run/secrets/postamt/kanzlei-mueller":                  false,
	} {
		if err := s.Check(ref); (err == nil) != ok {
			t.Errorf("Check(%q) = %v, want allowed %v", ref, err, ok)
		}
	}
	if _, err := s.Resolve("env:POSTAMT_SMTP_KANZLEI__PASSWORD", func(string) string { return "pw" }, nil); err == nil {
		t.Error("Resolve admitted another tenant's variable")
	}

	// Every variable and file name is admitted by at most one tenant, even for tenant ids built
	// to collide once '-' becomes '_'.
	tenants := []string{"a", "a-", "a--", "a-b", "a--b", "a-b-", "ab", "a-x-b", "x"}
	names := []string{"P", "B__P", "_P", "B_P", "X_B__P", "_B__P", "__P", "B___P", "P_"}
	for _, tn := range tenants {
		prefix := base.For(tn).EnvPrefix
		for _, n := range names {
			for _, ref := range []string{"env:" + prefix + n, "file:/run/secrets/postamt/" + tn + "." + strings.ToLower(n)} {
				var admitted []string
				for _, other := range tenants {
					if base.For(other).Check(ref) == nil {
						admitted = append(admitted, other)
					}
				}
				if len(admitted) > 1 {
					t.Errorf("%s is admitted for tenants %q", ref, admitted)
				}
			}
		}
	}
}
