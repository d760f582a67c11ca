package connector

import (
	"errors"
	"io/fs"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

func violations(err error) []string {
	var out []string
	for _, d := range errs.ToStatus(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, v.GetField())
			}
		}
	}
	return out
}

func valid() Connector {
	return Connector{ID: "relay", Host: "smtp.example.com", Port: 587, TLS: smtp.TLSStartTLS, Auth: smtp.AuthPlain,
		Username: "kanzlei", SecretRef: "env:SMTP_PASSWORD", RetryPattern: []time.Duration{time.Minute, 5 * time.Minute}}
}

func TestValidate(t *testing.T) {
	c := valid()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.MaxAttempts != 3 || c.PoolSize != DefaultPoolSize || c.MaxMessageBytes != DefaultMaxMessageBytes {
		t.Errorf("defaults: %+v", c)
	}
	for _, tc := range []struct {
		name  string
		edit  func(*Connector)
		field string
	}{
		{"id", func(c *Connector) { c.ID = "a b" }, "connector.connector_id"},
		{"host", func(c *Connector) { c.Host = "" }, "connector.host"},
		{"host with a space", func(c *Connector) { c.Host = "smtp example" }, "connector.host"},
		{"port", func(c *Connector) { c.Port = 70000 }, "connector.port"},
		{"tls", func(c *Connector) { c.TLS = 9 }, "connector.tls_mode"},
		{"auth without user", func(c *Connector) { c.Username = "" }, "connector.username"},
		{"auth without secret", func(c *Connector) { c.SecretRef = "" }, "connector.secret_ref"},
		{"secret inline", func(c *Connector) { c.SecretRef = "hunter2" }, "connector.secret_ref"},
		{"relative file", func(c *Connector) { c.SecretRef = "file:secret.txt" }, "connector.secret_ref"},
		{"bad env name", func(c *Connector) { c.SecretRef = "env:smtp-pass" }, "connector.secret_ref"},
		{"secret without auth", func(c *Connector) { c.Auth = smtp.AuthNone }, "connector.secret_ref"},
		{"short delay", func(c *Connector) { c.RetryPattern = []time.Duration{time.Millisecond} }, "connector.retry_pattern[0]"},
		{"attempts", func(c *Connector) { c.MaxAttempts = 51 }, "connector.max_attempts"},
		{"pool", func(c *Connector) { c.PoolSize = 65 }, "connector.pool_size"},
		{"size", func(c *Connector) { c.MaxMessageBytes = 10 }, "connector.max_message_bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.edit(&c)
			err := c.Validate()
			if !errors.Is(err, errs.ErrInvalid) || !slices.Contains(violations(err), tc.field) {
				t.Errorf("err = %v (fields %v), want a violation of %s", err, violations(err), tc.field)
			}
		})
	}
}

func TestPattern(t *testing.T) {
	p, err := ParsePattern("1m, 5m,15m,1h,4h")
	if err != nil {
		t.Fatal(err)
	}
	if want := []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour, 4 * time.Hour}; !slices.Equal(p, want) {
		t.Errorf("parsed %v", p)
	}
	if s := FormatPattern(append(p, 30*time.Second, 90*time.Second)); s != "1m,5m,15m,1h,4h,30s,1m30s" {
		t.Errorf("formatted %q", s)
	}
	for _, bad := range []string{"1m,,5m", "fast", "-1m"} {
		if _, err := ParsePattern(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestResolveSecret(t *testing.T) {
	env := func(k string) string { return map[string]string{"SMTP_PASSWORD": "s3cret"}[k] }
	files := func(p string) ([]byte, error) {
		if p == "/run/secrets/smtp" {
			return []byte("from-file\n"), nil
		}
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
	for _, tc := range []struct{ ref, want string }{{"env:SMTP_PASSWORD", "s3cret"}, {"file:/run/secrets/smtp", "from-file"}} {
		if got, err := ResolveSecret(tc.ref, env, files); err != nil || got != tc.want {
			t.Errorf("%s = %q, %v", tc.ref, got, err)
		}
	}
	for _, ref := range []string{"env:MISSING", "file:/nope", "plain"} {
		_, err := ResolveSecret(ref, env, files)
		if err == nil || !strings.Contains(err.Error(), ref) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: err = %v, want one naming the reference", ref, err)
		}
	}
}
