package connector

import (
	"testing"
	"time"
)

// TestEstimate: 2,000 emails through Exchange Online's per-mailbox limits from one sender are
// held by the 30 a minute (66 minutes after the first 30), not by the 10,000 recipients a day;
// a second sender halves it; a connector limit can decide instead; no limit, no wait.
func TestEstimate(t *testing.T) {
	exo := Connector{SenderLimits: Limits{MessagesPerMinute: 30, RecipientsPerDay: 10_000}}
	one := Batch{Messages: 2000, Recipients: 2000, BySender: map[string]Share{"info@kanzlei.example": {2000, 2000}}}
	if d, by := exo.Estimate(one); d != 66*time.Minute || by != "sender_limits.messages_per_minute for info@kanzlei.example" {
		t.Errorf("one sender: %v by %q", d, by)
	}
	two := Batch{Messages: 2000, Recipients: 2000, BySender: map[string]Share{"info@kanzlei.example": {1000, 1000}, "office@kanzlei.example": {1000, 1000}}}
	if d, _ := exo.Estimate(two); d != 33*time.Minute {
		t.Errorf("two senders: %v, want 33m", d)
	}
	newsletter := Batch{Messages: 100, Recipients: 25_000, BySender: map[string]Share{"info@kanzlei.example": {100, 25_000}}}
	if d, by := exo.Estimate(newsletter); d != 48*time.Hour || by != "sender_limits.recipients_per_day (rolling) for info@kanzlei.example" {
		t.Errorf("25,000 recipients: %v by %q, want two more days", d, by)
	}
	ses := Connector{Limits: Limits{MessagesPerSecond: 14}}
	if d, by := ses.Estimate(one); d != 142*time.Second || by != "limits.messages_per_second" {
		t.Errorf("SES: %v by %q", d, by)
	}
	if d, by := (&Connector{}).Estimate(one); d != 0 || by != "" {
		t.Errorf("no limits: %v by %q", d, by)
	}
}
