package app

import "github.com/postamt/postamt/services/outbox/internal/dispatch"

// AttemptMessage is the msg of the log line the outbox writes for every delivery attempt (with
// email, tenant, connector, attempt, outcome, status, smtp_code, smtp_enhanced, smtp_reply,
// next_attempt, duration_ms): what support searches for an email id, and what `postamt up`
// shows on the terminal.
const AttemptMessage = dispatch.AttemptMessage
