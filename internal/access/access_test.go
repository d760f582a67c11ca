package access_test

import (
	"slices"
	"testing"

	"github.com/postamt/postamt/internal/access"
	"github.com/postamt/postamt/internal/auth"
)

func TestSeesBcc(t *testing.T) {
	for _, tc := range []struct {
		name   string
		p      auth.Principal
		sender string
		want   bool
	}{
		{"the sender", auth.Principal{Tenant: "k", User: "max"}, "max", true},
		{"a colleague", auth.Principal{Tenant: "k", User: "martina", Teams: []string{"empfang"}}, "max", false},
		{"an admin", auth.Principal{Tenant: "k", User: "admin", Roles: []string{auth.RoleAdmin}}, "max", true},
		{"a service", auth.Principal{Tenant: "k", Service: "crm"}, "max", true},
		{"a user, system mail", auth.Principal{Tenant: "k", User: "max"}, "", false},
		{"no user, no sender", auth.Principal{Tenant: "k"}, "", false},
	} {
		if got := access.SeesBcc(tc.p, tc.sender); got != tc.want {
			t.Errorf("%s: SeesBcc = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestTeamsTokenNarrowsNeverAdds(t *testing.T) {
	dir := []string{"empfang", "recht"}
	for _, tc := range []struct {
		token, want []string
	}{
		{nil, dir},
		{[]string{"recht"}, []string{"recht"}},
		{[]string{"recht", "buchhaltung"}, []string{"recht"}},
		{[]string{"buchhaltung"}, []string{}},
	} {
		if got := access.Teams(dir, tc.token); !slices.Equal(got, tc.want) {
			t.Errorf("Teams(%v, %v) = %v, want %v", dir, tc.token, got, tc.want)
		}
	}
}
