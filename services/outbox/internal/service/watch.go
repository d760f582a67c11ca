package service

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/eventbus"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
	"github.com/postamt/postamt/services/outbox/internal/wire"
)

// Watcher streams the changes of a view as they are published: from the outbox's JetStream
// stream, so every replica's changes reach every watcher, with the same events other services
// consume, and from the dispatchers' claim announcements (wire.SubjectClaimed), which carry no
// stored event, for SENDING. Each watch is an ordered ephemeral consumer that starts at new
// messages, and a subscription.
type Watcher struct {
	js  jetstream.JetStream
	svc *Service
}

// NewWatcher returns a Watcher over js.
func NewWatcher(js jetstream.JetStream, svc *Service) *Watcher { return &Watcher{js: js, svc: svc} }

var watchSubjects = []string{wire.SubjectSubmitted, wire.SubjectStatusChanged, wire.SubjectSent, wire.SubjectFailed, wire.SubjectCancelled}

// claimGrace bounds how long a watch holds an email read at its claim while the event of the
// version before it is still on its way through the relay (see Watch).
const claimGrace = 500 * time.Millisecond

// maxWatchVersions bounds the versions a watch remembers to drop stale changes; past it the
// memory starts again (a stale change may then pass once, which a client handles by version).
const maxWatchVersions = 10_000

// Watch calls send with every email of the caller's view that changes and matches the filter,
// until ctx ends or send fails, each as the caller may see it (Present), and with left set for a
// change that may have taken an email out of the filter (see prior): a list of the
// filter drops it, so no client copies the filter's rule. A filter without statuses means the
// open ones, as in List: SENT and CANCELLED mail leaves it. Every state is sent, SENDING
// included; versions only increase per email (a change that arrives after a newer one is
// dropped). ready, when set, is called once the watch is in place, before any change: from then
// on no change is missed, so a client may (re)load its list then.
func (w *Watcher) Watch(ctx context.Context, p auth.Principal, view outboxv1.View, f *outboxv1.EmailFilter, ready func() error, send func(e *outboxv1.Email, left bool) error) error {
	q, err := w.svc.resolve(ctx, p, view, f)
	if err != nil {
		return err
	}
	statuses := q.idx.Statuses
	if len(statuses) == 0 {
		statuses = redisstore.OpenStatuses
	}
	// statusMayHaveMatched: one of the statuses the email may have had before the change is in
	// the filter.
	statusMayHaveMatched := func(pr prior) bool {
		return pr.statuses == nil || slices.ContainsFunc(pr.statuses, func(s outbox.Status) bool { return slices.Contains(statuses, s) })
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	claimed := make(chan *nats.Msg, 256)
	sub, err := w.js.Conn().ChanSubscribe(wire.SubjectClaimed, claimed)
	if err != nil {
		return fmt.Errorf("watch claims: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	cons, err := w.js.OrderedConsumer(ctx, wire.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: watchSubjects, DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fmt.Errorf("watch outbox stream: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("watch outbox stream: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	if ready != nil {
		if err := ready(); err != nil {
			return err
		}
	}
	events := make(chan jetstream.Msg)
	failed := make(chan error, 1)
	go func() {
		for {
			m, err := it.Next()
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					failed <- fmt.Errorf("watch outbox stream: %w", err)
				}
				return
			}
			select {
			case events <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	// judged is, per email, the newest version this watch has judged and whether it matched the
	// filter: a change of the version after it knows exactly whether the email was in the list.
	type verdict struct {
		version int64
		matched bool
	}
	judged := make(map[string]verdict)
	// emit sends e (of record rec) if it is in the caller's view and matches the filter, or, as
	// left, if it does not and did before the change: as judged of the version before, else as
	// far as the change tells (pr).
	emit := func(e *outboxv1.Email, rec *redisstore.Email, pr prior) error {
		if !slices.ContainsFunc(rec.Buckets, func(b string) bool { return slices.Contains(q.idx.Buckets, b) }) {
			return nil
		}
		id, v := e.GetEmailId(), e.GetVersion()
		before, ok := judged[id]
		if ok && before.version >= v {
			return nil // a newer state was judged already (a claim read after its result)
		}
		w.svc.redact(p, e)
		fieldsMatch := q.match(e)
		matched := fieldsMatch && slices.Contains(statuses, outbox.Status(e.GetStatus()))
		wasIn := before.matched
		if !ok || before.version != v-1 {
			wasIn = statusMayHaveMatched(pr) && (fieldsMatch || !pr.sameFields)
		}
		if len(judged) >= maxWatchVersions {
			clear(judged)
		}
		judged[id] = verdict{version: v, matched: matched}
		if !matched && !wasIn {
			return nil // not in the filter before the change either
		}
		return send(e, !matched)
	}
	// A claim's announcement arrives at once, the events through the outbox's relay: an email
	// read at a claim may be a version ahead of an event still on its way (a retry's
	// PENDING_RETRY). Such a read is held until that event has been shown, at most claimGrace,
	// so the watch shows every state in order when the relay keeps up, and the newest one when
	// it does not.
	type heldEmail struct {
		e     *outboxv1.Email
		rec   *redisstore.Email
		until time.Time
	}
	// A claim takes mail that was due, or SENDING under a lease that lapsed.
	claimedFrom := prior{statuses: []outbox.Status{outbox.StatusScheduled, outbox.StatusQueued, outbox.StatusPendingRetry, outbox.StatusSending}, sameFields: true}
	known := make(map[string]int64) // the newest version each email's events have shown
	held := make(map[string]heldEmail)
	flush := time.NewTimer(claimGrace)
	flush.Stop()
	defer flush.Stop()
	armed := false
	arm := func() {
		if armed || len(held) == 0 {
			return
		}
		next := time.Time{}
		for _, h := range held {
			if next.IsZero() || h.until.Before(next) {
				next = h.until
			}
		}
		flush.Reset(max(time.Until(next), 0))
		armed = true
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return err
		case <-flush.C:
			armed = false
			now := time.Now()
			for id, h := range held {
				if !h.until.After(now) {
					delete(held, id)
					if err := emit(h.e, h.rec, claimedFrom); err != nil {
						return err
					}
				}
			}
			arm()
		case m := <-events:
			if m.Headers().Get(eventbus.HeaderTenant) != p.Tenant {
				continue
			}
			e, pr := emailOf(m.Subject(), m.Data())
			if e == nil {
				continue
			}
			id, v := e.GetEmailId(), e.GetVersion()
			if len(known) >= maxWatchVersions {
				clear(known)
			}
			known[id] = max(known[id], v)
			rec, err := w.svc.ledger.Get(ctx, id)
			if err != nil {
				continue // gone after its retention: nothing to show
			}
			// The record at the event's version is the email exactly as List and GetEmail show
			// it. EmailSent, made for the sent view and the tracker, lacks what a list row shows
			// (last attempt, first failure, priority, work item, attempts allowed, ...): a live
			// row must read like a reloaded one.
			if rec.Version == v {
				if full, err := wire.Email(rec); err == nil {
					e = full
				}
			}
			if err := emit(e, rec, pr); err != nil {
				return err
			}
			if h, ok := held[id]; ok && h.e.GetVersion() <= v+1 {
				delete(held, id)
				if err := emit(h.e, h.rec, claimedFrom); err != nil { // dropped by emit if v was newer
					return err
				}
			}
		case m := <-claimed:
			tenant, ids := wire.DecodeClaimed(m.Data)
			if tenant != p.Tenant || !statusMayHaveMatched(claimedFrom) {
				continue
			}
			recs, err := w.svc.ledger.GetMany(ctx, ids)
			if err != nil {
				continue // the next event shows the email's state
			}
			for _, rec := range recs {
				e, err := wire.Email(rec)
				if err != nil || rec.Tenant != p.Tenant {
					continue
				}
				if known[rec.ID] < e.GetVersion()-1 {
					held[rec.ID] = heldEmail{e: e, rec: rec, until: time.Now().Add(claimGrace)}
					continue
				}
				if err := emit(e, rec, claimedFrom); err != nil {
					return err
				}
			}
			arm()
		}
	}
}

// prior is what a change tells of the email's state before it, for a watch to tell whether the
// change may have taken the email out of its filter.
type prior struct {
	// statuses the email may have had; nil: unknown, any.
	statuses []outbox.Status
	// sameFields: the change left the fields a filter names besides the status alone
	// (connector, may_have_been_sent; the others never change). Only a person's action (a move
	// to another connector, a retry) changes them, with an EmailStatusChanged.
	sameFields bool
}

// emailOf decodes the email an outbox event carries, or nil, and what the event tells of the
// email before the change.
func emailOf(subject string, data []byte) (*outboxv1.Email, prior) {
	var msg interface {
		proto.Message
		GetEmail() *outboxv1.Email
	}
	// Only an attempt sends or fails mail, and attempts are made of SENDING mail (dispatch).
	afterAttempt := prior{statuses: []outbox.Status{outbox.StatusSending}, sameFields: true}
	var pr prior
	switch subject {
	case wire.SubjectSubmitted:
		msg, pr = &outboxv1.EmailSubmitted{}, prior{statuses: []outbox.Status{}, sameFields: true} // new: in no list
	case wire.SubjectStatusChanged:
		var c outboxv1.EmailStatusChanged
		if proto.Unmarshal(data, &c) != nil {
			return nil, prior{}
		}
		return c.GetEmail(), prior{statuses: known(c.GetPreviousStatus())}
	case wire.SubjectFailed:
		msg, pr = &outboxv1.EmailFailed{}, afterAttempt
	case wire.SubjectCancelled:
		var c outboxv1.EmailCancelled
		if proto.Unmarshal(data, &c) != nil {
			return nil, prior{}
		}
		return c.GetEmail(), prior{statuses: known(c.GetPreviousStatus()), sameFields: true}
	case wire.SubjectSent:
		var s outboxv1.EmailSent
		if proto.Unmarshal(data, &s) != nil {
			return nil, prior{}
		}
		return &outboxv1.Email{
			EmailId: s.GetEmailId(), Status: outboxv1.EmailStatus_EMAIL_STATUS_SENT, MessageId: s.GetMessageId(),
			SenderUserId: s.GetSenderUserId(), MailboxId: s.GetMailboxId(), FromAddress: s.GetFromAddress(),
			SendMode: s.GetMode(), To: s.GetTo(), Cc: s.GetCc(), Bcc: s.GetBcc(), Subject: s.GetSubject(),
			ConnectorId: s.GetConnectorId(), SystemGenerated: s.GetSystemGenerated(), AttemptCount: s.GetAttempt(),
			SentTime: s.GetSentTime(), SizeBytes: s.GetSizeBytes(), Version: s.GetVersion(),
		}, afterAttempt
	default:
		return nil, prior{}
	}
	if proto.Unmarshal(data, msg) != nil {
		return nil, prior{}
	}
	return msg.GetEmail(), pr
}

// known is the one status an event names as the one before, or nil (unknown) for
// EMAIL_STATUS_UNSPECIFIED, which an event re-driven into a re-created stream carries.
func known(s outboxv1.EmailStatus) []outbox.Status {
	if s == outboxv1.EmailStatus_EMAIL_STATUS_UNSPECIFIED {
		return nil
	}
	return []outbox.Status{outbox.Status(s)}
}
