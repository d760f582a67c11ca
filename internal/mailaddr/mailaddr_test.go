package mailaddr_test

import (
	"net/mail"
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
		{"non-ASCII", "jürgen@groß.example", true},
		// net/mail takes any non-ASCII rune into an atom (found by FuzzCheck).
		{"line separator U+2028", "info\u2028@kanzlei.example", false},
		{"no-break space", "info\u00a0x@kanzlei.example", false},
		{"ideographic space", "info@kanzlei.example\u3000", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mailaddr.Valid(tt.in); got != tt.want {
				t.Errorf("Valid(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

// TestFormat: names read back as they were; a backslash in a non-ASCII name, which net/mail's
// Address.String leaves inside a Q encoded word where no parser reads it, is B encoded (found by
// FuzzSenderAddress).
func TestFormat(t *testing.T) {
	tests := []struct{ name, want string }{
		{"", "<info@kanzlei.example>"},
		{"Kanzlei Muster", `"Kanzlei Muster" <info@kanzlei.example>`},
		{`Muster \ Partner`, `"Muster \\ Partner" <info@kanzlei.example>`},
		{"Jürgen Groß", "=?utf-8?q?J=C3=BCrgen_Gro=C3=9F?= <info@kanzlei.example>"},
		{`Müller \ Partner`, "=?utf-8?b?TcO8bGxlciBcIFBhcnRuZXI=?= <info@kanzlei.example>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mailaddr.Format(tt.name, "info@kanzlei.example")
			if got != tt.want {
				t.Errorf("Format = %s, want %s", got, tt.want)
			}
			a, err := mail.ParseAddress(got)
			if err != nil || a.Name != tt.name || a.Address != "info@kanzlei.example" {
				t.Errorf("%s reads back as %+v, %v", got, a, err)
			}
		})
	}
}
