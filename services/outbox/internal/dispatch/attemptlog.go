package dispatch

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// AttemptMessage is the message of the one line logged per delivery attempt, so support can
// search the log for an email by id and see every attempt with the relay's reply; `postamt up`
// picks these lines out of the log for its console.
const AttemptMessage = "delivery attempt"

// logAttempt writes the line of one attempt: the email, tenant and connector, the attempt's
// number, outcome and duration, the relay's reply, and what follows (the status, and when the
// next attempt is due). Never the body; the recipients only as a count unless LogRecipients is
// set, and then also their addresses (a relay's reply that quotes one has it replaced by
// "<recipient>" otherwise). A permanent failure (a 5xx reply) or FAILED mail is an ERROR, any
// other failure a WARN.
//
//nolint:contextcheck // logs with context.Background on purpose: the attributes are explicit, none from a context
func (d *Dispatcher) logAttempt(e *redisstore.Email, res smtp.Result, dec outbox.Decision, start, end time.Time) {
	level := slog.LevelInfo
	switch {
	case res.Code >= 500 || res.Outcome == outbox.OutcomePermanent || dec.Status == outbox.StatusFailed:
		level = slog.LevelError
	case res.Outcome != outbox.OutcomeSent:
		level = slog.LevelWarn
	}
	ctx := context.Background()
	if !d.Logger.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 14)
	attrs = append(attrs,
		slog.String("email", e.ID), slog.String("tenant", e.Tenant), slog.String("connector", e.Connector),
		slog.Int("attempt", e.Attempts+1), slog.String("outcome", outcomeLabel(res.Outcome)),
		slog.String("status", dec.Status.String()), slog.Duration("duration", end.Sub(start)),
	)
	if res.Code != 0 {
		attrs = append(attrs, slog.Int("smtp_code", res.Code))
	}
	if res.Enhanced != "" {
		attrs = append(attrs, slog.String("smtp_enhanced", res.Enhanced))
	}
	reply := res.Message
	if d.LogRecipients {
		attrs = append(attrs, slog.Any("recipients", e.Rcpts))
	} else {
		attrs = append(attrs, slog.Int("recipients", len(e.Rcpts)))
		reply = redactRecipients(reply, e.Rcpts)
	}
	if reply != "" {
		attrs = append(attrs, slog.String("smtp_reply", reply))
	}
	if dec.Status == outbox.StatusPendingRetry {
		attrs = append(attrs, slog.Time("next_attempt", end.Add(dec.Delay)))
	}
	if dec.MayHaveBeenSent {
		attrs = append(attrs, slog.Bool("may_have_been_sent", true))
	}
	d.Logger.LogAttrs(ctx, level, AttemptMessage, attrs...)
}

// redactRecipients replaces each recipient address quoted in a relay's reply ("550 5.1.1
// <eva@example.com>: Recipient address rejected") with "<recipient>".
func redactRecipients(reply string, rcpts []string) string {
	if reply == "" || !strings.Contains(reply, "@") {
		return reply
	}
	lower := strings.ToLower(reply)
	for _, r := range rcpts {
		if r == "" {
			continue
		}
		lr := strings.ToLower(r)
		for i := strings.Index(lower, lr); i >= 0; i = strings.Index(lower, lr) {
			reply = reply[:i] + "recipient" + reply[i+len(r):]
			lower = lower[:i] + "recipient" + lower[i+len(lr):]
		}
	}
	return reply
}
