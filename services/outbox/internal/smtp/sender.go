// Package smtp delivers built messages to a connector's relay and classifies every
// way an attempt can end into the outbox's outcomes: 2xx sent, 4xx or a network failure before
// the final "." temporary, 5xx permanent, and a connection lost between the final "." and the
// reply unknown (RFC 1047: the relay may have the message). Connections are pooled and reused,
// and a relay that offers PIPELINING gets a transaction's commands in one write (client.go).
package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
)

// TLSMode is how the connection to the relay is secured; a connector chooses it because relays
// differ (port 465 speaks TLS at once, 587 upgrades, a relay on a trusted network may do neither).
type TLSMode int

// The TLS modes; the values match postamt.outbox.v1.TlsMode, and zero is "not set".
const (
	// TLSNone is plain text, for a relay on a trusted network (and the development catcher).
	TLSNone TLSMode = iota + 1
	// TLSStartTLS upgrades a plain connection, and fails if the relay does not offer STARTTLS.
	TLSStartTLS
	// TLSImplicit speaks TLS from the first byte (port 465).
	TLSImplicit
)

// AuthMechanism is how the outbox authenticates to the relay, since most relays accept mail for
// the world only from authenticated clients.
type AuthMechanism int

// The mechanisms; the values match postamt.outbox.v1.AuthMechanism, and zero means none.
const (
	// AuthNone sends no AUTH: the relay trusts the network.
	AuthNone AuthMechanism = iota + 1
	// AuthPlain is SASL PLAIN (RFC 4616), which every relay that authenticates offers.
	AuthPlain
	// AuthLogin is the obsolete LOGIN mechanism, for relays (older Exchange) without PLAIN.
	AuthLogin
)

// Config describes one connector's relay; zero values of the optional fields are the documented
// defaults, so a connector only sets what it changes.
type Config struct {
	// Host and Port are the relay's address; Host is also the TLS server name.
	Host string
	Port int
	// TLS is how the connection is secured.
	TLS TLSMode
	// TLSConfig overrides certificate checks (tests with a self-signed relay).
	TLSConfig *tls.Config
	// LocalName is sent in EHLO; empty means "localhost".
	LocalName string
	// CommandTimeout bounds each command's reply and each 64 KiB of the message while it is
	// written; SubmitTimeout bounds the reply to the final ".".
	// Zero means 30s and 2m.
	CommandTimeout time.Duration
	SubmitTimeout  time.Duration
	// PoolSize bounds the connections to the relay, open at once and kept idle for reuse; a send
	// waits for a free one. 0 means 4.
	PoolSize int
	// Auth, Username and Secret authenticate each new connection (AuthNone or zero: no AUTH).
	// Secret is called at dial time, so a rotated secret file is used from the next connection
	// on; its error must not contain the secret, as it becomes the attempt's message. A 535
	// reply to AUTH is a permanent outcome, a 454 a temporary one, and a Secret that fails (or
	// is nil) is temporary: an admin can put the file in place and the mail goes out.
	Auth     AuthMechanism
	Username string
	Secret   func() (string, error)
	// Gate, when set, shares a limit on the connections open to the relay with other
	// processes: a connection is dialled only with its permit and gives it back when it closes,
	// and an idle one is closed as soon as another process waits.
	Gate Gate
}

// Gate shares a relay's limit on open connections between the outbox's replicas (the relay
// counts every connection of the client, idle ones too). redisstore.ConnGate is the one the
// outbox uses.
type Gate interface {
	// Waiter names one conversation's wait; it keeps its turn across its asks.
	Waiter() string
	// Open returns a permit for one more connection in waiter's turn, or "" to wait and ask
	// again.
	Open(ctx context.Context, waiter string) (string, error)
	// Leave ends waiter's wait without a permit (it got an idle connection, or gave up), so it
	// holds up neither the turns nor other processes' idle connections.
	Leave(ctx context.Context, waiter string) error
	// Keep is asked while a connection is idle: false means the connection must close (another
	// process waits, or the permit was lost); Close gives the permit back once it has.
	Keep(ctx context.Context, permit string) (bool, error)
	// Close gives the permit of a closed connection back.
	Close(ctx context.Context, permit string) error
}

// Result is how an attempt ended, with what the relay said, so the outbox can decide what
// follows and show the person why.
type Result struct {
	// Outcome is what the outbox's rules act on.
	Outcome outbox.Outcome
	// Code is the SMTP reply code; 0 when there was no reply (network error, timeout).
	Code int
	// Enhanced is the RFC 3463 code ("5.7.8") when the relay sent one.
	Enhanced string
	// Message is the relay's text or the error, never a secret.
	Message string
	// Started is when the conversation began: a connection was free, and it was taken from the
	// pool or dialled. Waiting for a free connection is not part of the attempt.
	Started time.Time
}

// Sender delivers to one relay, reusing connections: a connection and its TLS and AUTH
// handshakes cost several round trips, a message on an open one two with PIPELINING (four and
// one per recipient without).
type Sender struct {
	cfg   Config
	slots chan struct{}
	// freed wakes a conversation waiting for the Gate when a connection goes idle or closes.
	freed chan struct{}
	mu    sync.Mutex
	idle  []pooled
	// gen counts Close calls: a connection dialled before the last one is not pooled again.
	gen uint64
	// watching is set while a goroutine asks the Gate whether the idle connections may stay.
	watching bool
}

// pooled is an idle connection and when its last transaction ended.
type pooled struct {
	c    *conn
	used time.Time
}

// freshFor is how long after a completed transaction a pooled connection is reused without a
// RSET probe: the relay just answered on it, and a transaction that completed leaves no state.
// Older connections are probed, since relays close idle ones.
const freshFor = 2 * time.Second

// gateAsk bounds each call to the Gate, and gateIdleCheck is how often an idle gated
// connection asks whether another process waits for it.
const (
	gateAsk       = 2 * time.Second
	gateIdleCheck = 500 * time.Millisecond
	// abruptGrace is how long a permit is kept after its connection was closed without QUIT.
	abruptGrace = 250 * time.Millisecond
)

// New returns a Sender for cfg; it dials nothing until the first Send.
func New(cfg Config) *Sender {
	if cfg.CommandTimeout == 0 {
		cfg.CommandTimeout = 30 * time.Second
	}
	if cfg.SubmitTimeout == 0 {
		cfg.SubmitTimeout = 2 * time.Minute
	}
	if cfg.PoolSize == 0 {
		cfg.PoolSize = 4
	}
	if cfg.LocalName == "" {
		cfg.LocalName = "localhost"
	}
	return &Sender{cfg: cfg, slots: make(chan struct{}, cfg.PoolSize), freed: make(chan struct{}, 1)}
}

// Close quits the idle connections, when the connector changes or the service stops; those in
// a transaction now close when it ends. A Send after Close dials again.
func (s *Sender) Close() {
	s.mu.Lock()
	idle := s.idle
	s.idle = nil
	s.gen++
	s.mu.Unlock()
	for _, p := range idle {
		s.discard(context.Background(), p.c, true)
	}
}

// errGate is a Gate that could not be asked (its store is down): nothing reached the relay.
var errGate = errors.New("the relay's connection limit could not be checked")

// get returns a connection for one transaction: an idle one that is still open, else a new one
// once the Gate (if any) has a permit for it. began is when the wait for the Gate ended: the
// attempt starts there.
func (s *Sender) get(ctx context.Context) (c *conn, began time.Time, err error) {
	var waiter string
	granted := false
	// after is for giving back what the wait took (its place, a permit, a dead idle connection's
	// permit) whether or not ctx ended: else the permit would block other replicas until it lapses.
	after := context.WithoutCancel(ctx)
	defer func() {
		if waiter != "" && !granted {
			leaveCtx, cancel := context.WithTimeout(after, gateAsk)
			_ = s.cfg.Gate.Leave(leaveCtx, waiter) // else it lapses by itself within seconds
			cancel()
		}
	}()
	pause := 10 * time.Millisecond
	for {
		if c := s.takeIdle(after); c != nil {
			return c, time.Now(), nil
		}
		g := s.cfg.Gate
		if g == nil {
			began = time.Now()
			c, err := dialConn(ctx, s.cfg)
			return c, began, err
		}
		if waiter == "" {
			waiter = g.Waiter()
		}
		askCtx, cancel := context.WithTimeout(ctx, gateAsk)
		permit, err := g.Open(askCtx, waiter)
		cancel()
		if err != nil {
			return nil, time.Now(), fmt.Errorf("%w: %w", errGate, err)
		}
		if permit != "" {
			granted = true // the grant ended the wait in the same step
			began = time.Now()
			c, err := dialConn(ctx, s.cfg)
			if err != nil {
				s.release(after, permit)
				return nil, began, err
			}
			s.mu.Lock()
			c.permit, c.gen = permit, s.gen
			s.mu.Unlock()
			return c, began, nil
		}
		// Every connection the relay allows is open: wait for one of ours to come free or for
		// our turn at another replica's.
		select {
		case <-ctx.Done():
			return nil, time.Now(), ctx.Err()
		case <-s.freed:
		case <-time.After(pause):
		}
		pause = min(2*pause, 250*time.Millisecond)
	}
}

// takeIdle returns an idle connection that is still open, or nil; ctx gives a dead one's permit
// back, so it must not end with the transaction.
func (s *Sender) takeIdle(ctx context.Context) *conn {
	for {
		s.mu.Lock()
		n := len(s.idle)
		if n == 0 {
			s.mu.Unlock()
			return nil
		}
		p := s.idle[n-1]
		s.idle = s.idle[:n-1]
		s.mu.Unlock()
		if time.Since(p.used) < freshFor {
			return p.c
		}
		// A pooled connection may have been closed by the relay meanwhile; RSET finds out.
		if err := p.c.reset(); err == nil {
			return p.c
		}
		s.discard(ctx, p.c, false)
	}
}

// put keeps c idle for the next transaction, unless the pool is full, c was dialled before the
// last Close, or the Gate wants its permit for another replica.
func (s *Sender) put(ctx context.Context, c *conn) {
	if c.permit != "" {
		askCtx, cancel := context.WithTimeout(ctx, gateAsk)
		keep, err := s.cfg.Gate.Keep(askCtx, c.permit)
		cancel()
		if err != nil || !keep {
			go s.discard(ctx, c, true)
			return
		}
	}
	s.mu.Lock()
	if c.gen != s.gen || len(s.idle) >= s.cfg.PoolSize {
		s.mu.Unlock()
		go s.discard(ctx, c, true)
		return
	}
	s.idle = append(s.idle, pooled{c: c, used: time.Now()})
	watch := c.permit != "" && !s.watching
	if watch {
		s.watching = true
	}
	s.mu.Unlock()
	s.signal()
	if watch {
		go s.watchIdle(ctx)
	}
}

// discard closes c (politely with QUIT when quit is set) and gives its permit back; ctx must
// not be one that ends with the transaction (the permit is given back whatever happened).
func (s *Sender) discard(ctx context.Context, c *conn, quit bool) {
	switch {
	case c.permit == "" && quit:
		c.quit()
	case c.permit == "":
		c.close()
	case quit:
		// The relay counts the connection until it has closed its end.
		c.quitAndWait(gateAsk)
		s.release(ctx, c.permit)
	default:
		// Closed without goodbye (a failure): the relay notices when it next reads; give it a
		// moment before another replica may dial in this connection's place.
		c.close()
		time.AfterFunc(abruptGrace, func() { s.release(ctx, c.permit) })
	}
}

func (s *Sender) release(ctx context.Context, permit string) {
	ctx, cancel := context.WithTimeout(ctx, gateAsk)
	defer cancel()
	// A permit that cannot be given back now runs out by itself (redisstore.PermitTTL).
	_ = s.cfg.Gate.Close(ctx, permit)
	s.signal()
}

func (s *Sender) signal() {
	select {
	case s.freed <- struct{}{}:
	default:
	}
}

// watchIdle asks the Gate, while gated connections are idle, whether they may stay open: when
// another replica waits for the relay, an idle connection here is closed for it.
func (s *Sender) watchIdle(ctx context.Context) {
	for {
		time.Sleep(gateIdleCheck)
		s.mu.Lock()
		idle := slices.Clone(s.idle)
		if len(idle) == 0 {
			s.watching = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for _, p := range idle {
			askCtx, cancel := context.WithTimeout(ctx, gateAsk)
			keep, err := s.cfg.Gate.Keep(askCtx, p.c.permit)
			cancel()
			if err == nil && keep {
				continue
			}
			s.mu.Lock()
			i := slices.IndexFunc(s.idle, func(q pooled) bool { return q.c == p.c })
			if i >= 0 {
				s.idle = slices.Delete(s.idle, i, i+1)
			}
			s.mu.Unlock()
			if i >= 0 { // else a transaction took it meanwhile: put asks again when it ends
				s.discard(ctx, p.c, true)
			}
		}
	}
}

// PoolSize is how many conversations the relay gets at once: the connector's concurrency.
func (s *Sender) PoolSize() int { return s.cfg.PoolSize }

// Send delivers msg (a complete RFC 5322 message with CRLF line ends) from from to rcpts. A
// recipient refused at RCPT fails the whole attempt with that reply: partial delivery is not
// attempted in this version.
func (s *Sender) Send(ctx context.Context, from string, rcpts []string, msg []byte) Result {
	return s.SendGuarded(ctx, from, rcpts, msg, nil)
}

// errNotSent is a guard's refusal or a cancellation before the message could have left.
var errNotSent = errors.New("the conversation was stopped before the message was sent")

// A Guard vouches for the worker's claim where a transaction can stop without a trace: before
// the connection and again before MAIL (message false), and once the relay has accepted DATA,
// right before the message is written (message true). Its error ends the conversation with
// OutcomeNotSent. A guard that returns nil with message true marks the conversation as one that
// is writing its message: a stopping worker lets such conversations finish.
type Guard func(message bool) error

// SendGuarded is Send with a guard (see Guard); the relay discards a transaction whose message
// never ended with ".". Cancelling ctx also ends the conversation with OutcomeNotSent until the
// final "." has left (a message cut short is discarded); after it, the outcome is what the relay
// answers, or unknown when the answer cannot be read.
func (s *Sender) SendGuarded(ctx context.Context, from string, rcpts []string, msg []byte, guard Guard) Result {
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return Result{Outcome: outbox.OutcomeNotSent, Message: "no connection to the relay was free: " + ctx.Err().Error()}
	}
	defer func() { <-s.slots }()
	started := time.Now()
	if guard != nil {
		if err := guard(false); err != nil {
			return Result{Outcome: outbox.OutcomeNotSent, Message: err.Error(), Started: started}
		}
	}
	// keep is for what follows the transaction whatever ended it: pooling or closing the
	// connection and giving its permit back.
	keep := context.WithoutCancel(ctx)
	c, started, err := s.get(ctx)
	if err != nil {
		r := classify(err, false)
		if ctx.Err() != nil || errors.Is(err, errGate) {
			r.Outcome = outbox.OutcomeNotSent
		}
		r.Started = started
		return r
	}
	stop := context.AfterFunc(ctx, c.interrupt)
	code, text, dataSent, err := c.send(ctx, from, rcpts, msg, guard)
	if !stop() && err == nil {
		// ctx ended as the transaction completed: the interruption may still land on this
		// connection, so it is not pooled.
		s.discard(keep, c, false)
		return sent(code, text, started)
	}
	if err != nil {
		s.discard(keep, c, false)
		r := classify(err, dataSent)
		if errors.Is(err, errNotSent) || (ctx.Err() != nil && !dataSent) {
			r.Outcome = outbox.OutcomeNotSent
		}
		r.Started = started
		return r
	}
	s.put(keep, c)
	return sent(code, text, started)
}

// sent is the result of an accepted message, with the relay's answer split as a refusal's is,
// so the attempt keeps it ("250 2.0.0 Ok: queued as 6159CC01B4": the relay's log knows the
// mail by it).
func sent(code int, text string, started time.Time) Result {
	r := replyErr(code, text)
	return Result{Outcome: outbox.OutcomeSent, Code: code, Enhanced: r.Enhanced, Message: r.Message, Started: started}
}

// classify maps an error to an outcome. afterDot says the final "." may have been written, so a
// failure without a reply leaves the outcome unknown.
func classify(err error, afterDot bool) Result {
	if errors.Is(err, errNoSMTPUTF8) {
		// RFC 6531 §3.2's answer to a client that cannot send the mail through this relay.
		return Result{Outcome: outbox.OutcomePermanent, Enhanced: "5.6.7", Message: err.Error()}
	}
	var re *replyError
	if errors.As(err, &re) {
		r := Result{Code: re.Code, Enhanced: re.Enhanced, Message: re.Message}
		if err != error(re) { //nolint:errorlint // identity on purpose: is err the reply itself or a wrap of it
			r.Message = err.Error() // a refusal during the handshake says which step it was
		}
		switch {
		case re.Code >= 400 && re.Code < 500:
			r.Outcome = outbox.OutcomeTemporary
		default:
			r.Outcome = outbox.OutcomePermanent
		}
		return r
	}
	if afterDot {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "write" {
			// The "." did not leave: the relay cannot have accepted the message.
			return Result{Outcome: outbox.OutcomeTemporary, Message: err.Error()}
		}
		return Result{Outcome: outbox.OutcomeUnknown, Message: "connection lost after the message was sent, before the relay replied: " + err.Error()}
	}
	return Result{Outcome: outbox.OutcomeTemporary, Message: err.Error()}
}
