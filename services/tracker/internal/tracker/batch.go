package tracker

import (
	"context"
	"fmt"
	"time"
)

// Sent is one message of a batch for IngestBatch.
type Sent struct {
	// Ctx carries the message's trace (the EmailTracked event continues it); nil means the
	// batch's ctx.
	Ctx context.Context
	// Tenant is the tenant the message was sent in.
	Tenant string
	// Message is the message, checked (tracker.Check).
	Message *Message
}

// IngestBatch is Ingest for many messages, with the outcome of ingesting them one after another
// in their order, in two round trips: GatherBatch reads the evidence of every message in one
// pipelined round trip, DecideBatch decides them in order, WriteBatch writes all decisions, in
// order, in one more. What an earlier message of the batch writes and a later one reads is
// carried over in memory (Pending): a reply in the same batch as the mail it answers correlates
// with it, a thread or smart key index answers with the latest tracked email including the
// batch's own, and a Message-ID twice in a batch is tracked once.
//
// It returns each message's error; nil means its decision is written (or it was tracked
// before). A message whose mailbox cannot be asked fails alone; when the store fails, every
// message fails, so all are retried. Nothing is returned about the decisions: the consumer of
// the outbox's events does not need them.
func (s *Service) IngestBatch(ctx context.Context, batch []Sent) []error {
	g := s.GatherBatch(ctx, batch, 0)
	d := s.DecideBatch(ctx, g, NewPending(), 1)
	errList, _ := s.WriteBatch(ctx, d)
	return errList
}

// Gathering is a batch with its evidence, read by GatherBatch.
type Gathering struct {
	batch   []Sent
	qs      []TenantQuery
	gs      []Gathered
	err     error
	now     time.Time
	visible uint64
}

// GatherBatch prepares a batch and reads the evidence of all its messages in one round trip.
// visible is the sequence number of the last batch whose writes completed before this call
// (0: none): the Pending entries of that batch and earlier ones are in the store now, later
// ones are carried over by DecideBatch.
func (s *Service) GatherBatch(ctx context.Context, batch []Sent, visible uint64) *Gathering {
	g := &Gathering{batch: batch, now: s.now(), visible: visible, qs: make([]TenantQuery, len(batch))}
	for i, b := range batch {
		g.qs[i] = TenantQuery{Tenant: b.Tenant, Query: prepare(b.Message, g.now), PresenceOnly: true}
	}
	gs, err := s.store.GatherMany(ctx, g.qs)
	if err != nil {
		g.err = fmt.Errorf("gather evidence for %d messages: %w", len(batch), err)
	}
	g.gs = gs
	return g
}

// Decided is a batch with its decisions, ready for WriteBatch.
type Decided struct {
	batch  []Sent
	errs   []error
	writes []Write
	at     []int
}

// DecideBatch decides a gathered batch in order. p carries what earlier batches tracked whose
// writes may not have been visible to this batch's gather, and takes this batch's tracked
// emails under seq, a number that grows with every batch; DecideBatch must be called in batch
// order. The sync kinds are asked (from the cache) here; a failure fails its message alone.
func (s *Service) DecideBatch(ctx context.Context, g *Gathering, p *Pending, seq uint64) *Decided {
	d := &Decided{batch: g.batch, errs: make([]error, len(g.batch))}
	if g.err != nil {
		for i := range d.errs {
			d.errs[i] = g.err
		}
		return d
	}
	p.prune(g.visible)
	d.writes = make([]Write, 0, len(g.batch))
	d.at = make([]int, 0, len(g.batch))
	var err error
	for i, b := range g.batch {
		m, ev := b.Message, &g.gs[i].Evidence
		if g.gs[i].AlreadyTracked || p.tracked(b.Tenant, m.MessageID) {
			continue
		}
		p.apply(b.Tenant, &g.qs[i].Query, ev)
		if ev.Org.AutoTrackSentFolderItems {
			mctx := b.Ctx //nolint:contextcheck // each message of the batch is looked up under its own caller's context
			if mctx == nil {
				mctx = ctx
			}
			if ev.SyncKind, err = s.mailboxes.SyncKind(mctx, b.Tenant, m.MailboxID); err != nil {
				d.errs[i] = fmt.Errorf("sync kind of mailbox %s: %w", m.MailboxID, err)
				continue
			}
		}
		dec := Decide(m, ev, g.now)
		w := Write{Ctx: b.Ctx, Tenant: b.Tenant}
		if dec.Track {
			w.Email, w.SmartKey = trackedEmail(m, &dec, g.now), g.qs[i].SmartKey
			p.track(b.Tenant, w.Email, w.SmartKey, ev, seq)
		} else {
			w.Explanation, w.TTL = &dec.Explanation, s.retention
		}
		d.writes = append(d.writes, w)
		d.at = append(d.at, i)
	}
	return d
}

// WriteBatch writes a decided batch's decisions in one round trip and returns each message's
// error. writeFailed reports that a decision could not be written (the store failed, or one
// write did): the Pending entries of this batch are then wrong, and the batches decided after
// it must be decided again (the caller drops them and resets its Pending).
func (s *Service) WriteBatch(ctx context.Context, d *Decided) (errList []error, writeFailed bool) {
	if len(d.writes) == 0 {
		return d.errs, false
	}
	res, err := s.store.WriteMany(ctx, d.writes)
	if err != nil {
		err = fmt.Errorf("write %d decisions: %w", len(d.writes), err)
		for i := range d.errs {
			if d.errs[i] == nil {
				d.errs[i] = err
			}
		}
		return d.errs, true
	}
	for j, r := range res {
		if r.Err != nil {
			d.errs[d.at[j]] = fmt.Errorf("write the decision for <%s>: %w", d.batch[d.at[j]].Message.MessageID, r.Err)
			writeFailed = true
		}
	}
	return d.errs, writeFailed
}

// Pending is what the tracked emails of decided batches write, for the messages decided after
// them whose evidence was read before those writes were made: the emails by Message-ID, and the
// thread and smart key indexes, which keep the latest sent (as the store's Track does: a later
// write with the same or a newer sent millisecond wins). Each entry carries the sequence number
// of the batch that wrote it last, and is dropped once a gather saw that batch's writes.
type Pending struct {
	emails, threads, smarts map[pendingKey]pendingEntry
}

type pendingEntry struct {
	c   Candidate
	seq uint64
}

// NewPending returns an empty Pending.
func NewPending() *Pending {
	return &Pending{emails: map[pendingKey]pendingEntry{}, threads: map[pendingKey]pendingEntry{}, smarts: map[pendingKey]pendingEntry{}}
}

// Reset drops every entry (after a failed write: the batches after it are decided again).
func (p *Pending) Reset() {
	clear(p.emails)
	clear(p.threads)
	clear(p.smarts)
}

func (p *Pending) prune(visible uint64) {
	for _, m := range [...]map[pendingKey]pendingEntry{p.emails, p.threads, p.smarts} {
		for k, e := range m {
			if e.seq <= visible {
				delete(m, k)
			}
		}
	}
}

// pendingKey is a Message-ID, thread or smart key of a tenant (a struct: no string built per
// lookup).
type pendingKey struct{ tenant, id string }

// tracked reports whether a pending write tracks the Message-ID.
func (p *Pending) tracked(tenant, messageID string) bool {
	_, ok := p.emails[pendingKey{tenant, messageID}]
	return ok
}

// apply adds to ev what the pending writes change of what q reads.
func (p *Pending) apply(tenant string, q *Query, ev *Evidence) {
	if len(p.emails) == 0 {
		return
	}
	if q.InReplyTo != "" && ev.InReplyTo == nil {
		if e, ok := p.emails[pendingKey{tenant, q.InReplyTo}]; ok {
			c := e.c
			ev.InReplyTo = &c
		}
	}
	for _, r := range q.References {
		if e, ok := p.emails[pendingKey{tenant, r}]; ok {
			if _, found := ev.References[r]; !found {
				if ev.References == nil {
					ev.References = map[string]Candidate{}
				}
				ev.References[r] = e.c
			}
		}
	}
	if q.ThreadID != "" {
		if e, ok := p.threads[pendingKey{tenant, q.ThreadID}]; ok {
			c := e.c
			ev.Thread = &c
		}
	}
	if q.SmartKey != "" {
		if e, ok := p.smarts[pendingKey{tenant, q.SmartKey}]; ok {
			c := e.c
			ev.Smart = &c
		}
	}
}

// track records a tracked email of batch seq; ev is its evidence after apply (the thread and
// smart key indexes as they are before it is written).
func (p *Pending) track(tenant string, e *TrackedEmail, smartKey string, ev *Evidence, seq uint64) {
	c := Candidate{MessageID: e.MessageID, Regarding: e.Regarding, SentAt: e.SentAt}
	p.emails[pendingKey{tenant, e.MessageID}] = pendingEntry{c, seq}
	latest := func(cur *Candidate) pendingEntry {
		if cur == nil || sentMillis(cur.SentAt) <= sentMillis(c.SentAt) {
			return pendingEntry{c, seq}
		}
		return pendingEntry{*cur, seq}
	}
	if e.ThreadID != "" {
		p.threads[pendingKey{tenant, e.ThreadID}] = latest(ev.Thread)
	}
	if smartKey != "" {
		p.smarts[pendingKey{tenant, smartKey}] = latest(ev.Smart)
	}
}

// sentMillis is the sent time as the store's indexes compare it.
func sentMillis(t time.Time) int64 { return max(t.UnixMilli(), 0) }
