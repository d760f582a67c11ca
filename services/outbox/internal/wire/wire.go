// Package wire turns the outbox's records into the messages of postamt.outbox.v1 — the API's
// Email and the events — in one place, so the API, the dispatcher and the events agree on what
// an email looks like.
package wire

import (
	"cmp"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// Event subjects on the outbox's stream; consumers filter on them.
const (
	SubjectSubmitted     = "postamt.outbox.v1.EmailSubmitted"
	SubjectStatusChanged = "postamt.outbox.v1.EmailStatusChanged"
	SubjectSent          = "postamt.outbox.v1.EmailSent"
	SubjectFailed        = "postamt.outbox.v1.EmailFailed"
	SubjectCancelled     = "postamt.outbox.v1.EmailCancelled"
)

// SubjectClaimed carries the ids of mail a dispatcher has just claimed (now SENDING), on core
// NATS, outside the stream: nothing is stored and nobody but a live watcher needs it, so a claim
// costs one small unacknowledged publish (one per claimed batch, dropped at once by the server
// when nobody watches) instead of a stored event per email. WatchEmails reads the records.
const SubjectClaimed = "postamt.outbox.live.v1.claimed"

// EncodeClaimed is SubjectClaimed's payload: the tenant, then each id, one per line (neither
// can hold a line break).
func EncodeClaimed(tenant string, ids []string) []byte {
	n := len(tenant)
	for _, id := range ids {
		n += 1 + len(id)
	}
	b := make([]byte, 0, n)
	b = append(b, tenant...)
	for _, id := range ids {
		b = append(b, '\n')
		b = append(b, id...)
	}
	return b
}

// DecodeClaimed reads EncodeClaimed's payload.
func DecodeClaimed(b []byte) (tenant string, ids []string) {
	parts := strings.Split(string(b), "\n")
	return parts[0], parts[1:]
}

// StreamName is the outbox's JetStream stream, and StreamSubjects what it holds.
const StreamName = "POSTAMT_OUTBOX"

// StreamSubjects are the subjects of StreamName.
var StreamSubjects = []string{"postamt.outbox.v1.>"}

// Timestamp converts a time, leaving the zero time unset.
func Timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// Time converts a timestamp, unset to the zero time.
func Time(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

// Email returns the API's view of a record: its immutable part decoded from Meta with the
// record's current state laid over it. Bodies and attempts are added by the caller that wants
// them.
func Email(r *redisstore.Email) (*outboxv1.Email, error) {
	m := &outboxv1.Email{}
	if err := proto.Unmarshal(r.Meta, m); err != nil {
		return nil, fmt.Errorf("decode email %s: %w", r.ID, err)
	}
	m.EmailId = r.ID
	m.Status = outboxv1.EmailStatus(r.Status)
	m.Priority = outboxv1.Priority(r.Priority)
	m.ConnectorId = r.Connector
	m.Imported = r.Imported
	m.AttemptCount = int32(r.Attempts)
	m.MaxAttempts = int32(r.MaxAttempts)
	m.LastError = r.LastError
	m.LastAttemptTime = Timestamp(r.LastAttempt)
	m.FirstFailureTime = Timestamp(r.FirstFailure)
	m.SentTime = Timestamp(r.SentTime)
	m.CancelTime = Timestamp(r.CancelTime)
	m.Version = r.Version
	if r.Status != outbox.StatusSending {
		m.NextAttemptTime = Timestamp(r.Due)
	}
	if !r.SendAt.IsZero() {
		m.SendAt, m.ScheduledByUserId = Timestamp(r.SendAt), r.ScheduledBy
	}
	m.MayHaveBeenSent = r.MayHaveBeenSent
	// A manual attempt waiting to run is shown as the person's, like the one that ran.
	if by := cmp.Or(r.Trigger, r.LastBy); by != "" {
		m.LastAttemptManual, m.LastAttemptByUserId = true, by
	}
	m.AttemptsSinceRetry = int32(max(r.Attempts-r.RetryBase, 0))
	m.ManualRetryCount = int32(r.ManualRetries)
	return m, nil
}

// Events builds the event of each transition from the email's state after it.
type Events struct{}

// Submitted announces a new email.
func (Events) Submitted(r *redisstore.Email) redisstore.Event {
	return redisstore.Event{Subject: SubjectSubmitted, Msg: &outboxv1.EmailSubmitted{TenantId: r.Tenant, Email: mustEmail(r)}}
}

// Changed announces a transition from prev to r's status: EmailSent, EmailFailed or
// EmailCancelled where one applies, EmailStatusChanged otherwise. prev 0 (unknown) leaves
// EmailStatusChanged's and EmailCancelled's previous status unset.
func (Events) Changed(prev outbox.Status, r *redisstore.Email, last *outboxv1.Attempt) redisstore.Event {
	e := mustEmail(r)
	switch r.Status {
	case outbox.StatusSent:
		return redisstore.Event{Subject: SubjectSent, Msg: Sent(r, e, last)}
	case outbox.StatusFailed:
		return redisstore.Event{Subject: SubjectFailed, Msg: &outboxv1.EmailFailed{TenantId: r.Tenant, Email: e, LastAttempt: last}}
	case outbox.StatusCancelled:
		return redisstore.Event{Subject: SubjectCancelled, Msg: &outboxv1.EmailCancelled{TenantId: r.Tenant, Email: e, PreviousStatus: outboxv1.EmailStatus(prev)}}
	}
	return redisstore.Event{Subject: SubjectStatusChanged, Msg: &outboxv1.EmailStatusChanged{TenantId: r.Tenant, PreviousStatus: outboxv1.EmailStatus(prev), Email: e}}
}

// Current is the event of an email's current state, for a re-drive into a re-created stream
// (redisstore.Ledger.Redrive): EmailSubmitted for an email never changed since its submit, else
// the event of the transition into its status. What only the transition knew is unset:
// EmailStatusChanged's and EmailCancelled's previous status, EmailCancelled's canceller, and the
// last attempt's details beyond its number (EmailSent's attempt is the record's attempt count).
func (ev Events) Current(r *redisstore.Email) redisstore.Event {
	if r.Version <= 1 {
		return ev.Submitted(r)
	}
	return ev.Changed(0, r, nil) // 0: EMAIL_STATUS_UNSPECIFIED, the previous status unknown
}

// Cancelled announces a cancellation by a person of mail that was in status prev.
func (Events) Cancelled(prev outbox.Status, r *redisstore.Email, by string) redisstore.Event {
	return redisstore.Event{Subject: SubjectCancelled, Msg: &outboxv1.EmailCancelled{
		TenantId: r.Tenant, Email: mustEmail(r), CancelledByUserId: by, PreviousStatus: outboxv1.EmailStatus(prev),
	}}
}

// mustEmail decodes what this service encoded itself; a record it cannot decode still gets an
// event with what the record holds, so no transition is blocked by a damaged Meta.
func mustEmail(r *redisstore.Email) *outboxv1.Email {
	e, err := Email(r)
	if err != nil {
		return &outboxv1.Email{EmailId: r.ID, Status: outboxv1.EmailStatus(r.Status), Version: r.Version}
	}
	return e
}

// Sent is the EmailSent contract that mailbox's sent view and the tracker consume.
func Sent(r *redisstore.Email, e *outboxv1.Email, last *outboxv1.Attempt) *outboxv1.EmailSent {
	x := &outboxv1.EmailSent{}
	_ = proto.Unmarshal(r.Extra, x) // threading headers; absent in damaged records only
	x.TenantId = r.Tenant
	x.EmailId = r.ID
	x.Version = r.Version
	x.MessageId = e.GetMessageId()
	x.SenderUserId = e.GetSenderUserId()
	x.MailboxId = e.GetMailboxId()
	x.FromAddress = e.GetFromAddress()
	x.Mode = e.GetSendMode()
	x.To, x.Cc, x.Bcc = e.GetTo(), e.GetCc(), e.GetBcc()
	x.Subject = e.GetSubject()
	x.RegardingRecordId = e.GetRegardingRecordId()
	x.WorkItemId = e.GetWorkItem().GetId()
	if t := e.GetWorkItem().GetType(); t != outboxv1.WorkItemType_WORK_ITEM_TYPE_UNSPECIFIED {
		x.WorkItemType = t.String()
	}
	x.SystemGenerated = e.GetSystemGenerated()
	x.ConnectorId = r.Connector
	x.Attempt = int32(r.Attempts)
	x.SizeBytes = e.GetSizeBytes()
	x.SentTime = Timestamp(r.SentTime)
	_, _, x.TeamIds = redisstore.BucketFacts(r.Buckets)
	if last != nil && last.GetNumber() > 0 {
		x.Attempt = last.GetNumber()
	}
	return x
}

// Attempts decodes an attempt history.
func Attempts(raw [][]byte) []*outboxv1.Attempt {
	out := make([]*outboxv1.Attempt, 0, len(raw))
	for _, b := range raw {
		a := &outboxv1.Attempt{}
		if proto.Unmarshal(b, a) == nil {
			out = append(out, a)
		}
	}
	return out
}
