package mailbox

import (
	"net/mail"
	"strings"
	"testing"

	"github.com/postamt/postamt/internal/errs"
)

// FuzzSenderAddress: a display name and an address that mailbox accepts (checkText, the suite's
// address rule) become the From and Sender value CheckSend returns (formatAddress), which the
// outbox reads with net/mail.ParseAddress before it builds the message. That value is one header
// line, and it reads back as the same address and the same name: a name mailbox accepts never
// makes the outbox refuse to send ("the directory returned an address that cannot be used") nor
// changes the address the mail is sent from.
func FuzzSenderAddress(f *testing.F) {
	f.Add("Kanzlei Muster", "info@kanzlei.example")
	f.Add("Jürgen Groß", "j@example.com")
	f.Add("", "info@kanzlei.example")
	f.Add("Muster, Max (Notar)", "max@kanzlei.example")
	f.Add(`"quoted" \ name`, "a@b.example")
	f.Add("=?utf-8?q?Evil?=", "a@b.example")
	f.Add("<evil@x.example>", "a@b.example")
	f.Add("  spaced  out  ", "a@b.example")
	f.Add("Kanzlei\u2028Muster", "a@b.example")
	f.Fuzz(func(t *testing.T, name, addr string) {
		var v errs.Violations
		checkText(&v, "mailbox.display_name", name, false, maxNameLen)
		checkAddress(&v, "mailbox.address", addr)
		if len(v) > 0 {
			return
		}
		h := formatAddress(name, addr)
		if strings.ContainsAny(h, "\r\n") {
			t.Fatalf("formatAddress(%q, %q) = %q: a line break in a header value", name, addr, h)
		}
		a, err := mail.ParseAddress(h)
		if err != nil {
			t.Fatalf("formatAddress(%q, %q) = %q does not parse: %v", name, addr, h, err)
		}
		if a.Address != addr {
			t.Fatalf("formatAddress(%q, %q) = %q reads back as address %q", name, addr, h, a.Address)
		}
		if a.Name != name {
			t.Fatalf("formatAddress(%q, %q) = %q reads back as name %q", name, addr, h, a.Name)
		}
	})
}
