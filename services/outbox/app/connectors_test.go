package app_test

import (
	"context"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/app"
)

// createConnector creates a connector as the admin and fails the test on an error.
func (e *env) createConnector(c *outboxv1.Connector) *outboxv1.Connector {
	e.t.Helper()
	r, err := e.outbox.CreateConnector(e.admin(), &outboxv1.CreateConnectorRequest{Connector: c})
	if err != nil {
		e.t.Fatalf("create connector %s: %v", c.GetConnectorId(), err)
	}
	return r.GetConnector()
}

// copies counts the messages at sink with the Message-ID of m.
func copies(t *testing.T, sink *smtptest.Sink, m *outboxv1.Email) int {
	t.Helper()
	n := 0
	for _, msg := range sink.Messages() {
		if header(t, msg).Get("Message-Id") == "<"+m.GetMessageId()+">" {
			n++
		}
	}
	return n
}

// TestCreateConnectorDefaults: enabled and tls_mode unset, enabled false, max_attempts 0, and
// the refusals of create and update, as the proto's comments say.
func TestCreateConnectorDefaults(t *testing.T) {
	e := startEnv(t)
	host, port := e.sinkHostPort()
	relay := func(id string) *outboxv1.Connector {
		return &outboxv1.Connector{ConnectorId: id, Host: host, Port: port, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE}
	}

	t.Run("enabled false creates it disabled; its mail waits without using an attempt", func(t *testing.T) {
		c := relay("aus")
		c.Enabled = proto.Bool(false)
		if got := e.createConnector(c); got.Enabled == nil || got.GetEnabled() {
			t.Fatalf("created %v, want enabled false", got)
		}
		r, err := e.outbox.GetConnector(e.admin(), &outboxv1.GetConnectorRequest{ConnectorId: "aus"})
		if err != nil || r.GetConnector().Enabled == nil || r.GetConnector().GetEnabled() {
			t.Fatalf("stored %v (%v), want enabled false", r.GetConnector(), err)
		}
		eva := e.as("eva", nil)
		req := email("eva@kanzlei.example", "client@example.com", "Noch nicht")
		req.ConnectorId = "aus"
		m := e.submit(eva, req)
		got := e.waitStatus(eva, m.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_CONNECTOR_DISABLED)
		if got.GetAttemptCount() != 0 || len(got.GetAttempts()) != 0 {
			t.Errorf("held mail %v, want no attempt", got)
		}
		if n := copies(t, e.sink, m); n != 0 {
			t.Errorf("%d copies left through a connector created disabled", n)
		}
	})
	t.Run("enabled unset is enabled", func(t *testing.T) {
		if got := e.createConnector(relay("an")); !got.GetEnabled() {
			t.Errorf("created %v, want enabled", got)
		}
	})
	t.Run("tls_mode unset is STARTTLS", func(t *testing.T) {
		c := relay("tls")
		c.TlsMode = outboxv1.TlsMode_TLS_MODE_UNSPECIFIED
		e.createConnector(c)
		r, err := e.outbox.GetConnector(e.admin(), &outboxv1.GetConnectorRequest{ConnectorId: "tls"})
		if err != nil || r.GetConnector().GetTlsMode() != outboxv1.TlsMode_TLS_MODE_STARTTLS {
			t.Errorf("stored %v (%v), want STARTTLS", r.GetConnector(), err)
		}
	})
	t.Run("an update that names tls_mode must give one", func(t *testing.T) {
		for _, mask := range [][]string{{"tls_mode"}, nil} {
			c := relay("tls")
			c.TlsMode = outboxv1.TlsMode_TLS_MODE_UNSPECIFIED
			_, err := e.outbox.UpdateConnector(e.admin(), &outboxv1.UpdateConnectorRequest{Connector: c, UpdateMask: &fieldmaskpb.FieldMask{Paths: mask}})
			if st := code(t, err, codes.InvalidArgument); !slices.Contains(fields(st), "connector.tls_mode") {
				t.Errorf("mask %v: violations %v, want connector.tls_mode", mask, fields(st))
			}
		}
		c := relay("tls")
		c.TlsMode = outboxv1.TlsMode_TLS_MODE_IMPLICIT
		r, err := e.outbox.UpdateConnector(e.admin(), &outboxv1.UpdateConnectorRequest{Connector: c, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"tls_mode"}}})
		if err != nil || r.GetConnector().GetTlsMode() != outboxv1.TlsMode_TLS_MODE_IMPLICIT {
			t.Errorf("update to IMPLICIT = %v (%v)", r.GetConnector(), err)
		}
	})
	t.Run("max_attempts 0 is one more than the retry pattern's delays", func(t *testing.T) {
		c := relay("muster")
		c.RetryPattern = []*durationpb.Duration{durationpb.New(time.Minute), durationpb.New(5 * time.Minute), durationpb.New(15 * time.Minute)}
		if got := e.createConnector(c); got.GetMaxAttempts() != 4 {
			t.Errorf("created with max_attempts %d, want 4", got.GetMaxAttempts())
		}
		c.RetryPattern = c.RetryPattern[:1]
		r, err := e.outbox.UpdateConnector(e.admin(), &outboxv1.UpdateConnectorRequest{Connector: c, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"retry_pattern", "max_attempts"}}})
		if err != nil || r.GetConnector().GetMaxAttempts() != 2 {
			t.Errorf("updated = %v (%v), want max_attempts 2", r.GetConnector(), err)
		}
	})
	t.Run("max_attempts outside 1-50 names the field", func(t *testing.T) {
		for _, n := range []int32{-1, 51} {
			c := relay("zuviel")
			c.MaxAttempts = n
			_, err := e.outbox.CreateConnector(e.admin(), &outboxv1.CreateConnectorRequest{Connector: c})
			if st := code(t, err, codes.InvalidArgument); !slices.Contains(fields(st), "connector.max_attempts") {
				t.Errorf("create with %d: violations %v", n, fields(st))
			}
			c.ConnectorId = "muster"
			_, err = e.outbox.UpdateConnector(e.admin(), &outboxv1.UpdateConnectorRequest{Connector: c, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_attempts"}}})
			if st := code(t, err, codes.InvalidArgument); !slices.Contains(fields(st), "connector.max_attempts") {
				t.Errorf("update to %d: violations %v", n, fields(st))
			}
		}
	})
	t.Run("relay limits are stored, shown, changed by update_mask and checked", func(t *testing.T) {
		c := relay("exo")
		c.Limits = &outboxv1.RelayLimits{MessagesPerMinute: 30, RecipientsPerDay: 10_000}
		c.SenderLimits = &outboxv1.RelayLimits{RecipientsPerDay: 2_000, DayCount: outboxv1.DayCount_DAY_COUNT_CALENDAR, TimeZone: "Europe/Vienna"}
		got := e.createConnector(c)
		want := &outboxv1.RelayLimits{MessagesPerMinute: 30, RecipientsPerDay: 10_000, DayCount: outboxv1.DayCount_DAY_COUNT_ROLLING}
		if !proto.Equal(got.GetLimits(), want) || !proto.Equal(got.GetSenderLimits(), c.SenderLimits) {
			t.Errorf("created limits %v and %v, want %v and %v", got.GetLimits(), got.GetSenderLimits(), want, c.SenderLimits)
		}
		c.Limits = nil
		r, err := e.outbox.UpdateConnector(e.admin(), &outboxv1.UpdateConnectorRequest{Connector: c, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"limits"}}})
		if err != nil || r.GetConnector().GetLimits() != nil || !proto.Equal(r.GetConnector().GetSenderLimits(), c.SenderLimits) {
			t.Errorf("update of limits only = %v (%v); want the connector's limits gone, the sender's kept", r.GetConnector(), err)
		}
		bad := relay("falsch")
		bad.Limits = &outboxv1.RelayLimits{MessagesPerSecond: -1}
		bad.SenderLimits = &outboxv1.RelayLimits{DayCount: outboxv1.DayCount_DAY_COUNT_CALENDAR}
		_, err = e.outbox.CreateConnector(e.admin(), &outboxv1.CreateConnectorRequest{Connector: bad})
		st := code(t, err, codes.InvalidArgument)
		if f := fields(st); !slices.Contains(f, "connector.limits.messages_per_second") || !slices.Contains(f, "connector.sender_limits.time_zone") {
			t.Errorf("violations %v, want connector.limits.messages_per_second and connector.sender_limits.time_zone", f)
		}
	})
}

// TestMoveEmailsRetiresARelay: mail waits on a connector created disabled and on one whose relay
// hangs; an admin moves it by filter to the working connector, where it leaves once with its
// Message-ID, and the emptied connectors can be deleted. Mail being sent is refused per email.
func TestMoveEmailsRetiresARelay(t *testing.T) {
	// A submit timeout long enough that the hung conversation outlasts the steps below; the
	// test ends it by closing the hanging relay.
	e := startEnv(t, func(c *app.Config) { c.SMTPSubmitTimeout = 5 * time.Minute })
	eva, admin := e.as("eva", nil), e.admin()
	host, port := e.sinkHostPort()
	hanging := smtptest.Start(t)
	hanging.SetBehavior(smtptest.Hang)
	hhost, hport := hostPort(hanging)
	e.createConnector(&outboxv1.Connector{ConnectorId: "alt", Host: host, Port: port, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE, Enabled: proto.Bool(false)})
	e.createConnector(&outboxv1.Connector{ConnectorId: "haengt", Host: hhost, Port: hport, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		RetryPattern: []*durationpb.Duration{durationpb.New(time.Hour)}})

	on := func(connector, subject string, sendAt time.Time) *outboxv1.Email {
		req := email("eva@kanzlei.example", "client@example.com", subject)
		req.ConnectorId = connector
		if !sendAt.IsZero() {
			req.SendAt = timestamppb.New(sendAt)
		}
		return e.submit(eva, req)
	}
	held := on("alt", "Gehalten", time.Time{})
	later := on("alt", "Spaeter", time.Now().Add(time.Hour))
	stuck := on("haengt", "Haengt", time.Time{})
	e.waitStatus(eva, held.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_CONNECTOR_DISABLED)
	e.waitStatus(eva, stuck.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENDING)
	byConnector := func(id string) *outboxv1.Selection {
		return &outboxv1.Selection{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{ConnectorId: id}}
	}
	get := func(id string) *outboxv1.Email {
		t.Helper()
		r, err := e.outbox.GetEmail(admin, &outboxv1.GetEmailRequest{EmailId: id})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetEmail()
	}

	laterDue := get(later.GetEmailId()).GetNextAttemptTime().AsTime() // as stored: rounded up to the millisecond

	t.Run("only admins move mail", func(t *testing.T) {
		_, err := e.outbox.MoveEmails(eva, &outboxv1.MoveEmailsRequest{Selection: byConnector("alt"), ConnectorId: "default"})
		code(t, err, codes.PermissionDenied)
	})
	t.Run("an unknown target is refused", func(t *testing.T) {
		_, err := e.outbox.MoveEmails(admin, &outboxv1.MoveEmailsRequest{Selection: byConnector("alt"), ConnectorId: "nirgendwo"})
		code(t, err, codes.FailedPrecondition)
		_, err = e.outbox.MoveEmails(admin, &outboxv1.MoveEmailsRequest{Selection: byConnector("alt")})
		code(t, err, codes.InvalidArgument)
	})
	t.Run("mail being sent is refused per email", func(t *testing.T) {
		r, err := e.outbox.MoveEmails(admin, &outboxv1.MoveEmailsRequest{Selection: byConnector("haengt"), ConnectorId: "default"})
		if err != nil {
			t.Fatal(err)
		}
		f := r.GetResult().GetFailures()
		if r.GetResult().GetMatched() != 1 || r.GetResult().GetSucceeded() != 0 || len(f) != 1 || f[0].GetEmailId() != stuck.GetEmailId() || f[0].GetCode() != int32(codes.FailedPrecondition) {
			t.Fatalf("move of mail in SENDING = %v", r.GetResult())
		}
		if got := get(stuck.GetEmailId()); got.GetConnectorId() != "haengt" || got.GetStatus() != outboxv1.EmailStatus_EMAIL_STATUS_SENDING {
			t.Errorf("after the refused move: %s on %s", got.GetStatus(), got.GetConnectorId())
		}
	})
	t.Run("moved by filter, held mail leaves through the new connector once", func(t *testing.T) {
		r, err := e.outbox.MoveEmails(admin, &outboxv1.MoveEmailsRequest{Selection: byConnector("alt"), ConnectorId: "default"})
		if err != nil || r.GetResult().GetMatched() != 2 || r.GetResult().GetSucceeded() != 2 {
			t.Fatalf("move = %v (%v), want both of alt's emails moved", r.GetResult(), err)
		}
		h := header(t, messageFor(t, e.sink, "Gehalten"))
		if h.Get("Message-Id") != "<"+held.GetMessageId()+">" {
			t.Errorf("Message-ID %q, want <%s>", h.Get("Message-Id"), held.GetMessageId())
		}
		got := e.waitStatus(eva, held.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)
		if got.GetConnectorId() != "default" || got.GetAttemptCount() != 1 {
			t.Errorf("sent %v, want one attempt through default", got)
		}
	})
	t.Run("scheduled mail keeps its status and due time", func(t *testing.T) {
		got := get(later.GetEmailId())
		if got.GetStatus() != outboxv1.EmailStatus_EMAIL_STATUS_SCHEDULED || got.GetConnectorId() != "default" ||
			!got.GetNextAttemptTime().AsTime().Equal(laterDue) {
			t.Errorf("moved %s on %s due %v, want SCHEDULED on default due %v", got.GetStatus(), got.GetConnectorId(), got.GetNextAttemptTime().AsTime(), laterDue)
		}
	})
	t.Run("EmailStatusChanged carries the new connector", func(t *testing.T) {
		cons, err := e.js.OrderedConsumer(context.Background(), "POSTAMT_OUTBOX", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"postamt.outbox.v1.EmailStatusChanged"}})
		if err != nil {
			t.Fatal(err)
		}
		poll.Eventually(t, "the move's event", func() bool {
			msgs, err := cons.FetchNoWait(100)
			if err != nil {
				return false
			}
			found := false
			for m := range msgs.Messages() {
				var ev outboxv1.EmailStatusChanged
				if err := proto.Unmarshal(m.Data(), &ev); err != nil {
					t.Fatal(err)
				}
				em := ev.GetEmail()
				if em.GetEmailId() == later.GetEmailId() && em.GetConnectorId() == "default" && ev.GetPreviousStatus() == outboxv1.EmailStatus_EMAIL_STATUS_SCHEDULED {
					found = true
				}
			}
			return found
		})
	})
	t.Run("the emptied connector can be deleted; one in use cannot", func(t *testing.T) {
		if _, err := e.outbox.DeleteConnector(admin, &outboxv1.DeleteConnectorRequest{ConnectorId: "alt"}); err != nil {
			t.Fatalf("delete alt: %v", err)
		}
		_, err := e.outbox.DeleteConnector(admin, &outboxv1.DeleteConnectorRequest{ConnectorId: "haengt"})
		code(t, err, codes.FailedPrecondition)
	})
	t.Run("after the hang, failed mail moves, keeps its attempt and is retried through the new connector", func(t *testing.T) {
		hanging.Close() // the connection is lost after the final dot: held FAILED, may have been sent
		failed := e.waitStatus(admin, stuck.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_FAILED)
		for range 2 { // the second request finds it on the target already: a no-op that succeeds
			r, err := e.outbox.MoveEmails(admin, &outboxv1.MoveEmailsRequest{Selection: &outboxv1.Selection{EmailIds: []string{stuck.GetEmailId()}}, ConnectorId: "default"})
			if err != nil || r.GetResult().GetSucceeded() != 1 || len(r.GetResult().GetFailures()) != 0 {
				t.Fatalf("move = %v (%v)", r.GetResult(), err)
			}
		}
		got := get(stuck.GetEmailId())
		if got.GetStatus() != outboxv1.EmailStatus_EMAIL_STATUS_FAILED || got.GetConnectorId() != "default" || got.GetAttemptCount() != failed.GetAttemptCount() || got.GetLastError() != failed.GetLastError() {
			t.Fatalf("moved %v, want FAILED on default as before", got)
		}
		if _, err := e.outbox.DeleteConnector(admin, &outboxv1.DeleteConnectorRequest{ConnectorId: "haengt"}); err != nil {
			t.Fatalf("delete haengt: %v", err)
		}
		r, err := e.outbox.Retry(admin, &outboxv1.RetryRequest{Selection: &outboxv1.Selection{EmailIds: []string{stuck.GetEmailId()}}, IncludeMayHaveBeenSent: true})
		if err != nil || r.GetResult().GetSucceeded() != 1 {
			t.Fatalf("retry = %v (%v)", r.GetResult(), err)
		}
		h := header(t, messageFor(t, e.sink, "Haengt"))
		if h.Get("Message-Id") != "<"+stuck.GetMessageId()+">" {
			t.Errorf("Message-ID %q, want <%s>", h.Get("Message-Id"), stuck.GetMessageId())
		}
		e.waitStatus(admin, stuck.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)
	})
	t.Run("each email reached the working relay once", func(t *testing.T) {
		for _, m := range []*outboxv1.Email{held, stuck} {
			if n := copies(t, e.sink, m); n != 1 {
				t.Errorf("%s: %d copies", m.GetSubject(), n)
			}
		}
		if n := copies(t, e.sink, later); n != 0 {
			t.Errorf("scheduled mail sent early: %d copies", n)
		}
	})
}

// hostPort is where a sink listens, as a connector names it.
func hostPort(s *smtptest.Sink) (string, int32) {
	host, port, _ := net.SplitHostPort(s.Addr())
	p, _ := strconv.Atoi(port)
	return host, int32(p)
}
