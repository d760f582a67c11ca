package smtp_test

import (
	"testing"

	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// TestClassifyThrottle: the replies the big providers document for their limits are told apart
// from the refusals that look alike by their codes (4.7.0 "TLS required", 4.4.2 "Timeout", a
// bare 421) and from refusals about the email.
func TestClassifyThrottle(t *testing.T) {
	tests := []struct {
		code     int
		enhanced string
		text     string
		want     smtp.Throttle
	}{
		// Exchange Online (SMTP AUTH submission limits).
		{451, "4.7.500", "Server busy. Please try again later from [203.0.113.5]. (S77719)", smtp.RateLimited},
		{432, "4.3.2", "Concurrent connections limit exceeded.", smtp.ConcurrencyLimited},
		{432, "4.3.2", "STOREDRV.ClientSubmit; sender thread limit exceeded", smtp.ConcurrencyLimited},
		{554, "5.2.0", "STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception", smtp.QuotaExhausted},
		{550, "5.1.90", "Your message can't be sent because you've reached your daily limit for message recipients", smtp.QuotaExhausted},
		// Gmail and Google Workspace.
		{550, "5.4.5", "Daily user sending quota exceeded. https://support.google.com/mail/?p=DailyLimitExceeded - gsmtp", smtp.QuotaExhausted},
		{421, "4.7.0", "Try again later, closing connection. (EHLO) - gsmtp", smtp.RateLimited},
		{450, "4.2.1", "The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time.", smtp.RateLimited},
		{450, "4.2.1", "Peak SMTP relay limit exceeded for customer. - gsmtp", smtp.RateLimited},
		{421, "4.7.0", "Our system has detected an unusual rate of unsolicited mail originating from your IP address.", smtp.RateLimited},
		// Amazon SES.
		{454, "", "Throttling failure: Maximum sending rate exceeded.", smtp.RateLimited},
		{454, "", "Throttling failure: Daily message quota exceeded.", smtp.QuotaExhausted},
		// Generic wording.
		{421, "4.4.2", "Message submission rate for this client has exceeded the configured limit", smtp.RateLimited},
		// Look-alikes that are not about pace.
		{421, "4.7.0", "TLS required for RCPT domain, closing connection.", smtp.NotThrottled},
		{421, "4.7.0", "IP not in whitelist for RCPT domain, closing connection.", smtp.NotThrottled},
		{451, "4.4.2", "Timeout - closing connection.", smtp.NotThrottled},
		{421, "4.3.0", "Temporary System Problem. Try again later", smtp.NotThrottled},
		{452, "4.2.2", "The email account that you tried to reach is over quota.", smtp.NotThrottled},
		{550, "5.1.1", "The email account that you tried to reach does not exist.", smtp.NotThrottled},
		{550, "5.7.1", "Message rejected: sending rate policy of example.com", smtp.NotThrottled},
		{250, "2.0.0", "Ok: queued, daily quota 3/500", smtp.NotThrottled},
	}
	for _, tt := range tests {
		if got := smtp.ClassifyThrottle(tt.code, tt.enhanced, tt.text); got != tt.want {
			t.Errorf("%d %s %s = %v, want %v", tt.code, tt.enhanced, tt.text, got, tt.want)
		}
	}
}
