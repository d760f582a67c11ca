package ids_test

import (
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name   string
		id     string
		entity bool
		tenant bool
	}{
		{"plain", "max", true, true},
		{"dots, dashes and underscores", "p-max.2_b", true, false},
		{"upper case", "Max", true, false},
		{"64 characters", strings.Repeat("a", 64), true, true},
		{"65 characters", strings.Repeat("a", 65), false, false},
		{"5,000 characters", strings.Repeat("a", 5000), false, false},
		{"empty", "", false, false},
		{"path traversal", "../x", false, false},
		{"slash", "a/b", false, false},
		{"CR LF", "max\r\nBcc: x", false, false},
		{"trailing LF", "max\n", false, false},
		{"space", "max mustermann", false, false},
		{"leading dash", "-max", false, false},
		{"non-ASCII", "müller", false, false},
		{"NUL", "a\x00", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ids.Valid(tt.id); got != tt.entity {
				t.Errorf("Valid(%q) = %v, want %v", tt.id, got, tt.entity)
			}
			if got := ids.ValidTenant(tt.id); got != tt.tenant {
				t.Errorf("ValidTenant(%q) = %v, want %v", tt.id, got, tt.tenant)
			}
			err := ids.Err("user_id", tt.id)
			if (err == nil) != tt.entity || (err != nil && errs.KindOf(err) != errs.KindInvalid) {
				t.Errorf("Err = %v", err)
			}
		})
	}
	var v errs.Violations
	ids.CheckOptional(&v, "owner_user_id", "")
	if v.Err() != nil {
		t.Error("an optional empty id is a violation")
	}
}
