package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestTerminalConsole: the log file gets every line; the terminal, once shown, one calm line per
// delivery attempt and per error of a service, nothing for other lines.
func TestTerminalConsole(t *testing.T) {
	var file, term bytes.Buffer
	c := &console{file: &file, term: &term}
	lines := []string{
		`{"time":"2026-12-07T10:00:00Z","level":"INFO","msg":"delivery attempt","service":"outbox","email":"e0","connector":"default","attempt":1,"outcome":"sent","status":"SENT","duration_ms":0.9,"smtp_code":250,"smtp_enhanced":"2.0.0","smtp_reply":"OK: queued"}`,
		`{"time":"2026-12-07T10:00:01Z","level":"INFO","msg":"delivery attempt","service":"outbox","email":"e1","connector":"default","attempt":1,"outcome":"sent","status":"SENT","duration_ms":0.9,"smtp_code":250,"smtp_enhanced":"2.0.0","smtp_reply":"OK: queued"}`,
		`{"time":"2026-12-07T10:00:02Z","level":"ERROR","msg":"delivery attempt","service":"outbox","email":"e2","connector":"relay","attempt":2,"outcome":"permanent","status":"FAILED","duration_ms":1.2,"smtp_code":550,"smtp_enhanced":"5.1.1","smtp_reply":"no such user"}`,
		`{"time":"2026-12-07T10:00:03Z","level":"WARN","msg":"delivery attempt","service":"outbox","email":"e3","connector":"relay","attempt":1,"outcome":"temporary","status":"PENDING_RETRY","duration_ms":1,"smtp_code":451,"smtp_reply":"later","next_attempt":"2026-12-07T10:01:03Z"}`,
		`{"time":"2026-12-07T10:00:04Z","level":"INFO","msg":"rpc","service":"mailbox","method":"/x"}`,
		`{"time":"2026-12-07T10:00:05Z","level":"ERROR","msg":"result not recorded","service":"outbox","error":"redis down"}`,
		`{"time":"2026-12-07T10:00:06Z","level":"ERROR","msg":"redis-server exited; restarting it","service":"up"}`,
	}
	_, _ = c.Write([]byte(lines[0] + "\n")) // before the quick start: the file only
	c.show()
	for _, l := range lines[1:] {
		_, _ = c.Write([]byte(l + "\n"))
	}
	if got := strings.Count(file.String(), "\n"); got != len(lines) {
		t.Errorf("the file has %d lines, want %d", got, len(lines))
	}
	got := strings.Split(strings.TrimSpace(term.String()), "\n")
	want := []string{
		"sent       email e1 via default: 250 2.0.0 OK: queued [0.9 ms]",
		"FAILED     email e2 via relay (attempt 2): 550 5.1.1 no such user [1.2 ms]",
		"retry      email e3 via relay: 451 later; next attempt ",
		"error      outbox: result not recorded: redis down",
	}
	if len(got) != len(want) {
		t.Fatalf("terminal:\n%s\nwant %d lines", term.String(), len(want))
	}
	for i, w := range want {
		if !strings.Contains(got[i], w) {
			t.Errorf("terminal line %d = %q, want it to contain %q", i, got[i], w)
		}
	}
}
