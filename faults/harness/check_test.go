package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// TestScanLogsFindsWhatNoLogMayHold runs the log scan on a made-up log: a panic, a token the
// harness minted, another JWT, the secret and a body's marker are each reported once per process
// and kind, with the secret and tokens masked in the quoted line; a clean line is not.
func TestScanLogsFindsWhatNoLogMayHold(t *testing.T) {
	const (
		minted = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJldmEifQ.c2lnbmF0dXJlc2lnbmF0dXJl"
		other  = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvdXRib3gifQ.b3RoZXJzaWduYXR1cmU"
	)
	s := &Suite{secret: "s3cr3t-s3cr3t-s3cr3t", marker: newMarker(), tokens: map[string]bool{minted: true}}
	log := strings.Join([]string{
		`{"level":"INFO","msg":"serving"}`,
		`panic: runtime error: index out of range`,
		`goroutine 17 [running]:`,
		`{"msg":"call","authorization":"Bearer ` + minted + `"}`,
		`{"msg":"token","t":"` + other + `"}`,
		`{"msg":"config","secret":"s3cr3t-s3cr3t-s3cr3t"}`,
		`{"msg":"body","text":"anbei die Unterlagen (` + s.marker + `)"}`,
	}, "\n")
	path := filepath.Join(t.TempDir(), "mailbox.log")
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	s.Mailbox = &Process{Name: "mailbox", LogPath: path}
	got := s.ScanLogs()
	want := []string{
		"mailbox logged a JWT 1 times",
		"mailbox logged a bearer token the harness sent 1 times",
		"mailbox logged a message body (the marker every body carries) 1 times",
		"mailbox logged a stack trace 2 times",
		"mailbox logged the AUTH_HS256_SECRET value 1 times",
	}
	if len(got) != len(want) {
		t.Fatalf("ScanLogs found %d kinds, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("finding %d = %q, want it to start with %q", i, got[i], want[i])
		}
		if strings.Contains(got[i], s.secret) || strings.Contains(got[i], minted) || strings.Contains(got[i], other) {
			t.Errorf("finding %d quotes the secret or a token unmasked: %s", i, got[i])
		}
	}
}

// TestTableRows renders a checked row, one that failed before Check, and refusals.
func TestTableRows(t *testing.T) {
	var b strings.Builder
	writeTable(&b, []*Result{
		{Scenario: "TestA", Load: "30 emails", Fault: "451 | thrice", Accepted: 30, Refused: 2, Delivered: 30, Duplicated: 3, Ambiguous: 3, Recovered: 1500 * time.Millisecond, checked: true, verdict: "pass"},
		{Scenario: "TestB", Load: "x", Fault: "y", verdict: "FAIL (before Check)"},
	})
	got := b.String()
	for _, want := range []string{
		"| TestA | 30 emails | 451 \\| thrice | 30 (2 refused) | 30 | 3 (3) | 0 | 0 | 1.5s | pass |",
		"| TestB | x | y | — | — | — | — | — | — | FAIL (before Check) |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}

// TestSentEarly: a scheduled email is early when its first copy reached a relay, or an attempt
// started, before its send_at (to the millisecond the due index counts); mail due at once and
// mail sent on time are not.
func TestSentEarly(t *testing.T) {
	due := time.Date(2026, 12, 7, 12, 0, 0, 500_700_000, time.UTC) // .5007: the index says .500
	mail := []Submitted{
		{ID: "now", MessageID: "m-now"},
		{ID: "on-time", MessageID: "m-on-time", SendAt: due},
		{ID: "same-ms", MessageID: "m-same-ms", SendAt: due},
		{ID: "early-copy", MessageID: "m-early-copy", SendAt: due},
		{ID: "early-attempt", MessageID: "m-early-attempt", SendAt: due},
	}
	emails := map[string]*outboxv1.Email{
		"early-attempt": {Attempts: []*outboxv1.Attempt{{Number: 1, StartTime: timestamppb.New(due.Add(-2 * time.Second))}}},
	}
	first := map[string]time.Time{
		"m-now":           due.Add(-time.Hour),
		"m-on-time":       due.Add(time.Millisecond),
		"m-same-ms":       due.Add(-200 * time.Microsecond),
		"m-early-copy":    due.Add(-time.Second),
		"m-early-attempt": due.Add(time.Second),
	}
	got := sentEarly(mail, emails, first)
	if len(got) != 2 || !strings.HasPrefix(got[0], "early-copy ") || !strings.HasPrefix(got[1], "early-attempt ") {
		t.Errorf("sentEarly = %q, want early-copy and early-attempt only", got)
	}
}
