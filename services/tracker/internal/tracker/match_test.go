package tracker

import (
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode"
)

// TestFoldSubjectIsTheFormula: smart keys are stored, so foldSubject (one pass) must fold every
// subject exactly as the formula it replaced did: unicode spaces, upper case beyond ASCII,
// invalid UTF-8, and random mixes of them.
func TestFoldSubjectIsTheFormula(t *testing.T) {
	formula := func(s string) string {
		return strings.Join(strings.FieldsFunc(strings.ToLower(s), unicode.IsSpace), " ")
	}
	cases := []string{"", " ", "  Angebot  ", "Ihr ANGEBOT\tvom\n3. März", "\u00a0Ä\u2003Ö\u3000Ü\u0085ẞ", "İSTANBUL ΣΟΦΊΑ",
		"a\xffb \xfe", "\xc3", "x\u200by", "ǅ ǈ ǋ", "ＡＢＣ　ｄｅｆ"}
	alphabet := []rune("aZ09 \t\n\u00a0\u2028ÄäİıΣσςǅẞ\uFFFD:!.\u3000Ａ")
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 5000 {
		var b strings.Builder
		for range rnd.IntN(24) {
			if rnd.IntN(20) == 0 {
				b.WriteByte(byte(0x80 + rnd.IntN(0x80))) // invalid UTF-8
				continue
			}
			b.WriteRune(alphabet[rnd.IntN(len(alphabet))])
		}
		cases = append(cases, b.String())
	}
	for _, s := range cases {
		if got, want := foldSubject(s), formula(s); got != want {
			t.Fatalf("foldSubject(%q) = %q, want %q", s, got, want)
		}
	}
}

// TestSmartKeyIsStable pins the smart key (stored with every tracked email) to the hash it has
// always been: SHA-256 of the normalised subject and each address after a zero byte, first 16
// bytes in hex.
func TestSmartKeyIsStable(t *testing.T) {
	long := strings.Repeat("x", 600) + "@example.com" // past SmartKey's stack buffer
	for _, m := range []*Message{
		{Subject: "AW: Ihr Angebot  CRM:0001001", From: "max@kanzlei.example", To: []string{"erika@kunde.example"}, Cc: []string{"a@b.example", "erika@kunde.example"}},
		{Subject: "Re: Termin", From: "max@kanzlei.example", To: []string{long}},
	} {
		set := addressSet(m)
		h := sha256.New()
		h.Write([]byte(NormalizeSubject(m.Subject)))
		for _, a := range set {
			h.Write([]byte{0})
			h.Write([]byte(a))
		}
		if got, want := SmartKey(m), hex.EncodeToString(h.Sum(nil)[:16]); got != want || got == "" {
			t.Errorf("SmartKey(%q) = %q, want %q", m.Subject, got, want)
		}
	}
	// sha256("ihr angebot\x00erika@kunde.example\x00max@kanzlei.example"), first 16 bytes.
	if got := SmartKey(&Message{Subject: "AW: Ihr  Angebot", From: "max@kanzlei.example", To: []string{"erika@kunde.example"}}); got != "d0c58d12c3898942676a2f778cbcc9a3" {
		t.Errorf("smart key of the fixed message = %s", got)
	}
}
