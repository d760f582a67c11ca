package harness

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/testkit/smtptest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
)

// Load is a steady stream of submits, as users keep sending while something fails: Clients
// goroutines each submit one email per Interval until Stop. A refused submit is counted, not
// fatal: whether the outbox keeps accepting during a fault is what a test asks.
//
// A mixed load (LoadSpec.ScheduleEvery, CancelEvery, RetryEvery) also schedules mail a few
// seconds ahead, cancels some of it inside its schedule, and retries mail the relay refused, as
// users do in the outbox page. It knows what each email is to end as (Expect), which Check
// asserts when Expect.Load names the load.
type Load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	s      *Suite
	spec   LoadSpec

	mu       sync.Mutex
	accepted []Submitted
	at       []time.Time // at[i]: when accepted[i] was accepted
	refused  []Refusal
	// kind says how each accepted email was submitted, by id.
	kind map[string]mailKind
	// cancelled: a cancel was answered as applied; cancelOpen: a cancel was tried without a
	// clear answer (the ledger decides at Stop).
	cancelled, cancelOpen map[string]bool
	// retried: a Retry was answered as applied; retryOpen: a Retry was tried without a clear
	// answer (the ledger decides at Stop). refusing: the recipients the relay refuses, until
	// the load retries their email.
	retried, retryOpen map[string]bool
	refusing           map[string]bool
	// final is set by Stop: the status each email not to end SENT is to end in.
	final map[string]outboxv1.EmailStatus
}

// mailKind is how a mixed load submitted an email.
type mailKind int

const (
	kindNow       mailKind = iota // due at once
	kindScheduled                 // send_at ScheduleAhead ahead
	kindCancel                    // scheduled, then cancelled inside its schedule
	kindRetry                     // refused by the relay (550) until the load retries it
)

// Refusal is a submit the outbox did not accept.
type Refusal struct {
	At  time.Time
	Err error
}

// LoadSpec describes a load.
type LoadSpec struct {
	Tenant string
	// Clients is the number of concurrent submitters; 0 means 4.
	Clients int
	// Interval is each client's pause between two submits; 0 means 50ms.
	Interval time.Duration
	// RegardingRecordID is set on every email (the tracker tracks mail regarding a record it
	// knows); empty sets none.
	RegardingRecordID string
	// Subject is the subjects' prefix; each gets " #client-i". Empty means "Load".
	Subject string
	// Priority is every email's; unset is NORMAL. HIGH lets the load's mail pass a backlog of
	// NORMAL mail, as a person's mail passes a bulk mailing.
	Priority outboxv1.Priority
	// RetryFor makes every submit carry an idempotency key and be retried with it while the
	// outbox answers UNAVAILABLE or the call times out, for up to RetryFor, as the API asks
	// callers to: a submit that Redis stored but whose answer was lost (Redis killed in
	// between) is then found, not lost to the load and sent as nobody's. Zero submits once.
	RetryFor time.Duration

	// ScheduleEvery > 0 makes every ScheduleEvery-th submit of a client scheduled, send_at
	// ScheduleAhead ahead: Check asserts it reaches no relay before then.
	ScheduleEvery int
	// CancelEvery > 0 makes every CancelEvery-th submit of a client scheduled ScheduleAhead
	// ahead and cancelled right after it was accepted, inside its schedule: a cancel answered
	// as applied must leave it CANCELLED and never at a relay. A cancel without a clear answer
	// (the outbox unavailable) is tried again while its send time is more than a second away;
	// at Stop the ledger says whether one took.
	CancelEvery int
	// RetryEvery > 0 makes every RetryEvery-th submit of a client go to a recipient Relay
	// refuses with 550 at RCPT TO until the load has retried it: the email ends FAILED, the
	// load sees it FAILED and calls Retry, and it is to end SENT. Mail the load had not retried
	// when it stopped is to end FAILED. It needs Relay.
	RetryEvery int
	// ScheduleAhead is how far ahead scheduled mail is due; 0 means 3s.
	ScheduleAhead time.Duration
	// Relay is the relay the load's mail goes to (the tenant's default connector's), whose
	// answers RetryEvery scripts: the load takes the relay's hook (Relay.Script) over.
	Relay *Relay
}

// mixed reports whether the load does more than submit mail due at once.
func (spec LoadSpec) mixed() bool {
	return spec.ScheduleEvery > 0 || spec.CancelEvery > 0 || spec.RetryEvery > 0
}

// kindOf is how a client submits its i-th email; a cancel goes before a retry before a
// schedule when two fall on one submit.
func (spec LoadSpec) kindOf(i int) mailKind {
	switch {
	case spec.CancelEvery > 0 && i%spec.CancelEvery == spec.CancelEvery-1:
		return kindCancel
	case spec.RetryEvery > 0 && i%spec.RetryEvery == spec.RetryEvery-1:
		return kindRetry
	case spec.ScheduleEvery > 0 && i%spec.ScheduleEvery == spec.ScheduleEvery-1:
		return kindScheduled
	}
	return kindNow
}

// StartLoad starts submitting through the API replica; Stop ends it.
func (s *Suite) StartLoad(spec LoadSpec) *Load {
	if spec.Clients == 0 {
		spec.Clients = 4
	}
	if spec.Interval == 0 {
		spec.Interval = 50 * time.Millisecond
	}
	if spec.Subject == "" {
		spec.Subject = "Load"
	}
	if spec.ScheduleAhead == 0 {
		spec.ScheduleAhead = 3 * time.Second
	}
	if spec.RetryEvery > 0 && spec.Relay == nil {
		panic("harness: LoadSpec.RetryEvery needs LoadSpec.Relay") // a test's setup error
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Load{cancel: cancel, s: s, spec: spec, kind: map[string]mailKind{}, cancelled: map[string]bool{},
		cancelOpen: map[string]bool{}, retried: map[string]bool{}, retryOpen: map[string]bool{}, refusing: map[string]bool{}}
	if spec.RetryEvery > 0 {
		spec.Relay.Sink.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
			if env.Stage != smtptest.StageRcpt || len(env.To) == 0 {
				return smtptest.Accept
			}
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.refusing[env.To[0]] {
				return smtptest.PermFailRcpt
			}
			return smtptest.Accept
		})
		l.wg.Go(func() { l.retryLoop(ctx) })
	}
	client := s.Outbox()
	auth := s.AsUser(spec.Tenant)
	for c := range spec.Clients {
		l.wg.Go(func() {
			tick := time.NewTicker(spec.Interval)
			defer tick.Stop()
			for i := 0; ctx.Err() == nil; i++ {
				kind := spec.kindOf(i)
				to := fmt.Sprintf("client-%d-%d@example.com", c, i)
				switch kind {
				case kindRetry:
					to = fmt.Sprintf("refused-%d-%d@example.com", c, i)
					l.mu.Lock()
					l.refusing[to] = true // before the submit: a dispatcher may meet it at once
					l.mu.Unlock()
				case kindScheduled, kindCancel:
					to = fmt.Sprintf("scheduled-%d-%d@example.com", c, i)
				default:
				}
				req := s.Request(spec.Tenant, to, fmt.Sprintf("%s #%d-%d", spec.Subject, c, i))
				req.RegardingRecordId, req.Priority = spec.RegardingRecordID, spec.Priority
				if kind == kindScheduled || kind == kindCancel {
					req.SendAt = timestamppb.New(time.Now().Add(spec.ScheduleAhead))
				}
				if spec.RetryFor > 0 {
					req.IdempotencyKey = fmt.Sprintf("%s-%d-%d", spec.Subject, c, i)
				}
				r, err := submitRetrying(auth, client, req, spec.RetryFor)
				now := time.Now()
				l.mu.Lock()
				if err != nil {
					if ctx.Err() == nil {
						l.refused = append(l.refused, Refusal{At: now, Err: err})
					}
				} else {
					e := r.GetEmail()
					l.accepted = append(l.accepted, submitted(spec.Tenant, e))
					l.at = append(l.at, now)
					l.kind[e.GetEmailId()] = kind
				}
				l.mu.Unlock()
				if err == nil && kind == kindCancel {
					l.cancelEmail(ctx, auth, r.GetEmail().GetEmailId(), req.GetSendAt().AsTime())
				}
				select {
				case <-ctx.Done():
				case <-tick.C:
				}
			}
		})
	}
	return l
}

// submitRetrying submits req, and while the outbox answers UNAVAILABLE or the call times out
// submits it again with its idempotency key, for up to retryFor. It goes on after the load is
// stopped: a submit given up in the middle might have been stored.
func submitRetrying(auth context.Context, client outboxv1.OutboxServiceClient, req *outboxv1.SubmitEmailRequest, retryFor time.Duration) (*outboxv1.SubmitEmailResponse, error) {
	deadline := time.Now().Add(retryFor)
	for {
		rctx, rcancel := context.WithTimeout(auth, 10*time.Second)
		r, err := client.SubmitEmail(rctx, req)
		rcancel()
		code := status.Code(err)
		if err == nil || retryFor == 0 || (code != codes.Unavailable && code != codes.DeadlineExceeded) || time.Now().After(deadline) {
			return r, err
		}
		time.Sleep(50 * time.Millisecond) // a pause before asking an outbox that just failed again
	}
}

// cancelEmail cancels a scheduled email, as a user who changed her mind does, and records the
// outcome: applied (cancelled), or unclear (cancelOpen, which Stop settles by reading the
// ledger). A call that failed as a whole (the outbox unavailable) is made again while the send
// time is more than a second away; a per-email refusal is final (the email is no longer
// SCHEDULED, so it goes out).
func (l *Load) cancelEmail(ctx, auth context.Context, id string, due time.Time) {
	client := l.s.Outbox()
	for {
		rctx, rcancel := context.WithTimeout(auth, 5*time.Second)
		r, err := client.Cancel(rctx, &outboxv1.CancelRequest{Selection: &outboxv1.Selection{EmailIds: []string{id}}})
		rcancel()
		l.mu.Lock()
		if err == nil {
			if r.GetResult().GetSucceeded() == 1 {
				l.cancelled[id] = true
				delete(l.cancelOpen, id)
			}
			l.mu.Unlock()
			return
		}
		l.cancelOpen[id] = true
		l.mu.Unlock()
		if ctx.Err() != nil || time.Until(due) < time.Second {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond): // a pause before asking an outbox that just failed
		}
	}
}

// retryLoop looks four times a second for the load's refused mail that has ended FAILED and
// retries it, as a person in the outbox page does: the relay is told to accept the recipient
// first, then Retry is called. An email whose retry was not answered as applied is still FAILED
// and found again.
func (l *Load) retryLoop(ctx context.Context) {
	client := l.s.Outbox()
	admin := l.s.Admin(l.spec.Tenant)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		rctx, rcancel := context.WithTimeout(admin, 5*time.Second)
		r, err := client.ListEmails(rctx, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, PageSize: 500,
			Filter: &outboxv1.EmailFilter{Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_FAILED}}})
		rcancel()
		if err != nil {
			continue // the outbox is away: look again
		}
		var ids []string
		l.mu.Lock()
		for _, e := range r.GetEmails() {
			if l.kind[e.GetEmailId()] == kindRetry && !l.retried[e.GetEmailId()] {
				ids = append(ids, e.GetEmailId())
				delete(l.refusing, Recipient(e))
				l.retryOpen[e.GetEmailId()] = true
			}
		}
		l.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		rctx, rcancel = context.WithTimeout(admin, 5*time.Second)
		rr, err := client.Retry(rctx, &outboxv1.RetryRequest{Selection: &outboxv1.Selection{EmailIds: ids}, IncludeMayHaveBeenSent: true})
		rcancel()
		if err != nil {
			continue // unclear: an email still FAILED next time was not retried
		}
		refused := map[string]bool{}
		for _, f := range rr.GetResult().GetFailures() {
			refused[f.GetEmailId()] = true
		}
		l.mu.Lock()
		for _, id := range ids {
			if !refused[id] {
				l.retried[id] = true
				delete(l.retryOpen, id)
			}
		}
		l.mu.Unlock()
	}
}

// Refusals is the number of submits refused so far.
func (l *Load) Refusals() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.refused)
}

// Accepted is the number of emails accepted so far.
func (l *Load) Accepted() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.accepted)
}

// AcceptedBetween counts the emails accepted in [from, to).
func (l *Load) AcceptedBetween(from, to time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, t := range l.at {
		if !t.Before(from) && t.Before(to) {
			n++
		}
	}
	return n
}

// Refused lists the submits refused so far.
func (l *Load) Refused() []Refusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Refusal(nil), l.refused...)
}

// Mixed counts what a mixed load did so far: emails scheduled (the cancelled ones among them),
// cancels answered as applied, emails the relay refuses until retried, and retries applied. A
// test waits on it to be sure its fault met every kind of mail.
func (l *Load) Mixed() (scheduled, cancelled, refused, retried int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range l.kind {
		switch k {
		case kindScheduled, kindCancel:
			scheduled++
		case kindRetry:
			refused++
		default:
		}
	}
	return scheduled, len(l.cancelled), refused, len(l.retried)
}

// Describe says what the load did, for the results table (Suite.Describe): clients and rate
// and, for a mixed load, what it scheduled, cancelled and retried.
func (l *Load) Describe() string {
	d := fmt.Sprintf("%d clients submitting %.0f/s each", l.spec.Clients, float64(time.Second)/float64(l.spec.Interval))
	if l.spec.Priority != outboxv1.Priority_PRIORITY_UNSPECIFIED {
		d += " " + strings.TrimPrefix(l.spec.Priority.String(), "PRIORITY_")
	}
	if !l.spec.mixed() {
		return d
	}
	scheduled, cancelled, refused, retried := l.Mixed()
	return fmt.Sprintf("%s, mixed: %d scheduled %s ahead, %d of them cancelled inside the schedule; %d refused by the relay (550), %d of them retried",
		d, scheduled, l.spec.ScheduleAhead, cancelled, refused, retried)
}

// Stop ends the load, waits for the submits under way and returns every accepted email. A mixed
// load then settles what each email is to end as (Expect), asking the ledger about the emails
// whose cancel had no clear answer.
func (l *Load) Stop() []Submitted {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	settle := l.final == nil && l.spec.mixed()
	open := l.open()
	l.mu.Unlock()
	if settle {
		// Read without l.mu: the relay's hook takes it while the dispatchers send.
		ledger := l.ledgerStatus(open)
		l.mu.Lock()
		l.settleExpectations(ledger)
		l.mu.Unlock()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Submitted(nil), l.accepted...)
}

// ledgerStatus reads the status of each email of ids from the outbox, waiting a bounded time for
// an outbox that is not serving yet after a fault. An email it gets no answer for is left out.
func (l *Load) ledgerStatus(ids map[string]bool) map[string]outboxv1.EmailStatus {
	admin := l.s.Admin(l.spec.Tenant)
	ledger := map[string]outboxv1.EmailStatus{}
	for id := range ids {
		_ = poll(30*time.Second, func() (bool, error) {
			ctx, cancel := context.WithTimeout(admin, 5*time.Second)
			defer cancel()
			r, err := l.s.Outbox().GetEmail(ctx, &outboxv1.GetEmailRequest{EmailId: id})
			if err != nil {
				return false, nil
			}
			ledger[id] = r.GetEmail().GetStatus()
			return true, nil
		})
	}
	return ledger
}

// settleExpectations decides, once the load has stopped, the status each of its emails is to
// end in when not SENT: CANCELLED when a cancel was answered as applied, or had no clear answer
// and the ledger says CANCELLED; FAILED for refused mail the load did not retry (the relay
// refuses it until then, and nobody retries it any more) or whose retry had no clear answer and
// the ledger says FAILED (ledger: the status of those emails after the load stopped; one the
// outbox did not answer for is expected SENT, and Check says what it is). Called with l.mu held.
func (l *Load) settleExpectations(ledger map[string]outboxv1.EmailStatus) {
	l.final = map[string]outboxv1.EmailStatus{}
	for _, m := range l.accepted {
		switch k := l.kind[m.ID]; {
		case k == kindCancel && (l.cancelled[m.ID] || ledger[m.ID] == outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED):
			l.final[m.ID] = outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED
		case k == kindRetry && !l.retried[m.ID] && (!l.retryOpen[m.ID] || ledger[m.ID] == outboxv1.EmailStatus_EMAIL_STATUS_FAILED):
			l.final[m.ID] = outboxv1.EmailStatus_EMAIL_STATUS_FAILED
		}
	}
}

// open lists the emails whose cancel or retry had no clear answer. Called with l.mu held.
func (l *Load) open() map[string]bool {
	out := maps.Clone(l.cancelOpen)
	maps.Copy(out, l.retryOpen)
	return out
}

// Expect returns the status each email of a mixed load is to end in when not SENT, by id:
// CANCELLED for mail it cancelled, FAILED for mail the relay refused and the load did not
// retry. It is nil until Stop; Check consults it when Expect.Load names the load.
func (l *Load) Expect() map[string]outboxv1.EmailStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.final)
}

// MailboxClient is a client of the mailbox process.
func (s *Suite) MailboxClient() mailboxv1.MailboxServiceClient {
	return mailboxv1.NewMailboxServiceClient(s.Mailbox.Conn())
}

// TrackerClient is a client of the tracker process (Options.Tracker).
func (s *Suite) TrackerClient() trackerv1.TrackerServiceClient {
	return trackerv1.NewTrackerServiceClient(s.Tracker.Conn())
}

// SentView returns the Message-IDs in the seeded user's sent view of tenant, read page by page
// from the mailbox; an error reading it is returned (the mailbox may be catching up).
func (s *Suite) SentView(tenant string) (map[string]bool, error) {
	out := map[string]bool{}
	req := &mailboxv1.ListSentItemsRequest{PageSize: 500}
	for range 10_000 { // bounded: 5,000,000 items, more than any fault test sends
		r, err := s.MailboxClient().ListSentItems(s.AsUser(tenant), req)
		if err != nil {
			return nil, fmt.Errorf("list sent items of %s: %w", tenant, err)
		}
		for _, it := range r.GetItems() {
			out[it.GetMessageId()] = true
		}
		if r.GetNextPageToken() == "" {
			return out, nil
		}
		req.PageToken = r.GetNextPageToken()
	}
	return nil, fmt.Errorf("listing the sent view of %s did not end", tenant)
}

// Untracked returns the emails of mail the tracker has not tracked (GetTracking answers
// NOT_FOUND), asked a few at a time; another error is returned.
func (s *Suite) Untracked(mail []Submitted) ([]Submitted, error) {
	var (
		mu        sync.Mutex
		untracked []Submitted
		first     error
	)
	client := s.TrackerClient()
	ctxs := map[string]context.Context{}
	for _, m := range mail {
		if ctxs[m.Tenant] == nil {
			ctxs[m.Tenant] = s.Admin(m.Tenant) //nolint:fatcontext // one context per tenant, none derived from another
		}
	}
	work := make(chan Submitted)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for m := range work {
				_, err := client.GetTracking(ctxs[m.Tenant], &trackerv1.GetTrackingRequest{MessageId: m.MessageID})
				mu.Lock()
				switch {
				case status.Code(err) == codes.NotFound:
					untracked = append(untracked, m)
				case err != nil && first == nil:
					first = fmt.Errorf("get tracking of %s: %w", m.MessageID, err)
				}
				mu.Unlock()
			}
		})
	}
	for _, m := range mail {
		work <- m
	}
	close(work)
	wg.Wait()
	return untracked, first
}

// TrackRecord turns tracking on for tenant in the tracker (Options.Tracker; it is off by
// default), makes the seeded user's mailbox one whose sent mail is tracked (sync kind EXCHANGE)
// and creates a CRM record, so mail regarding the record is tracked. Call it before submitting:
// the tracker caches a mailbox's sync kind.
func (s *Suite) TrackRecord(tb testing.TB, tenant, id, address string) {
	tb.Helper()
	_, err := s.MailboxClient().UpdateMailbox(s.Admin(tenant), &mailboxv1.UpdateMailboxRequest{
		Mailbox:    &mailboxv1.Mailbox{MailboxId: "p-" + User, SyncKind: mailboxv1.SyncKind_SYNC_KIND_EXCHANGE},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"sync_kind"}},
	})
	if err != nil {
		tb.Fatalf("harness: set the sync kind of %s's mailbox in %s: %v", User, tenant, err)
	}
	_, err = s.TrackerClient().UpdateOrgSettings(s.Admin(tenant), &trackerv1.UpdateOrgSettingsRequest{
		Settings:   &trackerv1.OrgSettings{AutoTrackSentFolderItems: true},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"auto_track_sent_folder_items"}},
	})
	if err != nil {
		tb.Fatalf("harness: turn tracking on in %s: %v", tenant, err)
	}
	_, err = s.TrackerClient().UpsertRecord(s.Admin(tenant), &trackerv1.UpsertRecordRequest{Record: &trackerv1.Record{
		RecordId: id, Kind: trackerv1.RecordKind_RECORD_KIND_ACCOUNT, DisplayName: "Muster AG", EmailAddresses: []string{address},
	}})
	if err != nil {
		tb.Fatalf("harness: upsert record %s in %s: %v", id, tenant, err)
	}
}

// Explain returns the tracker's explanation of its decision on a message, for failure messages.
func (s *Suite) Explain(tenant, messageID string) string {
	r, err := s.TrackerClient().ExplainTracking(s.Admin(tenant), &trackerv1.ExplainTrackingRequest{
		Target: &trackerv1.ExplainTrackingRequest_MessageId{MessageId: messageID},
	})
	if err != nil {
		return fmt.Sprintf("no explanation of %s: %v", messageID, err)
	}
	return r.GetExplanation().String()
}
