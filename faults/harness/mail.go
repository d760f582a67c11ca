package harness

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// Batch describes emails to submit.
type Batch struct {
	Tenant    string
	Connector string
	N         int
	// Priority; unset is NORMAL.
	Priority outboxv1.Priority
	// SendAt schedules the batch; zero sends at once (the harness sets no undo delay).
	SendAt time.Time
	// Subject is the subjects' prefix; each gets " #i". Empty means "Fault test".
	Subject string
	// Clients is the number of concurrent submitters; 0 means 16.
	Clients int
	// RetryFor makes each submit carry an idempotency key and be retried with it, as the API asks
	// callers to, while the outbox answers UNAVAILABLE (a Redis failover), for up to RetryFor per
	// email; zero fails tb at the first refusal.
	RetryFor time.Duration
	// Retried, when set, counts the UNAVAILABLE answers that were retried.
	Retried *atomic.Int64
	// Keyed gives every submit an idempotency key ("Subject-i") also without RetryFor, so the
	// same batch submitted again names the same emails.
	Keyed bool
	// RegardingRecordID is set on every email (the tracker tracks mail regarding a record it
	// knows); empty sets none.
	RegardingRecordID string
}

// Submitted is one accepted email.
type Submitted struct {
	ID        string
	MessageID string
	Tenant    string
	Priority  outboxv1.Priority
	// Regarding is the email's regarding_record_id: the tracker is to track it once SENT.
	Regarding string
	// To is its (only) recipient, which tells its attempts apart at a scripted relay (Script).
	To string
	// SendAt is the send_at the outbox accepted it with, zero for mail due at once: Check
	// asserts no copy of it reached a relay, and no attempt started, before then.
	SendAt time.Time
}

func submitted(tenant string, e *outboxv1.Email) Submitted {
	m := Submitted{ID: e.GetEmailId(), MessageID: e.GetMessageId(), Tenant: tenant, Priority: e.GetPriority(), Regarding: e.GetRegardingRecordId(), To: Recipient(e)}
	if e.GetSendAt() != nil {
		m.SendAt = e.GetSendAt().AsTime()
	}
	return m
}

// Request is a submit of one email from the seeded user of tenant to to, with a body that
// carries the suite's marker (which Check looks for in the logs: no process may log a body).
// Callers set what else they need (idempotency key, connector, send_at).
func (s *Suite) Request(tenant, to, subject string) *outboxv1.SubmitEmailRequest {
	return &outboxv1.SubmitEmailRequest{
		FromAddress: Sender(tenant), To: []string{to}, Subject: subject,
		TextBody: "Guten Tag,\n\nanbei die Unterlagen (" + s.marker + ").\n",
	}
}

// Submit submits b's emails through the API replica from Clients goroutines at once, as fast as
// the outbox takes them, and returns them in the order of their index. A refused submit fails
// tb.
func (s *Suite) Submit(tb testing.TB, b Batch) []Submitted {
	tb.Helper()
	out, err := s.TrySubmit(b)
	if err != nil {
		tb.Fatalf("harness: %v", err)
	}
	return out
}

// TrySubmit is Submit returning the first refusal instead of failing a test, for a goroutine
// other than the test's.
func (s *Suite) TrySubmit(b Batch) ([]Submitted, error) {
	if b.Clients == 0 {
		b.Clients = 16
	}
	if b.Subject == "" {
		b.Subject = "Fault test"
	}
	var sendAt *timestamppb.Timestamp
	if !b.SendAt.IsZero() {
		sendAt = timestamppb.New(b.SendAt)
	}
	out := make([]Submitted, b.N)
	client := s.Outbox()
	ctx := s.AsUser(b.Tenant)
	errc := make(chan error, b.Clients)
	var wg sync.WaitGroup
	for w := range b.Clients {
		wg.Go(func() {
			for i := w; i < b.N; i += b.Clients {
				req := s.Request(b.Tenant, fmt.Sprintf("client-%d@example.com", i), fmt.Sprintf("%s #%d", b.Subject, i))
				req.Priority, req.ConnectorId, req.SendAt, req.RegardingRecordId = b.Priority, b.Connector, sendAt, b.RegardingRecordID
				if b.RetryFor > 0 || b.Keyed {
					req.IdempotencyKey = fmt.Sprintf("%s-%d", b.Subject, i)
				}
				r, err := client.SubmitEmail(ctx, req)
				for deadline := time.Now().Add(b.RetryFor); err != nil && status.Code(err) == codes.Unavailable && time.Now().Before(deadline); {
					if b.Retried != nil {
						b.Retried.Add(1)
					}
					time.Sleep(50 * time.Millisecond)
					r, err = client.SubmitEmail(ctx, req)
				}
				if err != nil {
					errc <- fmt.Errorf("submit #%d: %w", i, err)
					return
				}
				out[i] = submitted(b.Tenant, r.GetEmail())
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		return nil, err
	}
	return out, nil
}

// Email reads one email with its attempt history through the API replica.
func (s *Suite) Email(tb testing.TB, m Submitted) *outboxv1.Email {
	tb.Helper()
	r, err := s.Outbox().GetEmail(s.Admin(m.Tenant), &outboxv1.GetEmailRequest{EmailId: m.ID})
	if err != nil {
		tb.Fatalf("harness: get email %s: %v", m.ID, err)
	}
	return r.GetEmail()
}

// Emails reads every email of sent with its attempt history, a few at a time, keyed by id.
func (s *Suite) Emails(tb testing.TB, sent []Submitted) map[string]*outboxv1.Email {
	tb.Helper()
	out := make(map[string]*outboxv1.Email, len(sent))
	var mu sync.Mutex
	var first error
	client := s.Outbox()
	ctxs := map[string]context.Context{}
	for _, m := range sent {
		if ctxs[m.Tenant] == nil {
			ctxs[m.Tenant] = s.Admin(m.Tenant) //nolint:fatcontext // one context per tenant, none derived from another
		}
	}
	work := make(chan Submitted)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for m := range work {
				r, err := client.GetEmail(ctxs[m.Tenant], &outboxv1.GetEmailRequest{EmailId: m.ID})
				mu.Lock()
				if err != nil && first == nil {
					first = fmt.Errorf("get email %s: %w", m.ID, err)
				}
				out[m.ID] = r.GetEmail()
				mu.Unlock()
			}
		})
	}
	for _, m := range sent {
		work <- m
	}
	close(work)
	wg.Wait()
	if first != nil {
		tb.Fatalf("harness: %v", first)
	}
	return out
}

// StatusCounts counts a tenant's open emails (every status but SENT and CANCELLED, which the
// outbox does not count) per status, in one call: cheap enough to poll while thousands of emails
// are under way.
func (s *Suite) StatusCounts(tenant string) (Counts, error) {
	r, err := s.Outbox().CountEmails(s.Admin(tenant), &outboxv1.CountEmailsRequest{View: outboxv1.View_VIEW_ALL})
	if err != nil {
		return nil, err
	}
	out := Counts{}
	for _, c := range r.GetByStatus() {
		if c.GetCount() > 0 {
			out[c.GetStatus()] = int(c.GetCount())
		}
	}
	return out, nil
}

// Counts are emails per status.
type Counts map[outboxv1.EmailStatus]int

// Total is the number of emails counted.
func (c Counts) Total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// Unsettled is the number of emails still on their way: neither sent, cancelled nor failed.
func (c Counts) Unsettled() int {
	return c.Total() - c[outboxv1.EmailStatus_EMAIL_STATUS_SENT] - c[outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED] - c[outboxv1.EmailStatus_EMAIL_STATUS_FAILED]
}

// String lists the counts by status, for logs and failure messages.
func (c Counts) String() string {
	keys := slices.Sorted(maps.Keys(c))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", strings.TrimPrefix(k.String(), "EMAIL_STATUS_"), c[k])
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// Progress counts the n emails a test submitted to the given tenants (every seeded tenant when
// none is named) per status. The open ones are counted by the outbox; the rest, n minus those,
// are reported as SENT, though a mixed load (LoadSpec.CancelEvery) cancels some: the outbox
// counts neither SENT nor CANCELLED mail, and both are settled.
func (s *Suite) Progress(n int, tenants ...string) (Counts, error) {
	if len(tenants) == 0 {
		tenants = s.tenants
	}
	out := Counts{}
	for _, t := range tenants {
		c, err := s.StatusCounts(t)
		if err != nil {
			return nil, err
		}
		for k, v := range c {
			out[k] += v
		}
	}
	if sent := n - out.Total(); sent > 0 {
		out[outboxv1.EmailStatus_EMAIL_STATUS_SENT] = sent
	}
	return out, nil
}

// WaitSettled polls the ledger until none of the n emails is on its way any more (each SENT or
// FAILED) or timeout passes, and returns the last counts and whether they settled. Polling errors
// (Redis restarting, say) count as not settled yet; the last one is in the counts' absence.
func (s *Suite) WaitSettled(n int, timeout time.Duration, tenants ...string) (Counts, bool) {
	var last Counts
	ok := Eventually(timeout, func() bool {
		c, err := s.Progress(n, tenants...)
		if err != nil {
			return false
		}
		last = c
		return c.Unsettled() == 0
	})
	return last, ok
}

// StopDispatchers ends every running dispatcher with SIGTERM, in parallel, each given wait to
// exit before it is killed, and returns how each ended. With no dispatcher left, nothing is being
// sent: a Relay's Close after it makes the counts at the sink final.
func (s *Suite) StopDispatchers(wait time.Duration) map[string]Exit {
	out := map[string]Exit{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range s.Dispatchers {
		if !p.Running() {
			continue
		}
		wg.Go(func() {
			e := p.Term(wait)
			mu.Lock()
			out[p.Name] = e
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// Tally holds the invariants fault tests check, computed from the ledger (each email's record and
// attempt history) against what the relays received.
type Tally struct {
	Emails   int
	ByStatus Counts
	// CopiesHist counts emails by the number of copies the relays received (0: never arrived).
	CopiesHist map[int]int
	// Uncounted lists emails received k > 1 times with fewer than k-1 attempts of outcome
	// UNKNOWN in their history: duplicates nobody can see.
	Uncounted []string
	// NotOnce lists emails not received exactly once.
	NotOnce []string
	// AttemptsNot1 lists emails whose attempt count is not 1.
	AttemptsNot1 []string
	// Unknown is the number of UNKNOWN attempts in all histories.
	Unknown int
	// Foreign is the number of messages at the relays none of the emails has the Message-ID of.
	Foreign int
}

// Tally reads every email of sent and compares it with the relays' copies. Call it after the
// relays are closed (their counts final) for a verdict, or earlier for a progress report.
func (s *Suite) Tally(tb testing.TB, sent []Submitted, relays ...*Relay) Tally {
	tb.Helper()
	copies := map[string]int{}
	for _, r := range relays {
		for id, n := range r.Copies() {
			copies[id] += n
		}
	}
	return tally(sent, s.Emails(tb, sent), copies)
}

// tally compares the records of sent with the copies per Message-ID the relays received.
func tally(sent []Submitted, emails map[string]*outboxv1.Email, copies map[string]int) Tally {
	t := Tally{Emails: len(sent), ByStatus: Counts{}, CopiesHist: map[int]int{}}
	known := map[string]bool{}
	for _, m := range sent {
		e := emails[m.ID]
		known[m.MessageID] = true
		k := copies[m.MessageID]
		t.ByStatus[e.GetStatus()]++
		t.CopiesHist[k]++
		unknown := 0
		for _, a := range e.GetAttempts() {
			if a.GetOutcome() == outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_UNKNOWN {
				unknown++
			}
		}
		t.Unknown += unknown
		if k > 1 && unknown < k-1 {
			t.Uncounted = append(t.Uncounted, fmt.Sprintf("%s (%d copies, %d unknown of %d attempts)", m.ID, k, unknown, e.GetAttemptCount()))
		}
		if k != 1 {
			t.NotOnce = append(t.NotOnce, fmt.Sprintf("%s (%d copies, %s, %d attempts)", m.ID, k, e.GetStatus(), e.GetAttemptCount()))
		}
		if e.GetAttemptCount() != 1 {
			t.AttemptsNot1 = append(t.AttemptsNot1, fmt.Sprintf("%s (%d attempts, %s)", m.ID, e.GetAttemptCount(), e.GetStatus()))
		}
	}
	for id, n := range copies {
		if !known[id] {
			t.Foreign += n
		}
	}
	return t
}

// String summarises the tally for a failure message or the log.
func (t Tally) String() string {
	ks := make([]int, 0, len(t.CopiesHist))
	for k := range t.CopiesHist {
		ks = append(ks, k)
	}
	sort.Ints(ks)
	hist := make([]string, len(ks))
	for i, k := range ks {
		hist[i] = fmt.Sprintf("%d× %d", k, t.CopiesHist[k])
	}
	return fmt.Sprintf("%d emails %s; copies at the relay per email [%s]; %d not exactly once, %d uncounted duplicates, %d UNKNOWN attempts, %d with attempts≠1, %d foreign messages",
		t.Emails, t.ByStatus, strings.Join(hist, ", "), len(t.NotOnce), len(t.Uncounted), t.Unknown, len(t.AttemptsNot1), t.Foreign)
}

// Some returns the first n entries of list, for failure messages that name examples.
func Some(list []string, n int) string {
	if len(list) <= n {
		return strings.Join(list, "; ")
	}
	return strings.Join(list[:n], "; ") + fmt.Sprintf("; and %d more", len(list)-n)
}

// IDs lists the ids of a tenant's emails in status st, through the API replica.
func (s *Suite) IDs(tb testing.TB, tenant string, st outboxv1.EmailStatus) []string {
	tb.Helper()
	var ids []string
	req := &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{Statuses: []outboxv1.EmailStatus{st}}, PageSize: 500}
	for range 1000 { // bounded: 500,000 emails, more than any fault test submits
		r, err := s.Outbox().ListEmails(s.Admin(tenant), req)
		if err != nil {
			tb.Fatalf("harness: list %s emails of %s: %v", st, tenant, err)
		}
		for _, e := range r.GetEmails() {
			ids = append(ids, e.GetEmailId())
		}
		if r.GetNextPageToken() == "" {
			return ids
		}
		req.PageToken = r.GetNextPageToken()
	}
	tb.Fatalf("harness: listing %s emails of %s did not end", st, tenant)
	return nil
}
