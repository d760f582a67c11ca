package harness

import (
	"bytes"
	"net"
	"net/mail"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/postamt/postamt/internal/testkit/smtptest"
	"github.com/postamt/postamt/internal/testkit/tcpproxy"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// Relay is an SMTP relay as the outbox meets it: a sink that records messages, reached through a
// proxy that can make it slow, hang or drop connections.
type Relay struct {
	Sink  *smtptest.Sink
	Proxy *tcpproxy.Proxy
}

// NewRelay starts a sink and a proxy in front of it, both stopped at tb's cleanup. Each connector
// may get its own, so a test can tell their mail apart and fault one alone.
func (s *Suite) NewRelay(tb testing.TB) *Relay {
	tb.Helper()
	sink := smtptest.Start(tb)
	r := &Relay{Sink: sink, Proxy: tcpproxy.Start(tb, sink.Addr())}
	s.mu.Lock()
	s.relays = append(s.relays, r)
	s.mu.Unlock()
	return r
}

// Close cuts the relay off and waits until the sink has finished every message it was receiving:
// after it, Arrivals and Copies are final. Call it once no outbox sends any more (StopDispatchers);
// Check closes every relay of the suite.
func (r *Relay) Close() {
	r.Proxy.Close()
	r.Sink.Close()
}

// Arrival is one message at a sink.
type Arrival struct {
	// MessageID is the Message-ID header without angle brackets, as Email.message_id has it.
	MessageID string
	At        time.Time
}

// Arrivals lists the sink's messages in order of arrival.
func (r *Relay) Arrivals() []Arrival {
	msgs := r.Sink.Messages()
	out := make([]Arrival, len(msgs))
	for i, m := range msgs {
		out[i] = Arrival{MessageID: messageID(m.Data), At: m.Received}
	}
	return out
}

// Copies counts the sink's messages per Message-ID.
func (r *Relay) Copies() map[string]int {
	out := map[string]int{}
	for _, a := range r.Arrivals() {
		out[a.MessageID]++
	}
	return out
}

// Distinct is the number of different Message-IDs the sink has received.
func (r *Relay) Distinct() int { return len(r.Copies()) }

func messageID(data []byte) string {
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		return "unparsable: " + err.Error()
	}
	return strings.Trim(strings.TrimSpace(m.Header.Get("Message-Id")), "<>")
}

// Connector describes a connector to create.
type Connector struct {
	Tenant string
	ID     string
	Relay  *Relay
	// PoolSize is the connections kept to the relay per replica; 0 means the service default.
	PoolSize int32
	// RetryPattern is the delay before each further attempt; empty means one second, so a test
	// sees retries within its time.
	RetryPattern []time.Duration
	// MaxAttempts; 0 means 10.
	MaxAttempts int32
	// Policy for mail caught in the RFC 1047 window; unset means RESEND, so such mail is sent
	// again (and counted) rather than held for a person, and a test can wait for it to be SENT.
	Policy outboxv1.UnknownOutcomePolicy
	// Disabled disables it right after creating it (through every dispatcher, see
	// SetConnectorEnabled), before any mail can reach it.
	Disabled bool
}

// CreateConnector creates c through the API replica. The dispatchers find it when they next
// reload their connectors (at the latest when they meet its mail).
func (s *Suite) CreateConnector(tb testing.TB, c Connector) {
	tb.Helper()
	if len(c.RetryPattern) == 0 {
		c.RetryPattern = []time.Duration{time.Second}
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 10
	}
	if c.Policy == outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_UNSPECIFIED {
		c.Policy = outboxv1.UnknownOutcomePolicy_UNKNOWN_OUTCOME_POLICY_RESEND
	}
	host, portStr, err := net.SplitHostPort(c.Relay.Proxy.Addr())
	if err != nil {
		tb.Fatal(err)
	}
	port, _ := strconv.Atoi(portStr)
	pattern := make([]*durationpb.Duration, len(c.RetryPattern))
	for i, d := range c.RetryPattern {
		pattern[i] = durationpb.New(d)
	}
	_, err = s.Outbox().CreateConnector(s.Admin(c.Tenant), &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
		ConnectorId: c.ID, Host: host, Port: int32(port), TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		RetryPattern: pattern, MaxAttempts: c.MaxAttempts, UnknownOutcomePolicy: c.Policy,
		PoolSize: c.PoolSize,
	}})
	if err != nil {
		tb.Fatalf("harness: create connector %s/%s: %v", c.Tenant, c.ID, err)
	}
	if c.Disabled {
		s.SetConnectorEnabled(tb, c.Tenant, c.ID, false)
	}
}

// SetConnectorEnabled enables or disables a connector through every running dispatcher in turn
// and returns how many emails each call moved from CONNECTOR_DISABLED back to the queue. Each
// outbox reloads its connectors at once when it is the one called, and the others only within
// their refresh interval: a dispatcher that still thinks the connector disabled would put mail
// the first call requeued back into CONNECTOR_DISABLED. Calling every dispatcher leaves each one
// current, and the later calls requeue what an earlier one's stale neighbour disabled again (a
// nonzero count after the first call shows that race happened).
func (s *Suite) SetConnectorEnabled(tb testing.TB, tenant, id string, enabled bool) []int64 {
	tb.Helper()
	var requeued []int64
	for _, p := range s.Dispatchers {
		if !p.Running() {
			continue
		}
		if enabled {
			r, err := s.OutboxOf(p).EnableConnector(s.Admin(tenant), &outboxv1.EnableConnectorRequest{ConnectorId: id})
			if err != nil {
				tb.Fatalf("harness: enable connector %s/%s through %s: %v", tenant, id, p.Name, err)
			}
			requeued = append(requeued, r.GetRequeued())
			continue
		}
		if _, err := s.OutboxOf(p).DisableConnector(s.Admin(tenant), &outboxv1.DisableConnectorRequest{ConnectorId: id}); err != nil {
			tb.Fatalf("harness: disable connector %s/%s through %s: %v", tenant, id, p.Name, err)
		}
	}
	return requeued
}

// Attempts counts, per recipient, the attempts a scripted sink met at its stage (Script).
type Attempts struct {
	mu sync.Mutex
	n  map[string]int
}

// Of is the number of attempts to rcpt seen so far.
func (a *Attempts) Of(rcpt string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n[rcpt]
}

// Total is the number of attempts seen so far, all recipients together.
func (a *Attempts) Total() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	t := 0
	for _, n := range a.n {
		t += n
	}
	return t
}

// Script has the sink answer each attempt at stage with what f returns for the message's
// recipient and the attempt's number (1 for the first), and accept at every other stage.
// Messages are told apart by their first recipient: the harness sends every email to an address
// of its own. It returns the attempts counted at stage.
func (r *Relay) Script(stage smtptest.Stage, f func(rcpt string, attempt int) smtptest.Behavior) *Attempts {
	a := &Attempts{n: map[string]int{}}
	r.Sink.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
		if env.Stage != stage || len(env.To) == 0 {
			return smtptest.Accept
		}
		rcpt := env.To[0]
		a.mu.Lock()
		a.n[rcpt]++
		n := a.n[rcpt]
		a.mu.Unlock()
		return f(rcpt, n)
	})
	return a
}

// Recipient is the address an email was sent to, from its record.
func Recipient(e *outboxv1.Email) string {
	if to := e.GetTo(); len(to) > 0 {
		return to[0]
	}
	return ""
}
