package redisstore

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// TestDecodeCandidate: the member scanner finds what encoding/json finds, whatever the email
// holds (escapes, nested quotes and brackets, missing members), and falls back on what it does
// not follow.
func TestDecodeCandidate(t *testing.T) {
	sent := time.Date(2026, 11, 30, 9, 0, 0, 123456789, time.UTC)
	reg := &tracker.RecordRef{ID: "a-1", Kind: tracker.KindAccount, DisplayName: `Muster "AG" {1} [2] \ ü`}
	emails := []tracker.TrackedEmail{
		{MessageID: "m1@x", SentAt: sent, Subject: `AW: "Angebot" {x} [y] \\ \"`, Regarding: reg,
			Links:       []tracker.Link{{Address: "a@b", Role: tracker.RoleTo, Record: *reg}},
			Explanation: tracker.Explanation{MessageID: "m1@x", Rules: []tracker.RuleOutcome{{Rule: tracker.RuleRecords, Args: []string{`"}]`, `{[`}}}}},
		{MessageID: "m2@x", SentAt: sent, To: []string{"x@y"}},
		{MessageID: "m3@x"},
	}
	for _, e := range emails {
		b := appendEmail(nil, &e)
		got, err := decodeCandidate(string(b))
		if err != nil {
			t.Fatal(err)
		}
		var want candidateJSON
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if got.MessageID != want.MessageID || !got.SentAt.Equal(want.SentAt) || (got.Regarding == nil) != (want.Regarding == nil) ||
			(got.Regarding != nil && *got.Regarding != *want.Regarding) {
			t.Errorf("%s: scanned %+v, decoded %+v", e.MessageID, got, want)
		}
	}
	for _, bad := range []string{`[1]`, `{"mid":"x"`, `{"mid" "x"}`, `{"a":"\`} {
		if _, ok := findMembers(bad, candidateFields); ok {
			t.Errorf("findMembers(%q) accepted", bad)
		}
	}
	if _, err := decodeCandidate(`{"mid":`); err == nil {
		t.Error("broken JSON decoded")
	}
}
