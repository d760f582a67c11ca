package mailaddr_test

import (
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/mailaddr"
)

func TestValid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"plain", "info@kanzlei.example", true},
		{"upper case", "Info@Kanzlei.example", true},
		{"empty", "", false},
		{"trailing CR LF", "info@kanzlei.example\r\n", false},
		{"trailing LF", "info@kanzlei.example\n", false},
		{"CR LF inside", "info@kanzlei.example\r\nBcc: x@evil.example", false},
		{"surrounding space", " info@kanzlei.example ", false},
		{"display name", "Info <info@kanzlei.example>", false},
		{"no at", "info", false},
		{"tab", "info\t@kanzlei.example", false},
		{"too long", strings.Repeat("a", 250) + "@x.example", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mailaddr.Valid(tt.in); got != tt.want {
				t.Errorf("Valid(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}
