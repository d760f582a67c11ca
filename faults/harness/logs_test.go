package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestScanLogsFindsMalformedLines: a library's plain-text line and a JSON line with a key twice
// are each reported once per process; clean JSON lines are not.
func TestScanLogsFindsMalformedLines(t *testing.T) {
	s := &Suite{secret: "s3cr3t-s3cr3t-s3cr3t", marker: newMarker()}
	log := strings.Join([]string{
		`==== harness: mailbox starting at 2026-12-07T15:28:13.114952704Z`,
		`{"level":"INFO","msg":"serving","service":"mailbox"}`,
		`redis: 2026/12/07 15:00:00 pool.go:770: connection pool: failed to dial after 5 attempts`,
		`{"level":"INFO","msg":"rpc","service":"mailbox","service":"outbox"}`,
		``,
		`{"level":"INFO","msg":"rpc","service":"mailbox","peer_service":"outbox"}`,
	}, "\n")
	path := filepath.Join(t.TempDir(), "mailbox.log")
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	s.Mailbox = &Process{Name: "mailbox", LogPath: path}
	got := s.ScanLogs()
	want := []string{
		"mailbox logged a JSON line with a duplicate key 1 times",
		"mailbox logged a line that is not one JSON object 1 times",
	}
	if len(got) != len(want) {
		t.Fatalf("ScanLogs found %d kinds, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("finding %d = %q, want it to start with %q", i, got[i], want[i])
		}
	}
}
