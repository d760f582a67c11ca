package harness

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
)

// Load is a steady stream of submits, as users keep sending while something fails: Clients
// goroutines each submit one email per Interval until Stop. A refused submit is counted, not
// fatal: whether the outbox keeps accepting during a fault is what a test asks.
type Load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	accepted []Submitted
	at       []time.Time // at[i]: when accepted[i] was accepted
	refused  []Refusal
}

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
	ctx, cancel := context.WithCancel(context.Background())
	l := &Load{cancel: cancel}
	client := s.Outbox()
	auth := s.AsUser(spec.Tenant)
	for c := range spec.Clients {
		l.wg.Go(func() {
			tick := time.NewTicker(spec.Interval)
			defer tick.Stop()
			for i := 0; ctx.Err() == nil; i++ {
				rctx, rcancel := context.WithTimeout(auth, 10*time.Second)
				r, err := client.SubmitEmail(rctx, &outboxv1.SubmitEmailRequest{
					FromAddress: Sender(spec.Tenant), To: []string{fmt.Sprintf("client-%d-%d@example.com", c, i)},
					Subject: fmt.Sprintf("%s #%d-%d", spec.Subject, c, i), TextBody: "Guten Tag,\n\nanbei die Unterlagen.\n",
					RegardingRecordId: spec.RegardingRecordID,
				})
				rcancel()
				now := time.Now()
				l.mu.Lock()
				if err != nil {
					if ctx.Err() == nil {
						l.refused = append(l.refused, Refusal{At: now, Err: err})
					}
				} else {
					e := r.GetEmail()
					l.accepted = append(l.accepted, Submitted{ID: e.GetEmailId(), MessageID: e.GetMessageId(), Tenant: spec.Tenant, Priority: e.GetPriority()})
					l.at = append(l.at, now)
				}
				l.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-tick.C:
				}
			}
		})
	}
	return l
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

// Stop ends the load, waits for the submits under way and returns every accepted email.
func (l *Load) Stop() []Submitted {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Submitted(nil), l.accepted...)
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

// UnpublishedEvents counts the entries left in the services' Redis event streams (every key
// ending in :events): a relay deletes an entry once JetStream acknowledged it, so a count that
// stays above zero is a relay that stopped publishing.
func (s *Suite) UnpublishedEvents(tb testing.TB) (map[string]int64, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb := s.Redis.Client(tb)
	out := map[string]int64{}
	iter := rdb.ScanType(ctx, 0, "*:events", 1000, "stream").Iterator()
	for iter.Next(ctx) {
		n, err := rdb.XLen(ctx, iter.Val()).Result()
		if err != nil {
			return nil, fmt.Errorf("XLEN %s: %w", iter.Val(), err)
		}
		if n > 0 {
			out[iter.Val()] = n
		}
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("scan event streams: %w", err)
	}
	return out, nil
}
