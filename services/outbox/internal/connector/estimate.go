package connector

import (
	"fmt"
	"sort"
	"time"
)

// Batch is mail to estimate: how many messages and recipients, and from which senders.
type Batch struct {
	Messages, Recipients int
	// BySender holds each sender address's share (the envelope's From).
	BySender map[string]Share
}

// Share is one sender's part of a Batch.
type Share struct{ Messages, Recipients int }

// Estimate is how long the limits alone hold a batch, from an unused budget: the time at which
// the last message may start, and the limit that decides it ("" when no limit holds it). A
// window of length W allowing L units lets n units go by (ceil(n/L)−1)·W, the first L at once;
// a calendar day is taken as 24 hours. The relay's own speed and other mail drawing on the same
// budgets are not counted, so it is a lower bound — what support needs to say "not before".
func (c *Connector) Estimate(b Batch) (time.Duration, string) {
	var worst time.Duration
	var by string
	consider := func(d time.Duration, what string) {
		if d > worst || (d == worst && by == "" && d > 0) {
			worst, by = d, what
		}
	}
	windows := func(l Limits, field string, msgs, rcpts int, suffix string) {
		day := "rolling"
		if l.CalendarDay {
			day = "calendar"
		}
		for _, w := range []struct {
			name  string
			limit int
			units int
			per   time.Duration
		}{
			{"messages_per_second", l.MessagesPerSecond, msgs, time.Second},
			{"messages_per_minute", l.MessagesPerMinute, msgs, time.Minute},
			{"recipients_per_minute", l.RecipientsPerMinute, rcpts, time.Minute},
			{"recipients_per_day (" + day + ")", l.RecipientsPerDay, rcpts, 24 * time.Hour},
		} {
			if w.limit <= 0 || w.units <= w.limit {
				continue
			}
			consider(time.Duration((w.units+w.limit-1)/w.limit-1)*w.per, field+"."+w.name+suffix)
		}
	}
	windows(c.Limits, "limits", b.Messages, b.Recipients, "")
	senders := make([]string, 0, len(b.BySender))
	for s := range b.BySender {
		senders = append(senders, s)
	}
	sort.Strings(senders) // the same answer for the same batch
	for _, s := range senders {
		sh := b.BySender[s]
		windows(c.SenderLimits, "sender_limits", sh.Messages, sh.Recipients, fmt.Sprintf(" for %s", s))
	}
	return worst, by
}
