package mailaddr_test

import (
	"net/mail"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/mailaddr"
)

// FuzzCheck: Check never panics, agrees with Valid, and what it accepts can go into a header and
// an SMTP command as it is: at most MaxLen bytes of valid UTF-8, no control character, space or
// angle bracket (nothing that ends "RCPT TO:<...>" or a header line early), one "@" with a
// local part and a domain on either side, and it survives being written as an address header
// and read back (net/mail, which mailbox and the outbox both use) unchanged.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{
		"info@kanzlei.example", "Info@Kanzlei.example", "", "info@kanzlei.example\r\n",
		"info@kanzlei.example\r\nBcc: x@evil.example", " info@kanzlei.example ", "Info <info@kanzlei.example>",
		"info", "info\t@kanzlei.example", strings.Repeat("a", 250) + "@x.example", "\"a b\"@x.example",
		"a@[127.0.0.1]", "jürgen@groß.example", "a@b", "a.b+c@d.e", "a@b@c", "=?utf-8?q?x?=@x.example",
		"a@x.example>", "<a@x.example>", "a(comment)@x.example", "\u2028@x.example", "a@x.example\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, a string) {
		var v errs.Violations
		mailaddr.Check(&v, "to[0]", a)
		if valid := mailaddr.Valid(a); valid != (len(v) == 0) {
			t.Fatalf("Valid(%q) = %v, but Check recorded %v", a, valid, v)
		}
		for _, fv := range v {
			if fv.Field != "to[0]" || fv.Description == "" {
				t.Fatalf("violation %+v does not name the field", fv)
			}
		}
		if len(v) > 0 {
			return
		}
		switch {
		case len(a) > mailaddr.MaxLen:
			t.Fatalf("accepted %d bytes, over MaxLen", len(a))
		case !utf8.ValidString(a):
			t.Fatalf("accepted invalid UTF-8 %q", a)
		case strings.ContainsFunc(a, func(r rune) bool {
			return unicode.IsControl(r) || unicode.IsSpace(r) || r == '<' || r == '>' || r == '\u2028' || r == '\u2029'
		}):
			t.Fatalf("accepted %q: a control character, space or angle bracket", a)
		}
		at := strings.LastIndexByte(a, '@')
		if at <= 0 || at == len(a)-1 {
			t.Fatalf("accepted %q without a local part and a domain", a)
		}
		// Written into a header (as mailbox's formatAddress and go-message do) and read back.
		for _, name := range []string{"", "Kanzlei Muster", "Jürgen Groß"} {
			h := (&mail.Address{Name: name, Address: a}).String()
			if strings.ContainsAny(h, "\r\n") {
				t.Fatalf("the header value of %q holds a line break: %q", a, h)
			}
			back, err := mail.ParseAddress(h)
			if err != nil || back.Address != a || back.Name != name {
				t.Fatalf("%q written as %q reads back as %+v, %v", a, h, back, err)
			}
		}
		list, err := mail.ParseAddressList(a + ", " + a)
		if err != nil || len(list) != 2 || list[0].Address != a || list[1].Address != a {
			t.Fatalf("%q in an address list reads back as %v, %v", a, list, err)
		}
	})
}

// FuzzFormat: a mailbox written by Format is one header line that net/mail (and go-message,
// which parses with it) reads back as the same name and address, whatever the name holds short
// of CR and LF, which the callers refuse.
func FuzzFormat(f *testing.F) {
	f.Add("Kanzlei Muster", "info@kanzlei.example")
	f.Add("Jürgen Groß", "j@example.com")
	f.Add("", "info@kanzlei.example")
	f.Add("Müller \\ Partner", "info@kanzlei.example")
	f.Add("\\\u0590", "0@0")
	f.Add("Muster, Max (Notar) \"Kanzlei\"", "max@kanzlei.example")
	f.Add("Grüße, \"Max\" <max@evil.example>", "max@kanzlei.example")
	f.Add("=?utf-8?q?Evil?=", "a@b.example")
	f.Add("Ä=?utf-8?q?Evil?=", "a@b.example")
	f.Add("tab\there", "a@b.example")
	f.Fuzz(func(t *testing.T, name, addr string) {
		if !mailaddr.Valid(addr) || !utf8.ValidString(name) || strings.ContainsAny(name, "\r\n") {
			return
		}
		h := mailaddr.Format(name, addr)
		if strings.ContainsAny(h, "\r\n") {
			t.Fatalf("Format(%q, %q) = %q: a line break in a header value", name, addr, h)
		}
		a, err := mail.ParseAddress(h)
		if err != nil {
			t.Fatalf("Format(%q, %q) = %q does not parse: %v", name, addr, h, err)
		}
		if a.Address != addr || a.Name != name {
			t.Fatalf("Format(%q, %q) = %q reads back as %q, %q", name, addr, h, a.Name, a.Address)
		}
		if list, err := mail.ParseAddressList(h + ", " + h); err != nil || len(list) != 2 || list[1].Name != name {
			t.Fatalf("Format(%q, %q) = %q twice in a list reads back as %v, %v", name, addr, h, list, err)
		}
	})
}
