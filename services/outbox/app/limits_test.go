package app_test

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// TestRelayLimitsAcrossReplicas (issue 21): a relay that rations (5 messages in any second,
// answering "451 4.7.500 Server busy" beyond) and a connector set to 4 a second, two outbox
// replicas sharing the budget. A backlog of high and low priority mail released at once
// reaches the relay without one refusal for the pace, every email in one attempt, and the
// high priority mail first except for what the lanes had claimed before the first wait (at
// most one window's grants).
func TestRelayLimitsAcrossReplicas(t *testing.T) {
	e := startEnv(t)
	second := e.replica()
	sink := smtptest.Start(t, smtptest.WithRateLimit(5, time.Second))
	host, portStr, _ := net.SplitHostPort(sink.Addr())
	port, _ := strconv.Atoi(portStr)
	e.createConnector(&outboxv1.Connector{
		ConnectorId: "rationed", Host: host, Port: int32(port), TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		Enabled: proto.Bool(false), Limits: &outboxv1.RelayLimits{MessagesPerSecond: 4},
	})
	eva := e.as("eva", nil)
	prio := map[string]outboxv1.Priority{} // Message-ID -> priority
	var ids []string
	for i := range 24 {
		req := email("eva@kanzlei.example", "client@example.com", fmt.Sprintf("Rationiert %d", i))
		req.ConnectorId = "rationed"
		req.Priority = outboxv1.Priority_PRIORITY_LOW
		if i%2 == 0 {
			req.Priority = outboxv1.Priority_PRIORITY_HIGH
		}
		client := e.outbox
		if i%3 == 0 {
			client = second
		}
		r, err := client.SubmitEmail(eva, req)
		if err != nil {
			t.Fatal(err)
		}
		prio["<"+r.GetEmail().GetMessageId()+">"] = req.Priority
		ids = append(ids, r.GetEmail().GetEmailId())
	}
	// Support asks first when the backlog will be out: 24 at 4 a second, the last 5 s after the
	// first four.
	sel := &outboxv1.Selection{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{ConnectorId: "rationed"}}
	before := time.Now()
	est, err := second.EstimateDelivery(e.admin(), &outboxv1.EstimateDeliveryRequest{Selection: sel})
	if err != nil || len(est.GetConnectors()) != 1 {
		t.Fatalf("EstimateDelivery = %v, %v", est, err)
	}
	c := est.GetConnectors()[0]
	if c.GetConnectorId() != "rationed" || c.GetEmails() != 24 || c.GetRecipients() != 24 || c.GetLimitedBy() != "limits.messages_per_second" ||
		c.GetDoneTime().AsTime().Before(before.Add(5*time.Second)) || c.GetDoneTime().AsTime().After(time.Now().Add(5*time.Second)) {
		t.Errorf("estimate %v, want 24 emails and recipients done 5 s from now by limits.messages_per_second", c)
	}
	if _, err := e.outbox.EstimateDelivery(eva, &outboxv1.EstimateDeliveryRequest{Selection: sel}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("EstimateDelivery as a member: %v, want PermissionDenied", err)
	}
	if _, err := e.outbox.EnableConnector(e.admin(), &outboxv1.EnableConnectorRequest{ConnectorId: "rationed"}); err != nil {
		t.Fatal(err)
	}
	// While the backlog drains, the connector shows that it waits, why, and what is left.
	poll.Eventually(t, "GetConnector to show the wait", func() bool {
		r, err := second.GetConnector(e.admin(), &outboxv1.GetConnectorRequest{ConnectorId: "rationed"})
		return err == nil && r.GetHeldUntil() != nil && r.GetHeldReason() == "the relay's limits set on the connector" &&
			r.GetDueCount()+r.GetLaterCount() > 0
	})
	for _, id := range ids {
		m := e.waitStatus(eva, id, outboxv1.EmailStatus_EMAIL_STATUS_SENT)
		if m.GetAttemptCount() != 1 {
			t.Errorf("%s sent in %d attempts, want 1", id, m.GetAttemptCount())
		}
	}
	poll.Eventually(t, "24 messages at the relay", func() bool { return len(sink.Messages()) >= 24 })
	r, err := e.outbox.GetConnector(e.admin(), &outboxv1.GetConnectorRequest{ConnectorId: "rationed"})
	if err != nil || r.GetDueCount() != 0 || r.GetLaterCount() != 0 {
		t.Errorf("after the backlog: GetConnector = %v (%v), want nothing due now or later", r, err)
	}
	if n := sink.Throttled(); n != 0 {
		t.Errorf("the relay refused %d messages for the pace: a limit was exceeded", n)
	}
	msgs := sink.Messages()
	if len(msgs) != 24 {
		t.Fatalf("%d messages at the relay, want 24 (each once)", len(msgs))
	}
	lowEarly := 0
	for _, m := range msgs[:12] {
		if prio[header(t, m).Get("Message-Id")] == outboxv1.Priority_PRIORITY_LOW {
			lowEarly++
		}
	}
	if lowEarly > 4 {
		t.Errorf("%d of the first 12 messages were low priority, want at most 4 (one window's grants)", lowEarly)
	}
}

// TestConnectionLimitAcrossReplicas (issue 21): a relay that takes at most two connections
// from the client (a third is answered 421 and closed) and a connector with pool_size 4 and
// limits.connections 2, sent through by two outbox replicas at once. Every email leaves in one
// attempt, the relay never turns a connection away, and GetConnector never counts more than
// two open.
func TestConnectionLimitAcrossReplicas(t *testing.T) {
	e := startEnv(t)
	second := e.replica()
	sink := smtptest.Start(t, smtptest.WithConnectionLimit(2))
	// Each message takes a moment at the relay, so the replicas' conversations overlap.
	sink.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
		if env.Stage == smtptest.StageData {
			time.Sleep(20 * time.Millisecond)
		}
		return smtptest.Accept
	})
	host, portStr, _ := net.SplitHostPort(sink.Addr())
	port, _ := strconv.Atoi(portStr)
	e.createConnector(&outboxv1.Connector{
		ConnectorId: "narrow", Host: host, Port: int32(port), TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		Enabled: proto.Bool(false), PoolSize: 4, Limits: &outboxv1.RelayLimits{Connections: 2},
	})
	eva := e.as("eva", nil)
	var ids []string
	for i := range 40 {
		req := email("eva@kanzlei.example", "client@example.com", fmt.Sprintf("Schmal %d", i))
		req.ConnectorId = "narrow"
		client := e.outbox
		if i%2 == 0 {
			client = second
		}
		r, err := client.SubmitEmail(eva, req)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.GetEmail().GetEmailId())
	}
	if _, err := e.outbox.EnableConnector(e.admin(), &outboxv1.EnableConnectorRequest{ConnectorId: "narrow"}); err != nil {
		t.Fatal(err)
	}
	maxOpen := int64(0)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the relay: %d messages, %d connections refused, %d open at most", len(sink.Messages()), sink.RefusedConnections(), sink.PeakConnections())
		}
	})
	poll.Eventually(t, "40 messages at the relay", func() bool {
		if r, err := second.GetConnector(e.admin(), &outboxv1.GetConnectorRequest{ConnectorId: "narrow"}); err == nil {
			maxOpen = max(maxOpen, r.GetOpenConnections())
		}
		return len(sink.Messages()) >= 40
	})
	for _, id := range ids {
		if m := e.waitStatus(eva, id, outboxv1.EmailStatus_EMAIL_STATUS_SENT); m.GetAttemptCount() != 1 {
			t.Errorf("%s sent in %d attempts, want 1", id, m.GetAttemptCount())
		}
	}
	if n := sink.RefusedConnections(); n != 0 {
		t.Errorf("the relay turned %d connections away: more than 2 were open (peak %d)", n, sink.PeakConnections())
	}
	if n := len(sink.Messages()); n != 40 {
		t.Errorf("%d messages at the relay, want 40 (each once)", n)
	}
	if maxOpen > 2 || maxOpen == 0 {
		t.Errorf("GetConnector counted up to %d open connections, want 1 or 2", maxOpen)
	}
}

// TestSenderBacklogIsPaced (issue 21): 30 emails of one sender held to 5 a second by its
// sender_limits, and one high priority email of the same sender submitted behind them. The
// backlog is spread over the seconds to come instead of all coming due at each second's end:
// the limit refuses far fewer claims than the one-refusal-per-waiting-email-per-window (75) an
// unpaced backlog costs; the relay is never over the pace; the late high priority email is not
// paced behind the normal ones.
func TestSenderBacklogIsPaced(t *testing.T) {
	e := startEnv(t)
	sink := smtptest.Start(t, smtptest.WithRateLimit(6, time.Second))
	host, portStr, _ := net.SplitHostPort(sink.Addr())
	port, _ := strconv.Atoi(portStr)
	e.createConnector(&outboxv1.Connector{
		ConnectorId: "paced", Host: host, Port: int32(port), TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		SenderLimits: &outboxv1.RelayLimits{MessagesPerSecond: 5},
	})
	eva := e.as("eva", nil)
	for i := range 30 {
		req := email("eva@kanzlei.example", "client@example.com", fmt.Sprintf("Rundschreiben %d", i))
		req.ConnectorId = "paced"
		if _, err := e.outbox.SubmitEmail(eva, req); err != nil {
			t.Fatal(err)
		}
	}
	poll.Eventually(t, "the sender's limit to refuse", func() bool {
		return counted(t, e.metrics[0], "postamt_outbox_dispatch_events_total", "event", "limited") > 0
	})
	urgent := email("eva@kanzlei.example", "gericht@example.com", "Fristsache")
	urgent.ConnectorId, urgent.Priority = "paced", outboxv1.Priority_PRIORITY_HIGH
	r, err := e.outbox.SubmitEmail(eva, urgent)
	if err != nil {
		t.Fatal(err)
	}
	e.waitStatus(eva, r.GetEmail().GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)
	poll.Eventually(t, "31 messages at the relay", func() bool { return len(sink.Messages()) >= 31 })
	// Paced behind the backlog it would be last; it goes in the next second's five or the one
	// after (the lane may have claimed a few ahead of it).
	at := slices.IndexFunc(sink.Messages(), func(m smtptest.Message) bool { return slices.Contains(m.To, "gericht@example.com") })
	if at < 0 || at >= 20 {
		t.Errorf("the high priority email was message %d of 31 at the relay: paced behind the normal backlog", at+1)
	}
	if n := sink.Throttled(); n != 0 {
		t.Errorf("the relay refused %d messages for the pace", n)
	}
	n := counted(t, e.metrics[0], "postamt_outbox_dispatch_events_total", "event", "limited")
	t.Logf("the sender's limit refused %v claims", n)
	if n > 60 {
		t.Errorf("the sender's limit refused %v claims of 31 emails: the backlog was not paced", n)
	}
}
