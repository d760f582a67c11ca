package smtp_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/postamt/postamt/internal/testkit/smtptest"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/smtp"
)

// TestGuardStopsBeforeTheMessage: the worker's guard is asked before MAIL and again after the
// relay accepted DATA (message true); a refusal at either point ends the conversation without
// the message, so the relay delivers nothing, and the outcome says nothing was sent (no
// attempt). The next send on the same sender works.
func TestGuardStopsBeforeTheMessage(t *testing.T) {
	refuse := errors.New("lease about to run out")
	for _, tc := range []struct {
		name      string
		atMessage bool // the guard refuses when asked before the message, else at its first call
		asked     []bool
	}{
		{"before MAIL", false, []bool{false}},
		{"after DATA was accepted", true, []bool{false, false, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink := smtptest.Start(t)
			s := sender(t, sink)
			var asked []bool
			got := s.SendGuarded(context.Background(), "info@kanzlei.example", []string{"client@example.com"}, []byte(msg), func(message bool) error {
				asked = append(asked, message)
				if message == tc.atMessage {
					return refuse
				}
				return nil
			})
			if got.Outcome != outbox.OutcomeNotSent || got.Started.IsZero() {
				t.Fatalf("outcome %+v, want NotSent with a start time", got)
			}
			if !slices.Equal(asked, tc.asked) {
				t.Errorf("guard asked with message %v, want %v (before the connection, before MAIL, before the message)", asked, tc.asked)
			}
			if n := len(sink.Messages()); n != 0 {
				t.Fatalf("the relay delivered %d messages", n)
			}
			if r := s.Send(context.Background(), "info@kanzlei.example", []string{"client@example.com"}, []byte(msg)); r.Outcome != outbox.OutcomeSent {
				t.Fatalf("next send = %+v", r)
			}
		})
	}
}

// TestCancelStopsAHungConversation: a conversation blocked on a relay that does not answer MAIL
// ends as soon as its context is cancelled, as not sent, instead of waiting for the command
// timeout.
func TestCancelStopsAHungConversation(t *testing.T) {
	sink := smtptest.Start(t)
	release := make(chan struct{})
	defer close(release)
	sink.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
		if len(env.To) == 0 {
			<-release // the relay hangs on MAIL
		}
		return smtptest.Accept
	})
	s := sender(t, sink)
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan outbox.Outcome, 1)
	go func() {
		got <- s.Send(ctx, "info@kanzlei.example", []string{"client@example.com"}, []byte(msg)).Outcome
	}()
	time.AfterFunc(100*time.Millisecond, cancel)
	if o := <-got; o != outbox.OutcomeNotSent {
		t.Fatalf("outcome %v, want NotSent (the command timeout, 2 s, would make it temporary)", o)
	}
	if n := len(sink.Messages()); n != 0 {
		t.Fatalf("the relay delivered %d messages", n)
	}
}

// permitLedger is a Gate that hands out permits without limit and records the ones given back;
// like a store, it refuses calls whose context has ended.
type permitLedger struct {
	mu             sync.Mutex
	n              int
	open, returned []string
}

func (g *permitLedger) Waiter() string { return "w" }

func (g *permitLedger) Open(ctx context.Context, _ string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n++
	p := fmt.Sprintf("p%d", g.n)
	g.open = append(g.open, p)
	return p, nil
}

func (g *permitLedger) Leave(ctx context.Context, _ string) error { return ctx.Err() }

func (g *permitLedger) Keep(ctx context.Context, _ string) (bool, error) { return true, ctx.Err() }

func (g *permitLedger) Close(ctx context.Context, permit string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.returned = append(g.returned, permit)
	return nil
}

func (g *permitLedger) given() (open, returned []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.open), slices.Clone(g.returned)
}

// TestCancelStopsAHungGreeting: a relay that accepts the connection and never greets holds a
// send only until its context ends (not for the command timeout, here ten minutes), and the
// connection's permit is given back at once although that context has ended, instead of
// blocking other replicas until it lapses.
func TestCancelStopsAHungGreeting(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	accepted := make(chan struct{}, 1)
	go func() {
		var held []net.Conn // accepted and never answered
		defer func() {
			for _, c := range held {
				_ = c.Close()
			}
		}()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	host, port, _ := net.SplitHostPort(lis.Addr().String())
	p, _ := strconv.Atoi(port)
	gate := &permitLedger{}
	s := smtp.New(smtp.Config{Host: host, Port: p, TLS: smtp.TLSNone, CommandTimeout: 10 * time.Minute, Gate: gate})
	t.Cleanup(s.Close)
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan outbox.Outcome, 1)
	go func() {
		got <- s.Send(ctx, "info@kanzlei.example", []string{"client@example.com"}, []byte(msg)).Outcome
	}()
	<-accepted // the send waits for the greeting now
	cancel()
	select {
	case o := <-got:
		if o != outbox.OutcomeNotSent {
			t.Fatalf("outcome %v, want NotSent", o)
		}
	case <-time.After(time.Minute): // the command timeout is ten minutes
		t.Fatal("the send did not end when its context was cancelled")
	}
	open, returned := gate.given()
	if len(open) != 1 || !slices.Equal(open, returned) {
		t.Fatalf("permits handed out %v, given back %v; want the one given back", open, returned)
	}
}
