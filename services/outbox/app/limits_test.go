package app_test

import (
	"fmt"
	"net"
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
