package calendar

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/ids"
)

// Hello opens an agent's stream.
type Hello struct {
	AgentID   string
	LastAcked int64
	UserID    string
}

// AckMessage acknowledges one delivery.
type AckMessage struct {
	Position      int64
	Outcome       Outcome
	RemoteID      string
	RemoteVersion string
	Message       string
}

// AgentMessage is one message from the agent: exactly one field is set.
type AgentMessage struct {
	Hello     *Hello
	Ack       *AckMessage
	Heartbeat bool
}

// Welcome answers Hello.
type Welcome struct {
	Session       string
	AckedPosition int64
	Heartbeat     time.Duration
}

// ServerMessage is one message to the agent: exactly one field is set.
type ServerMessage struct {
	Welcome   *Welcome
	Delivery  *Delivery
	Heartbeat bool
}

// AgentStream is the Connect stream as the rules see it; grpcapi adapts the gRPC stream.
type AgentStream interface {
	Send(ServerMessage) error
	Recv() (AgentMessage, error)
}

// session is one agent's stream after Hello.
type session struct {
	s      *Service
	tenant string
	user   string
	id     string
	log    bool

	mu   sync.Mutex
	sent map[int64]Delivery // delivered in this stream and not yet acknowledged

	lastHeard atomic.Int64 // unix ms
	sub       *sub
	// acks carries validated acks from the reader to the acker, which records whatever has
	// arrived in one round trip.
	acks chan AckMessage
}

// maxAckBatch bounds the acks recorded in one round trip.
const maxAckBatch = 256

// Connect runs an agent's stream until the agent leaves, another stream of the user replaces it,
// the agent falls silent, or ctx ends. It delivers the user's queued revisions in position
// order, then new ones as they are queued, and records the agent's acks.
func (s *Service) Connect(ctx context.Context, p auth.Principal, st AgentStream) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	first := make(chan AgentMessage, 1)
	errc := make(chan error, 1)
	ready := make(chan *session, 1)
	go func() { // the only reader of st
		m, err := st.Recv()
		if err != nil {
			errc <- err
			return
		}
		first <- m
		var a *session
		select {
		case a = <-ready:
		case <-ctx.Done():
			return
		}
		for {
			m, err := st.Recv()
			if err == nil {
				err = a.received(ctx, m)
			}
			if err != nil {
				errc <- err
				return
			}
		}
	}()

	var hello AgentMessage
	timer := time.NewTimer(s.opts.HelloTimeout)
	defer timer.Stop()
	select {
	case hello = <-first:
	case err := <-errc:
		return recvEnd(err)
	case <-timer.C:
		return fmt.Errorf("no Hello within %s: %w", s.opts.HelloTimeout, context.DeadlineExceeded)
	case <-ctx.Done():
		return ctx.Err()
	}
	a, welcome, err := s.open(ctx, p, hello)
	if err != nil {
		return err
	}
	defer a.close()
	if err := st.Send(ServerMessage{Welcome: welcome}); err != nil {
		return err
	}
	ready <- a
	ackErr, stopAcks, acksDone := make(chan error, 1), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(acksDone)
		if err := a.acker(ctx, stopAcks); err != nil {
			ackErr <- err
		}
	}()
	err = a.run(ctx, st, errc, ackErr)
	close(stopAcks) // the acks received before the end are still recorded
	<-acksDone
	return err
}

func recvEnd(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// open checks Hello, claims the user's agent slot and counts what Hello acknowledges.
func (s *Service) open(ctx context.Context, p auth.Principal, m AgentMessage) (*session, *Welcome, error) {
	h := m.Hello
	if h == nil {
		return nil, nil, errs.Invalid("hello", "the first message must be Hello")
	}
	if p.User == "" {
		return nil, nil, errs.PermissionDenied(ReasonUserRequired, "an agent connects with its user's token")
	}
	if h.UserID != "" && h.UserID != p.User {
		return nil, nil, errs.PermissionDenied(ReasonAgentOtherUser, "the token is for another user than Hello names")
	}
	var v errs.Violations
	if !ids.Valid(h.AgentID) {
		v.Add("hello.agent_id", "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
	}
	if h.LastAcked < 0 {
		v.Add("hello.last_acked_position", "must not be negative")
	}
	if err := v.Err(); err != nil {
		return nil, nil, err
	}
	u, err := s.user(ctx, p.Tenant, p.User)
	if err != nil {
		return nil, nil, err
	}
	d, us, err := s.decide(ctx, p.Tenant, u)
	if err != nil {
		return nil, nil, err
	}
	if d.Target != TargetAgent {
		return nil, nil, notLive(d)
	}
	a := &session{s: s, tenant: p.Tenant, user: p.User, id: newSessionID(), log: us.LogOn(), sent: map[int64]Delivery{}, acks: make(chan AckMessage, maxAckBatch)}
	now := s.now()
	a.lastHeard.Store(now.UnixMilli())
	a.sub = s.hub.subscribe(a.tenant, a.user, a.id)
	prev, err := s.store.ClaimAgent(ctx, a.tenant, a.user, Presence{Session: a.id, AgentID: h.AgentID, Since: now, LastSeen: now})
	if err != nil {
		s.hub.unsubscribe(a.tenant, a.user, a.sub)
		return nil, nil, err
	}
	if prev != "" {
		s.hub.Kick(a.tenant, a.user, prev) // at once on this replica; the others by the store's message
	}
	if a.log {
		detail := "agent " + h.AgentID
		if prev != "" {
			detail += ", replacing session " + prev
		}
		_ = s.store.AppendLog(ctx, a.tenant, a.user, LogLine{Action: "AGENT_CONNECTED", Target: TargetAgent, Detail: detail})
	}
	if h.LastAcked > 0 {
		ds, err := s.store.PendingThrough(ctx, a.tenant, a.user, TargetAgent, h.LastAcked)
		if err != nil {
			a.close()
			return nil, nil, err
		}
		for _, d := range ds {
			if _, err := a.ack(ctx, d, AckMessage{Position: d.Position, Outcome: OutcomeApplied}); err != nil {
				a.close()
				return nil, nil, err
			}
		}
	}
	stats, err := s.store.QueueStats(ctx, a.tenant, a.user)
	if err != nil {
		a.close()
		return nil, nil, err
	}
	return a, &Welcome{Session: a.id, AckedPosition: stats.AckedPosition, Heartbeat: s.opts.Heartbeat}, nil
}

// notLive says why a user's agent may not connect: each reason is its own, so an agent (and
// its user) can tell "synchronised by server push" from "not eligible".
func notLive(d Decision) error {
	switch {
	case d.Target == TargetCalDAV:
		return errs.FailedPrecondition(ReasonServerPush, "the user's entries are pushed to their CalDAV calendar (mode SERVER_PUSH); no live agent is used")
	case d.Applicability == UserOff:
		return errs.FailedPrecondition(ReasonSyncOff, "the user turned synchronisation off (mode OFF)")
	case d.Applicability == TenantDisabled:
		return errs.FailedPrecondition(ReasonTenantDisabled, "the tenant has live sync switched off")
	default:
		return errs.FailedPrecondition(ReasonNotApplicable, "live sync does not apply to this user: the practice username differs from the directory username")
	}
}

func newSessionID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand does not fail
	return hex.EncodeToString(b[:])
}

// close gives the user's agent slot up, if it is still ours.
//
//nolint:contextcheck // runs when the stream's context has ended, so it cannot use it
func (a *session) close() {
	ctx := context.Background()
	a.s.hub.unsubscribe(a.tenant, a.user, a.sub)
	_ = a.s.store.ReleaseAgent(ctx, a.tenant, a.user, a.id, a.s.now())
	if a.log {
		_ = a.s.store.AppendLog(ctx, a.tenant, a.user, LogLine{Action: "AGENT_DISCONNECTED", Target: TargetAgent, Detail: "session " + a.id})
	}
}

// run delivers until the stream ends.
func (a *session) run(ctx context.Context, st AgentStream, errc, ackErr <-chan error) error {
	hb := a.s.opts.Heartbeat
	ticker := time.NewTicker(hb)
	defer ticker.Stop()
	var cursor int64
	replaced := func() error {
		return errs.Aborted(ReasonStreamReplaced, "another stream of the user replaced this one")
	}
	for {
		for {
			select {
			case <-a.sub.kicked:
				return replaced()
			case err := <-errc:
				return recvEnd(err)
			case err := <-ackErr:
				return err
			default:
			}
			ds, err := a.s.store.NextDeliveries(ctx, a.tenant, a.user, TargetAgent, cursor, a.s.opts.DeliveryBatch, a.log, a.s.opts.MaxAgentUnanswered)
			if err != nil {
				return err
			}
			if len(ds) == 0 {
				break
			}
			if ds, err = a.giveUpUnanswered(ctx, ds); err != nil {
				return err
			}
			a.mu.Lock()
			for _, d := range ds {
				a.sent[d.Position] = Delivery{Position: d.Position, EntryID: d.EntryID, Revision: d.Revision, Attempt: d.Attempt}
			}
			a.mu.Unlock()
			for i := range ds {
				if err := st.Send(ServerMessage{Delivery: &ds[i]}); err != nil {
					return err
				}
				cursor = ds[i].Position
			}
		}
		select {
		case <-a.sub.wake:
		case <-a.s.hub.closing:
			return errs.Unavailable("the service is shutting down; reconnect", time.Second, nil)
		case <-a.sub.kicked:
			return replaced()
		case err := <-errc:
			return recvEnd(err)
		case err := <-ackErr:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
			now := a.s.now()
			if now.Sub(time.UnixMilli(a.lastHeard.Load())) > 3*hb {
				return fmt.Errorf("the agent was silent for three heartbeat intervals: %w", context.DeadlineExceeded)
			}
			ok, err := a.s.store.TouchAgent(ctx, a.tenant, a.user, a.id, time.UnixMilli(a.lastHeard.Load()))
			if err != nil {
				return err
			}
			if !ok {
				return replaced()
			}
			if err := st.Send(ServerMessage{Heartbeat: true}); err != nil {
				return err
			}
		}
	}
}

// received handles one message after Hello, on the reader goroutine.
func (a *session) received(ctx context.Context, m AgentMessage) error {
	a.lastHeard.Store(a.s.now().UnixMilli())
	switch {
	case m.Hello != nil:
		return errs.Invalid("hello", "Hello is only the first message")
	case m.Heartbeat:
		return nil
	case m.Ack == nil:
		return errs.Invalid("message", "is empty")
	}
	k := m.Ack
	var v errs.Violations
	if k.Position <= 0 {
		v.Add("ack.position", "must be a delivered position")
	}
	if k.Outcome != OutcomeApplied && k.Outcome != OutcomeConflict && k.Outcome != OutcomeError {
		v.Add("ack.outcome", "must be APPLIED, CONFLICT or ERROR")
	}
	for f, s := range map[string]string{"ack.remote_id": k.RemoteID, "ack.remote_version": k.RemoteVersion, "ack.message": k.Message} {
		if len(s) > maxRemoteLen {
			v.Addf(f, "is longer than %d bytes", maxRemoteLen)
		}
	}
	if err := v.Err(); err != nil {
		return err
	}
	select {
	case a.acks <- *k:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// acker records the agent's acks in order: whatever has arrived, up to maxAckBatch, in one
// round trip. When stop closes it records what has arrived and returns; an error ends the stream.
func (a *session) acker(ctx context.Context, stop <-chan struct{}) error {
	batch := make([]AckMessage, 0, maxAckBatch)
	for {
		batch = batch[:0]
		select {
		case k := <-a.acks:
			batch = append(batch, k)
		case <-stop:
			// The stream has ended (perhaps by its context): what arrived before is recorded
			// all the same, so that a reconnect does not see it again.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			for {
				select {
				case k := <-a.acks:
					batch = append(batch, k)
					if len(batch) < maxAckBatch {
						continue
					}
					if err := a.record(ctx, batch); err != nil {
						return err
					}
					batch = batch[:0]
				default:
					return a.record(ctx, batch)
				}
			}
		}
	more:
		for len(batch) < maxAckBatch {
			select {
			case k := <-a.acks:
				batch = append(batch, k)
			default:
				break more
			}
		}
		if err := a.record(ctx, batch); err != nil {
			return err
		}
	}
}

// record applies a batch of acks: the deliveries of this stream from memory, others (sent by an
// earlier stream) from the store; acks of nothing pending are ignored.
func (a *session) record(ctx context.Context, batch []AckMessage) error {
	in := make([]AckInput, 0, len(batch))
	for _, k := range batch {
		a.mu.Lock()
		d, ok := a.sent[k.Position]
		a.mu.Unlock()
		if !ok {
			var err error
			if d, ok, err = a.s.store.DeliveryAt(ctx, a.tenant, a.user, TargetAgent, k.Position); err != nil {
				return err
			}
			if !ok {
				continue // acknowledged before, or superseded: nothing to do
			}
		}
		in = append(in, a.ackInput(d, k))
	}
	if len(in) == 0 {
		return nil
	}
	res, err := a.s.store.AckMany(ctx, a.tenant, a.user, in)
	a.mu.Lock()
	for i := range res {
		delete(a.sent, in[i].Position)
	}
	a.mu.Unlock()
	if err != nil {
		return err
	}
	requeued := false
	for _, r := range res {
		if r.Replaced {
			return errs.Aborted(ReasonStreamReplaced, "another stream of the user replaced this one")
		}
		requeued = requeued || r.Requeued > 0
	}
	if requeued {
		a.s.hub.Notify(a.tenant, a.user)
	}
	return nil
}

func (a *session) ack(ctx context.Context, d Delivery, k AckMessage) (AckResult, error) {
	return a.s.store.Ack(ctx, a.tenant, a.user, a.ackInput(d, k))
}

func (a *session) ackInput(d Delivery, k AckMessage) AckInput {
	return AckInput{
		Target: TargetAgent, Session: a.id, Position: d.Position, EntryID: d.EntryID, Revision: d.Revision,
		Outcome: k.Outcome, RemoteID: k.RemoteID, RemoteVersion: k.RemoteVersion, Message: k.Message,
		MaxAttempts: a.s.opts.MaxAgentAttempts, Attempts: d.Attempt + 1, Log: a.log, Now: a.s.now(),
	}
}

// giveUpUnanswered ends, as dead, the deliveries that agents were handed
// Options.MaxAgentUnanswered times without answering (each time their stream ended first), and
// returns the others, to be sent.
func (a *session) giveUpUnanswered(ctx context.Context, ds []Delivery) ([]Delivery, error) {
	out := ds[:0]
	for _, d := range ds {
		if unanswered := d.Attempt - d.Errors; unanswered >= a.s.opts.MaxAgentUnanswered {
			in := a.ackInput(d, AckMessage{Position: d.Position, Outcome: OutcomeError,
				Message: fmt.Sprintf("handed to the agent %d times without an answer", unanswered)})
			in.Dead = true
			r, err := a.s.store.Ack(ctx, a.tenant, a.user, in)
			if err != nil {
				return nil, fmt.Errorf("give up %s@%d: %w", d.EntryID, d.Position, err)
			}
			if r.Replaced {
				return nil, errs.Aborted(ReasonStreamReplaced, "another stream of the user replaced this one")
			}
			continue
		}
		out = append(out, d)
	}
	return out, nil
}
