package dispatch

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// TestLogAttempt: one line per attempt with the email, connector, outcome and reply; a 5xx at
// ERROR, a 4xx at WARN; recipients counted and masked in the reply unless LogRecipients is set.
func TestLogAttempt(t *testing.T) {
	e := &redisstore.Email{ID: "em1", Tenant: "t1", Connector: "relay1", Attempts: 1, Rcpts: []string{"Eva@Example.com"}}
	start := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		res        smtp.Result
		dec        outbox.Decision
		recipients bool
		want       map[string]any
	}{
		{name: "sent", res: smtp.Result{Outcome: outbox.OutcomeSent, Code: 250, Enhanced: "2.0.0", Message: "Ok: queued as 6159CC01B4"},
			dec:  outbox.Decision{Status: outbox.StatusSent, ConsumesAttempt: true},
			want: map[string]any{"level": "INFO", "email": "em1", "connector": "relay1", "attempt": 2.0, "outcome": "sent", "smtp_code": 250.0, "smtp_reply": "Ok: queued as 6159CC01B4", "recipients": 1.0}},
		{name: "5xx", res: smtp.Result{Outcome: outbox.OutcomePermanent, Code: 550, Enhanced: "5.1.1", Message: "<eva@example.com>: Recipient address rejected"},
			dec:  outbox.Decision{Status: outbox.StatusFailed, ConsumesAttempt: true},
			want: map[string]any{"level": "ERROR", "outcome": "permanent", "status": outbox.StatusFailed.String(), "smtp_reply": "<recipient>: Recipient address rejected"}},
		{name: "4xx", res: smtp.Result{Outcome: outbox.OutcomeTemporary, Code: 451, Message: "try later"},
			dec:  outbox.Decision{Status: outbox.StatusPendingRetry, ConsumesAttempt: true, Delay: time.Minute},
			want: map[string]any{"level": "WARN", "outcome": "temporary", "next_attempt": "2026-12-07T10:00:01Z"}},
		{name: "recipients enabled", res: smtp.Result{Outcome: outbox.OutcomePermanent, Code: 550, Message: "<Eva@Example.com> unknown"},
			dec: outbox.Decision{Status: outbox.StatusFailed}, recipients: true,
			want: map[string]any{"smtp_reply": "<Eva@Example.com> unknown", "recipients": []any{"Eva@Example.com"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			d := &Dispatcher{Logger: slog.New(slog.NewJSONHandler(&buf, nil)), LogRecipients: tt.recipients}
			end := start.Add(time.Second - time.Minute) // next_attempt = end + Delay
			if tt.dec.Delay == 0 {
				end = start.Add(time.Second)
			}
			d.logAttempt(e, tt.res, tt.dec, start.Add(-time.Second), end)
			if n := strings.Count(buf.String(), "\n"); n != 1 {
				t.Fatalf("%d lines, want 1: %s", n, buf.String())
			}
			var got map[string]any
			if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if got["msg"] != AttemptMessage {
				t.Errorf("msg = %v", got["msg"])
			}
			for k, want := range tt.want {
				if g, _ := json.Marshal(got[k]); string(g) != mustJSON(want) {
					t.Errorf("%s = %s, want %s", k, g, mustJSON(want))
				}
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
