package connector

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// violations returns the field paths of err's BadRequest, as the API's caller sees them.
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

func durations(n int, d time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

func TestValidateAccepts(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Connector)
	}{
		{"as is", func(*Connector) {}},
		{"id of 64 characters", func(c *Connector) { c.ID = strings.Repeat("a", 64) }},
		{"id with dot, dash, underscore", func(c *Connector) { c.ID = "Relay-1.eu_west" }},
		{"IPv4 host", func(c *Connector) { c.Host = "192.0.2.10" }},
		{"IPv6 host", func(c *Connector) { c.Host = "2001:db8::25" }},
		{"host of 253 characters", func(c *Connector) { c.Host = strings.Repeat("a", 253) }},
		{"port 1", func(c *Connector) { c.Port = 1 }},
		{"port 65535", func(c *Connector) { c.Port = 65535 }},
		{"implicit TLS", func(c *Connector) { c.TLS, c.Port = smtp.TLSImplicit, 465 }},
		{"plain text", func(c *Connector) { c.TLS = smtp.TLSNone }},
		{"no auth", func(c *Connector) { c.Auth, c.Username, c.SecretRef = smtp.AuthNone, "", "" }},
		{"LOGIN", func(c *Connector) { c.Auth = smtp.AuthLogin }},
		{"secret in a file", func(c *Connector) { c.SecretRef = "file:/run/secrets/smtp" }},
		{"env name with underscore first", func(c *Connector) { c.SecretRef = "env:_SMTP_2" }},
		{"no retries", func(c *Connector) { c.RetryPattern = nil }},
		{"20 delays", func(c *Connector) { c.RetryPattern = durations(20, time.Minute) }},
		{"delay of 1s", func(c *Connector) { c.RetryPattern = []time.Duration{time.Second} }},
		{"delay of 7 days", func(c *Connector) { c.RetryPattern = []time.Duration{7 * 24 * time.Hour} }},
		{"1 attempt", func(c *Connector) { c.MaxAttempts = 1 }},
		{"50 attempts", func(c *Connector) { c.MaxAttempts = 50 }},
		{"pool of 1", func(c *Connector) { c.PoolSize = 1 }},
		{"pool of 64", func(c *Connector) { c.PoolSize = 64 }},
		{"1 KiB messages", func(c *Connector) { c.MaxMessageBytes = 1 << 10 }},
		{"100 MiB messages", func(c *Connector) { c.MaxMessageBytes = 100 << 20 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.edit(&c)
			if err := c.Validate(); err != nil {
				t.Errorf("Validate = %v (fields %v), want nil", err, violations(err))
			}
		})
	}
}

func TestValidateRejects(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*Connector)
		field string
	}{
		{"empty id", func(c *Connector) { c.ID = "" }, "connector.connector_id"},
		{"id with a space", func(c *Connector) { c.ID = "a b" }, "connector.connector_id"},
		{"id with a slash", func(c *Connector) { c.ID = "a/b" }, "connector.connector_id"},
		{"id of 65 characters", func(c *Connector) { c.ID = strings.Repeat("a", 65) }, "connector.connector_id"},
		{"display name with a line break", func(c *Connector) { c.DisplayName = "a\nb" }, "connector.display_name"},
		{"no host", func(c *Connector) { c.Host = "" }, "connector.host"},
		{"host with a space", func(c *Connector) { c.Host = "smtp example" }, "connector.host"},
		{"host with a control character", func(c *Connector) { c.Host = "smtp\x00.example" }, "connector.host"},
		{"host of 254 characters", func(c *Connector) { c.Host = strings.Repeat("a", 254) }, "connector.host"},
		{"port 0", func(c *Connector) { c.Port = 0 }, "connector.port"},
		{"port 65536", func(c *Connector) { c.Port = 65536 }, "connector.port"},
		{"TLS not set", func(c *Connector) { c.TLS = 0 }, "connector.tls_mode"},
		{"unknown TLS", func(c *Connector) { c.TLS = 9 }, "connector.tls_mode"},
		{"unknown auth", func(c *Connector) { c.Auth = 9 }, "connector.auth_mechanism"},
		{"PLAIN without user", func(c *Connector) { c.Username = "" }, "connector.username"},
		{"LOGIN without user", func(c *Connector) { c.Auth, c.Username = smtp.AuthLogin, "" }, "connector.username"},
		{"PLAIN without secret", func(c *Connector) { c.SecretRef = "" }, "connector.secret_ref"},
		{"LOGIN without secret", func(c *Connector) { c.Auth, c.SecretRef = smtp.AuthLogin, "" }, "connector.secret_ref"},
		{"secret inline", func(c *Connector) { c.SecretRef = "hunter2" }, "connector.secret_ref"},
		{"relative file", func(c *Connector) { c.SecretRef = "file:secret.txt" }, "connector.secret_ref"},
		{"file without a path", func(c *Connector) { c.SecretRef = "file:" }, "connector.secret_ref"},
		{"lower-case env name", func(c *Connector) { c.SecretRef = "env:smtp_pass" }, "connector.secret_ref"},
		{"env name with a dash", func(c *Connector) { c.SecretRef = "env:SMTP-PASS" }, "connector.secret_ref"},
		{"env name starting with a digit", func(c *Connector) { c.SecretRef = "env:1PASS" }, "connector.secret_ref"},
		{"empty env name", func(c *Connector) { c.SecretRef = "env:" }, "connector.secret_ref"},
		{"secret without auth", func(c *Connector) { c.Auth = smtp.AuthNone }, "connector.secret_ref"},
		{"21 delays", func(c *Connector) { c.RetryPattern = durations(21, time.Minute) }, "connector.retry_pattern"},
		{"delay under 1s", func(c *Connector) { c.RetryPattern = []time.Duration{time.Millisecond} }, "connector.retry_pattern[0]"},
		{"delay over 7 days", func(c *Connector) {
			c.RetryPattern = []time.Duration{time.Minute, 7*24*time.Hour + time.Second}
		}, "connector.retry_pattern[1]"},
		{"negative attempts", func(c *Connector) { c.MaxAttempts = -1 }, "connector.max_attempts"},
		{"51 attempts", func(c *Connector) { c.MaxAttempts = 51 }, "connector.max_attempts"},
		{"negative pool", func(c *Connector) { c.PoolSize = -1 }, "connector.pool_size"},
		{"pool of 65", func(c *Connector) { c.PoolSize = 65 }, "connector.pool_size"},
		{"messages under 1 KiB", func(c *Connector) { c.MaxMessageBytes = 1<<10 - 1 }, "connector.max_message_bytes"},
		{"messages over 100 MiB", func(c *Connector) { c.MaxMessageBytes = 100<<20 + 1 }, "connector.max_message_bytes"},
		{"negative message size", func(c *Connector) { c.MaxMessageBytes = -1 }, "connector.max_message_bytes"},
		{"negative rate", func(c *Connector) { c.Limits.MessagesPerMinute = -1 }, "connector.limits.messages_per_minute"},
		{"rate over the cap", func(c *Connector) { c.SenderLimits.MessagesPerSecond = 10_001 }, "connector.sender_limits.messages_per_second"},
		{"daily recipients over the cap", func(c *Connector) { c.Limits.RecipientsPerDay = 10_000_001 }, "connector.limits.recipients_per_day"},
		{"calendar day without a zone", func(c *Connector) { c.Limits.CalendarDay = true }, "connector.limits.time_zone"},
		{"calendar day in an unknown zone", func(c *Connector) {
			c.SenderLimits.CalendarDay, c.SenderLimits.Zone = true, "Europe/Atlantis"
		}, "connector.sender_limits.time_zone"},
		{"calendar day in Local", func(c *Connector) { c.Limits.CalendarDay, c.Limits.Zone = true, "Local" }, "connector.limits.time_zone"},
		{"a zone for a rolling day", func(c *Connector) { c.Limits.Zone = "Europe/Vienna" }, "connector.limits.time_zone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.edit(&c)
			err := c.Validate()
			if !errors.Is(err, errs.ErrInvalid) || !slices.Contains(violations(err), tt.field) {
				t.Errorf("Validate = %v (fields %v), want a violation of %s", err, violations(err), tt.field)
			}
		})
	}
}

// TestValidateReportsAll: a form learns of every bad field in one round trip.
func TestValidateReportsAll(t *testing.T) {
	c := Connector{ID: "a b", Port: 0, TLS: smtp.TLSNone, Auth: smtp.AuthLogin}
	got := violations(c.Validate())
	want := []string{"connector.connector_id", "connector.host", "connector.port", "connector.username", "connector.secret_ref"}
	if !slices.Equal(got, want) {
		t.Errorf("fields = %v, want %v", got, want)
	}
}

func TestValidateDefaults(t *testing.T) {
	tests := []struct {
		name           string
		edit           func(*Connector)
		attempts, pool int
		maxBytes       int64
	}{
		{"all defaults", func(*Connector) {}, 3, DefaultPoolSize, DefaultMaxMessageBytes},
		{"no pattern: one attempt", func(c *Connector) { c.RetryPattern = nil }, 1, DefaultPoolSize, DefaultMaxMessageBytes},
		{"explicit values kept", func(c *Connector) { c.MaxAttempts, c.PoolSize, c.MaxMessageBytes = 7, 2, 1<<20 }, 7, 2, 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.edit(&c)
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			if c.MaxAttempts != tt.attempts || c.PoolSize != tt.pool || c.MaxMessageBytes != tt.maxBytes {
				t.Errorf("got attempts %d, pool %d, bytes %d; want %d, %d, %d", c.MaxAttempts, c.PoolSize, c.MaxMessageBytes, tt.attempts, tt.pool, tt.maxBytes)
			}
			again := c
			if err := again.Validate(); err != nil || again.MaxAttempts != c.MaxAttempts {
				t.Errorf("second Validate changed the connector: %v, %+v", err, again)
			}
		})
	}
	if DefaultMaxMessageBytes != 25<<20 {
		t.Errorf("DefaultMaxMessageBytes = %d, want 25 MiB", DefaultMaxMessageBytes)
	}
}

func TestPolicy(t *testing.T) {
	c := valid()
	c.ResendUnknown = true
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	got := c.Policy()
	want := outbox.RetryPolicy{Pattern: []time.Duration{time.Minute, 5 * time.Minute}, MaxAttempts: 3, ResendUnknown: true}
	if !slices.Equal(got.Pattern, want.Pattern) || got.MaxAttempts != want.MaxAttempts || got.ResendUnknown != want.ResendUnknown {
		t.Errorf("Policy = %+v, want %+v", got, want)
	}
	// The policy must drive the outbox's rules as the connector says: after the first failure
	// the first delay, and FAILED once the attempts are used up.
	if d := got.Decide(outbox.OutcomeTemporary, 1, false); d.Status != outbox.StatusPendingRetry || d.Delay != time.Minute {
		t.Errorf("after attempt 1: %+v", d)
	}
	if d := got.Decide(outbox.OutcomeTemporary, 3, false); d.Status != outbox.StatusFailed {
		t.Errorf("after attempt 3: %+v", d)
	}
}

func TestParsePattern(t *testing.T) {
	tests := []struct {
		in   string
		want []time.Duration
	}{
		{"1m,5m,15m,1h,4h", []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour, 4 * time.Hour}},
		{" 1m, 5m ,1h30m ", []time.Duration{time.Minute, 5 * time.Minute, 90 * time.Minute}},
		{"30s", []time.Duration{30 * time.Second}},
		{"", nil},
		{"  ", nil},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePattern(tt.in)
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("ParsePattern(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"1m,,5m", "fast", "-1m", "0s", "1m,", "5", "1d"} {
		t.Run("bad "+bad, func(t *testing.T) {
			if got, err := ParsePattern(bad); err == nil {
				t.Errorf("ParsePattern(%q) = %v, want an error", bad, got)
			}
		})
	}
}

func TestFormatPattern(t *testing.T) {
	tests := []struct {
		in   []time.Duration
		want string
	}{
		{[]time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour, 4 * time.Hour}, "1m,5m,15m,1h,4h"},
		{[]time.Duration{30 * time.Second, 90 * time.Second, 90 * time.Minute, 168 * time.Hour}, "30s,1m30s,1h30m,168h"},
		{[]time.Duration{time.Hour + time.Second}, "1h0m1s"},
		{nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			got := FormatPattern(tt.in)
			if got != tt.want {
				t.Errorf("FormatPattern(%v) = %q, want %q", tt.in, got, tt.want)
			}
			back, err := ParsePattern(got)
			if err != nil || !slices.Equal(back, tt.in) {
				t.Errorf("ParsePattern(%q) = %v, %v; want the pattern back", got, back, err)
			}
		})
	}
}
