// Package ids is the one rule for the ids Postamt's APIs take — users, teams, mailboxes,
// connectors, emails, entries, records, tenants — so that every service refuses the same
// malformed id the same way (InvalidArgument naming the field), before it reaches a Redis key, a
// log line or another service. The rule is deliberately narrow: ids end up in Redis keys, NATS
// subjects and message ids, URLs and mail headers, where a slash, a space, CR/LF or a 5,000-byte
// string does harm.
package ids

import (
	"regexp"

	"github.com/postamt/postamt/internal/errs"
)

// MaxLen is the longest id of any kind, in bytes.
const MaxLen = 64

var (
	entityPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	tenantPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)
)

// Descriptions of the rules, as field violations say them.
const (
	entityRule = "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
	tenantRule = "must be 1-64 characters of a-z, 0-9 and -, starting with a letter or digit"
)

// Valid reports whether id is a well-formed id of an entity (user, team, mailbox, connector,
// email, entry, record, ...).
func Valid(id string) bool { return entityPattern.MatchString(id) }

// ValidTenant reports whether id is a well-formed tenant id: lower case, as it is also a DNS label
// in some deployments and a path segment of the gateway.
func ValidTenant(id string) bool { return tenantPattern.MatchString(id) }

// Check records a violation of field unless id is a well-formed entity id; an empty id is a
// violation ("is required").
func Check(v *errs.Violations, field, id string) {
	switch {
	case id == "":
		v.Add(field, "is required")
	case !Valid(id):
		v.Add(field, entityRule)
	}
}

// CheckOptional is Check for an id the request may leave empty.
func CheckOptional(v *errs.Violations, field, id string) {
	if id != "" {
		Check(v, field, id)
	}
}

// CheckTenant records a violation of field unless id is a well-formed tenant id.
func CheckTenant(v *errs.Violations, field, id string) {
	switch {
	case id == "":
		v.Add(field, "is required")
	case !ValidTenant(id):
		v.Add(field, tenantRule)
	}
}

// Err is Check for a single id: nil, or an InvalidArgument error naming field.
func Err(field, id string) error {
	var v errs.Violations
	Check(&v, field, id)
	return v.Err()
}
