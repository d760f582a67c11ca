package smtp

import (
	"strings"
)

// Throttle is what a relay's refusal says about the pace of sending rather than about the email:
// relays that ration (Exchange Online's 30 messages a minute and 10,000 recipients a day per
// mailbox, Gmail's and Workspace's daily recipient caps, Amazon SES's rate and daily quota) answer
// a client that goes faster with replies like these, and an email refused for the pace is not at
// fault. The dispatcher (issue 21) acts on the connector as a whole and consumes no attempt of
// the email for them.
type Throttle uint8

// The kinds of throttling replies.
const (
	// NotThrottled: the reply is about the email or the relay's health, and the retry pattern
	// applies.
	NotThrottled Throttle = iota
	// RateLimited: too many messages or recipients in a short time ("451 4.7.500 Server busy",
	// "454 Throttling failure: Maximum sending rate exceeded", "450 4.2.1 … receiving mail too
	// quickly", "421 4.7.0 Try again later, closing connection"): slow the connector down.
	RateLimited
	// ConcurrencyLimited: too many connections at once ("432 4.3.2 Concurrent connections limit
	// exceeded", "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"): use fewer.
	ConcurrencyLimited
	// QuotaExhausted: a daily quota is used up ("550 5.4.5 Daily user sending quota exceeded",
	// "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", "454 Throttling
	// failure: Daily message quota exceeded"): hold the connector's mail until the quota resets,
	// even when the reply is 5xx.
	QuotaExhausted
)

// String names the kind for logs and the attempt history.
func (t Throttle) String() string {
	switch t {
	case RateLimited:
		return "rate_limited"
	case ConcurrencyLimited:
		return "concurrency_limited"
	case QuotaExhausted:
		return "quota_exhausted"
	}
	return "not_throttled"
}

// Wording the big providers use, lower case. A reply is read by its text as well as its codes,
// because the codes alone mislead: 4.7.0 is also "TLS required" and "IP not in whitelist", 4.4.2
// is also Gmail's "Timeout – closing connection", and a daily quota comes as 5xx.
var (
	quotaWords = []string{
		"daily user sending quota", "daily sending quota", "daily message quota", "daily limit",
		"daily quota", "sending quota exceeded", "submissionquotaexceeded", "quota for today",
		"recipient rate limit",
	}
	concurrencyWords = []string{
		"concurrent connection", "sender thread limit", "too many connections",
		"too many concurrent",
	}
	rateWords = []string{
		"rate limit", "rate exceeded", "sending rate", "submission rate", "message rate",
		"too many messages", "too many emails", "too many recipients in", "too quickly", "too fast",
		"throttl", "server busy", "server is busy", "try again later, closing connection",
		"unusual rate", "slow down", "peak smtp relay limit",
	}
)

// ClassifyThrottle reads a refusal: its reply code, its RFC 3463 enhanced code (may be empty)
// and its text. Only a refusal whose text speaks of pace is throttling; a bare "421 4.3.0
// Temporary System Problem" stays a temporary failure, under the retry pattern, so a relay that
// is broken rather than busy still ends in FAILED.
func ClassifyThrottle(code int, enhanced, text string) Throttle {
	if code < 400 || code >= 600 {
		return NotThrottled
	}
	t := strings.ToLower(text)
	switch {
	case containsAny(t, quotaWords):
		return QuotaExhausted
	case code >= 500:
		// A permanent refusal is about the email unless it names a quota: "550 5.7.1 rate"
		// policies of a receiving domain are not the connector's pace.
		return NotThrottled
	case containsAny(t, concurrencyWords):
		return ConcurrencyLimited
	case containsAny(t, rateWords):
		return RateLimited
	case strings.HasPrefix(enhanced, "4.7.") && strings.Contains(t, "busy"):
		return RateLimited
	}
	return NotThrottled
}

func containsAny(s string, words []string) bool {
	for _, w := range words {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}
