// Package connector holds what a connector is — a named SMTP relay with its retry pattern — and
// its rules: what a valid one looks like, how its secret reference is resolved, and the retry
// policy it gives the dispatcher. Pure Go; storage is in redisstore.
package connector

import (
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	"github.com/postamt/postamt/internal/secretref"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// Connector is a tenant's SMTP relay as the outbox uses it: where mail leaves, how it
// authenticates, and how failures are retried. It is plain Go so the rules below are tested
// without gRPC or Redis; the proto message stops at the handler and the store.
type Connector struct {
	// Tenant owns the connector; ids are unique per tenant only.
	Tenant string
	// ID is chosen by the client and names the connector in every email that uses it.
	ID string
	// DisplayName is what people see in the outbox.
	DisplayName string
	// Host and Port are the relay's address.
	Host string
	Port int
	// TLS is how the connection is secured.
	TLS smtp.TLSMode
	// Auth is how the outbox authenticates (AuthNone, AuthPlain or AuthLogin); Username and
	// SecretRef are required with a mechanism.
	Auth     smtp.AuthMechanism
	Username string
	// SecretRef names where the password is: "env:NAME" or "file:/absolute/path". The secret
	// itself is never stored or returned, so the API and Redis never hold it.
	SecretRef string
	// RetryPattern is the delay before the second, third, ... attempt; the last one repeats while
	// attempts remain.
	RetryPattern []time.Duration
	// MaxAttempts counts every attempt, the first included; 0 means 1+len(RetryPattern).
	MaxAttempts int
	// Enabled says whether mail may leave; a disabled connector's due mail waits without using
	// attempts.
	Enabled bool
	// ResendUnknown resends mail whose outcome is unknown (the connection was lost after the
	// final dot) instead of holding it as FAILED; false is the proto's HOLD, the safe default
	// that never sends twice.
	ResendUnknown bool
	// MaxMessageBytes is the relay's size limit; 0 means DefaultMaxMessageBytes.
	MaxMessageBytes int64
	// PoolSize bounds the connections to the relay; 0 means DefaultPoolSize.
	PoolSize int
	// Limits are the relay's rations for the connector as a whole, SenderLimits per sender
	// address; the dispatcher sends no faster (issue 21).
	Limits, SenderLimits Limits
	// Version goes up by one with every stored change, for optimistic concurrency and so the
	// dispatcher knows when to rebuild the connector's sender.
	Version int64
	// Created and Updated are set by the store.
	Created, Updated time.Time
}

// Defaults of the optional fields, so that a connector created with only an address works.
const (
	// DefaultMaxMessageBytes is 25 MiB, what common relays accept.
	DefaultMaxMessageBytes = 25 << 20
	// DefaultPoolSize is a few connections: enough to overlap round trips without a relay
	// counting us as abusive.
	DefaultPoolSize = 4
)

// Validate checks c and fills in the defaults (MaxAttempts, MaxMessageBytes, PoolSize). Every
// problem is reported at once, as an errs.Violations InvalidArgument with the request's field
// paths ("connector.host"), so a form can mark every bad field in one round trip.
func (c *Connector) Validate() error {
	var v errs.Violations
	ids.Check(&v, "connector.connector_id", c.ID)
	v.Line("connector.display_name", c.DisplayName, 200)
	// The host goes into the dial address and the TLS server name.
	if v.Line("connector.host", c.Host, 253) && (c.Host == "" || strings.IndexFunc(c.Host, func(r rune) bool { return unicode.IsSpace(r) || r == '/' }) >= 0) {
		v.Add("connector.host", "a host name or IP address, at most 253 characters")
	}
	if c.Port < 1 || c.Port > 65535 {
		v.Add("connector.port", "must be between 1 and 65535")
	}
	switch c.TLS {
	case smtp.TLSNone, smtp.TLSStartTLS, smtp.TLSImplicit:
	default:
		v.Add("connector.tls_mode", "NONE, STARTTLS or IMPLICIT")
	}
	switch c.Auth {
	case smtp.AuthNone:
		if c.SecretRef != "" {
			v.Add("connector.secret_ref", "only with an auth mechanism")
		}
	case smtp.AuthPlain, smtp.AuthLogin:
		if c.Username == "" {
			v.Add("connector.username", "is required with an auth mechanism")
		}
		if err := secretref.CheckForm(c.SecretRef); err != nil {
			v.Add("connector.secret_ref", err.Error())
		}
	default:
		v.Add("connector.auth_mechanism", "NONE, PLAIN or LOGIN")
	}
	// The user name goes into the SASL exchange of the SMTP session.
	v.Line("connector.username", c.Username, 256)
	if len(c.RetryPattern) > 20 {
		v.Add("connector.retry_pattern", "at most 20 delays")
	}
	for i, d := range c.RetryPattern {
		if d < time.Second || d > 7*24*time.Hour {
			v.Addf(fmt.Sprintf("connector.retry_pattern[%d]", i), "must be between 1s and 7 days, got %s", d)
		}
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 1 + len(c.RetryPattern)
	}
	if c.MaxAttempts < 1 || c.MaxAttempts > 50 {
		v.Add("connector.max_attempts", "must be between 1 and 50")
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.MaxMessageBytes < 1<<10 || c.MaxMessageBytes > 100<<20 {
		v.Add("connector.max_message_bytes", "must be between 1 KiB and 100 MiB")
	}
	if c.PoolSize == 0 {
		c.PoolSize = DefaultPoolSize
	}
	if c.PoolSize < 1 || c.PoolSize > 64 {
		v.Add("connector.pool_size", "must be between 1 and 64")
	}
	c.Limits.check(&v, "connector.limits")
	c.SenderLimits.check(&v, "connector.sender_limits")
	if c.SenderLimits.Connections != 0 {
		v.Add("connector.sender_limits.connections", "is per connector: a relay counts connections per client, not per sender; set connector.limits.connections")
	}
	return v.Err()
}

// Limits are what a relay allows in a time, as providers publish them; zero fields are no
// limit. A limit is kept across every replica (redisstore.Take); mail over one waits.
type Limits struct {
	MessagesPerSecond, MessagesPerMinute  int
	RecipientsPerMinute, RecipientsPerDay int
	// CalendarDay counts RecipientsPerDay from midnight to midnight in Zone (an IANA name)
	// instead of in any 24 hours.
	CalendarDay bool
	Zone        string
	// Connections bounds the connections open to the relay across every replica (a
	// connector's limits only: relays count connections per client).
	Connections int
}

// IsZero reports whether no limit is set.
func (l Limits) IsZero() bool { return l == Limits{} }

// Location is the zone of a calendar day; UTC for a rolling day or an unknown name (Validate
// refuses those).
func (l Limits) Location() *time.Location {
	if !l.CalendarDay {
		return time.UTC
	}
	loc, err := time.LoadLocation(l.Zone)
	if err != nil {
		return time.UTC
	}
	return loc
}

func (l Limits) check(v *errs.Violations, field string) {
	for _, f := range []struct {
		name     string
		val, max int
	}{
		{"messages_per_second", l.MessagesPerSecond, 10_000},
		{"messages_per_minute", l.MessagesPerMinute, 100_000},
		{"recipients_per_minute", l.RecipientsPerMinute, 1_000_000},
		{"recipients_per_day", l.RecipientsPerDay, 10_000_000},
		{"connections", l.Connections, 1_000},
	} {
		if f.val < 0 || f.val > f.max {
			v.Addf(field+"."+f.name, "must be between 0 (no limit) and %d", f.max)
		}
	}
	switch {
	case l.CalendarDay && l.Zone == "":
		v.Add(field+".time_zone", "is required with DAY_COUNT_CALENDAR (an IANA name such as Europe/Vienna)")
	case l.CalendarDay && (l.Zone == "Local" || !validZone(l.Zone)):
		v.Add(field+".time_zone", "must be an IANA time zone such as Europe/Vienna")
	case !l.CalendarDay && l.Zone != "":
		v.Add(field+".time_zone", "is only for DAY_COUNT_CALENDAR")
	}
}

func validZone(name string) bool {
	if len(name) > 64 {
		return false
	}
	_, err := time.LoadLocation(name)
	return err == nil
}

// Policy is the retry policy the dispatcher applies to the connector's mail, so the outbox's
// rules (outbox.RetryPolicy.Decide) need not know about connectors.
func (c *Connector) Policy() outbox.RetryPolicy {
	return outbox.RetryPolicy{Pattern: c.RetryPattern, MaxAttempts: c.MaxAttempts, ResendUnknown: c.ResendUnknown}
}

// ParsePattern reads a retry pattern such as "1m,5m,15m,1h,4h" (Go durations, commas, optional
// spaces), the form configuration and the CLI use. An empty string is no retries; an entry that
// is not a positive duration is an error naming it. Ranges are Validate's business.
func ParsePattern(s string) ([]time.Duration, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []time.Duration
	for i, f := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("retry pattern entry %d (%q): a positive duration such as 5m", i+1, strings.TrimSpace(f))
		}
		out = append(out, d)
	}
	return out, nil
}

// FormatPattern writes a retry pattern the way ParsePattern reads it, without Go's trailing
// zero units ("1h", not "1h0m0s"), so it reads as an admin would type it.
func FormatPattern(p []time.Duration) string {
	parts := make([]string, len(p))
	for i, d := range p {
		f := d.String()
		if strings.HasSuffix(f, "m0s") {
			f = strings.TrimSuffix(f, "0s")
		}
		if strings.HasSuffix(f, "h0m") {
			f = strings.TrimSuffix(f, "0m")
		}
		parts[i] = f
	}
	return strings.Join(parts, ",")
}
