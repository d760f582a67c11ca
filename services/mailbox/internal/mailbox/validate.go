package mailbox

import (
	"regexp"
	"strconv"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
	"github.com/postamt/postamt/internal/mailaddr"
)

// Input limits. Every string and list a caller sends is bounded so one request cannot bloat Redis.
const (
	maxNameLen     = 200
	maxUsernameLen = 256
	maxRoles       = 20
	maxTeamUsers   = 1000
)

var (
	rolePattern = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)
)

// checkTenantID and checkID are the suite's id rule (internal/ids), the same in every service.
func checkTenantID(v *errs.Violations, field, id string) { ids.CheckTenant(v, field, id) }

func checkID(v *errs.Violations, field, id string) { ids.Check(v, field, id) }

// tenantIDErr is checkTenantID for a single id.
func tenantIDErr(field, id string) error {
	var v errs.Violations
	checkTenantID(&v, field, id)
	return v.Err()
}

// checkText is the suite's one-line rule (errs.Violations.Line): these strings end up in mail
// headers (display names in From and Sender) and in the directory the calendar compares.
func checkText(v *errs.Violations, field, s string, required bool, max int) {
	if s == "" && required {
		v.Add(field, "is required")
		return
	}
	v.Line(field, s, max)
}

// checkAddress accepts a bare addr-spec (no display name), because mailbox and user addresses
// are identities, not header values: the suite's one address rule (internal/mailaddr).
func checkAddress(v *errs.Violations, field, addr string) { mailaddr.Check(v, field, addr) }

func checkRoles(v *errs.Violations, field string, roles []string) {
	if len(roles) > maxRoles {
		v.Addf(field, "must hold at most %d roles", maxRoles)
		return
	}
	for i, r := range roles {
		if !rolePattern.MatchString(r) {
			v.Addf(field+"["+strconv.Itoa(i)+"]", "must be 1-32 characters of a-z, 0-9, '_' and '-', starting with a letter")
		}
	}
}

func checkUserList(v *errs.Violations, field string, ids []string) {
	if len(ids) > maxTeamUsers {
		v.Addf(field, "must hold at most %d users", maxTeamUsers)
		return
	}
	for i, id := range ids {
		checkID(v, field+"["+strconv.Itoa(i)+"]", id)
	}
}

func checkRights(v *errs.Violations, field string, r Rights, required bool) {
	if r&^rightsAll != 0 {
		v.Add(field, "holds an unknown right")
	}
	if required && r == 0 {
		v.Add(field, "must hold at least one right")
	}
}
