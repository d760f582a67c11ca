package app_test

import (
	"bytes"
	"context"
	"fmt"
	"net/mail"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/app"
)

func email(from, to, subject string) *outboxv1.SubmitEmailRequest {
	return &outboxv1.SubmitEmailRequest{FromAddress: from, To: []string{to}, Subject: subject, TextBody: "Guten Tag,\r\nanbei die Unterlagen.\r\n"}
}

func header(t *testing.T, m smtptest.Message) mail.Header {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	if err != nil {
		t.Fatal(err)
	}
	return msg.Header
}

func messageFor(t *testing.T, sink *smtptest.Sink, subject string) smtptest.Message {
	t.Helper()
	var found smtptest.Message
	poll.Eventually(t, "message "+subject+" at the sink", func() bool {
		for _, m := range sink.Messages() {
			if strings.Contains(string(m.Data), "Subject: "+subject) {
				found = m
				return true
			}
		}
		return false
	})
	return found
}

func code(t *testing.T, err error, want codes.Code) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != want {
		t.Fatalf("err = %v, want %s", err, want)
	}
	return st
}

func fields(st *status.Status) []string {
	var out []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, v.GetField())
			}
		}
	}
	return out
}

// TestSendAsAndOnBehalfEndToEnd: submit over gRPC → delivered to the sink with the headers of
// the send mode → EmailSent on JetStream → in the sent view of every member of the mailbox.
func TestSendAsAndOnBehalfEndToEnd(t *testing.T) {
	e := startEnv(t)
	martina, max := e.as("martina", []string{"empfang"}), e.as("max", []string{"empfang"})

	withRecord := email("info@kanzlei.example", "client@example.com", "Ihre Akte 4711")
	withRecord.RegardingRecordId = "akte-4711"
	sentAs := e.submit(martina, withRecord)
	onBehalf := e.submit(max, email("info@kanzlei.example", "client@example.com", "Termin am Montag"))

	h := header(t, messageFor(t, e.sink, "Ihre Akte 4711"))
	if h.Get("From") != `"Kanzlei Muster" <info@kanzlei.example>` || h.Get("Sender") != "" {
		t.Errorf("send-as headers: From %q Sender %q", h.Get("From"), h.Get("Sender"))
	}
	if h.Get("Message-Id") != "<"+sentAs.GetMessageId()+">" {
		t.Errorf("Message-ID %q, want <%s>", h.Get("Message-Id"), sentAs.GetMessageId())
	}
	h = header(t, messageFor(t, e.sink, "Termin am Montag"))
	if h.Get("From") != `"Kanzlei Muster" <info@kanzlei.example>` || h.Get("Sender") != `"Max Mustermann" <max@kanzlei.example>` {
		t.Errorf("on-behalf headers: From %q Sender %q", h.Get("From"), h.Get("Sender"))
	}

	got := e.waitStatus(martina, sentAs.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)
	if got.GetAttemptCount() != 1 || len(got.GetAttempts()) != 1 || got.GetAttempts()[0].GetSmtpCode() != 250 || got.GetSentTime() == nil {
		t.Errorf("sent email %v", got)
	}

	t.Run("EmailSent is on JetStream", func(t *testing.T) {
		cons, err := e.js.OrderedConsumer(context.Background(), "POSTAMT_OUTBOX", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"postamt.outbox.v1.EmailSent"}})
		if err != nil {
			t.Fatal(err)
		}
		modes, records := map[string]outboxv1.SendMode{}, map[string]string{}
		poll.Eventually(t, "two EmailSent events", func() bool {
			msgs, err := cons.FetchNoWait(10)
			if err != nil {
				return false
			}
			for m := range msgs.Messages() {
				var ev outboxv1.EmailSent
				if err := proto.Unmarshal(m.Data(), &ev); err != nil {
					t.Fatal(err)
				}
				modes[ev.GetEmailId()] = ev.GetMode()
				records[ev.GetEmailId()] = ev.GetRegardingRecordId()
			}
			return len(modes) == 2
		})
		if modes[sentAs.GetEmailId()] != outboxv1.SendMode_SEND_MODE_SEND_AS || modes[onBehalf.GetEmailId()] != outboxv1.SendMode_SEND_MODE_ON_BEHALF {
			t.Errorf("modes %v", modes)
		}
		// The tracker tracks mail regarding a record as CRM email (issue 15).
		if records[sentAs.GetEmailId()] != "akte-4711" || records[onBehalf.GetEmailId()] != "" {
			t.Errorf("regarding records %v, want akte-4711 for %s only", records, sentAs.GetEmailId())
		}
	})
	t.Run("in the sent view of those who may read it", func(t *testing.T) {
		// martina reads info (RIGHT_READ): both; max only sends on behalf: his own.
		for user, want := range map[string]int{"martina": 2, "max": 1} {
			poll.Eventually(t, "the sent view of "+user, func() bool {
				r, err := e.mailbox.ListSentItems(e.admin(), &mailboxv1.ListSentItemsRequest{UserId: user})
				return err == nil && len(r.GetItems()) == want
			})
		}
		r, err := e.mailbox.ListSentItems(e.admin(), &mailboxv1.ListSentItemsRequest{UserId: "eva"})
		if err != nil || len(r.GetItems()) != 0 {
			t.Errorf("eva, no member, sees %v (%v)", r.GetItems(), err)
		}
	})
}

func TestSubmitRefusals(t *testing.T) {
	e := startEnv(t)
	eva := e.as("eva", nil)
	ctx := context.Background()
	_ = ctx

	t.Run("a sender without the right is refused", func(t *testing.T) {
		_, err := e.outbox.SubmitEmail(eva, email("info@kanzlei.example", "client@example.com", "x"))
		code(t, err, codes.PermissionDenied)
	})
	t.Run("CR or LF in a header field names the field", func(t *testing.T) {
		req := email("eva@kanzlei.example", "client@example.com", "Hallo\r\nBcc: victim@example.com")
		req.Cc = []string{"a@example.com\r\nX: y"}
		st := code(t, func() error { _, err := e.outbox.SubmitEmail(eva, req); return err }(), codes.InvalidArgument)
		if f := fields(st); !slices.Contains(f, "subject") || !slices.Contains(f, "cc[0]") {
			t.Errorf("violations %v", f)
		}
	})
	t.Run("no recipients", func(t *testing.T) {
		req := email("eva@kanzlei.example", "client@example.com", "x")
		req.To = nil
		st := code(t, func() error { _, err := e.outbox.SubmitEmail(eva, req); return err }(), codes.InvalidArgument)
		if f := fields(st); !slices.Contains(f, "to") {
			t.Errorf("violations %v", f)
		}
	})
	t.Run("too many recipients", func(t *testing.T) {
		req := email("eva@kanzlei.example", "client@example.com", "x")
		for i := range 60 {
			req.Bcc = append(req.Bcc, fmt.Sprintf("c%d@example.com", i))
		}
		// The caller's input to fix, not a quota to wait for: INVALID_ARGUMENT naming the list
		// that passed the limit (RESOURCE_EXHAUSTED would be retried as HTTP 429).
		st := code(t, func() error { _, err := e.outbox.SubmitEmail(eva, req); return err }(), codes.InvalidArgument)
		if f := fields(st); !slices.Contains(f, "bcc") {
			t.Errorf("violations %v", f)
		}
	})
	t.Run("an oversize message", func(t *testing.T) {
		req := email("eva@kanzlei.example", "client@example.com", "x")
		req.Attachments = []*outboxv1.Attachment{{Filename: "gross.bin", Content: make([]byte, 2<<20)}}
		st := code(t, func() error { _, err := e.outbox.SubmitEmail(eva, req); return err }(), codes.ResourceExhausted)
		var reason string
		for _, d := range st.Details() {
			if ei, ok := d.(*errdetails.ErrorInfo); ok {
				reason = ei.GetReason()
			}
		}
		if reason != "MESSAGE_SIZE" {
			t.Errorf("ErrorInfo reason %q, want MESSAGE_SIZE", reason)
		}
	})
	t.Run("send_at in the past or beyond the horizon", func(t *testing.T) {
		for _, at := range []time.Time{time.Now().Add(-time.Hour), time.Now().Add(365 * 24 * time.Hour)} {
			req := email("eva@kanzlei.example", "client@example.com", "x")
			req.SendAt = timestamppb.New(at)
			st := code(t, func() error { _, err := e.outbox.SubmitEmail(eva, req); return err }(), codes.InvalidArgument)
			if f := fields(st); !slices.Contains(f, "send_at") {
				t.Errorf("violations %v", f)
			}
		}
	})
	t.Run("an unknown connector", func(t *testing.T) {
		req := email("eva@kanzlei.example", "client@example.com", "x")
		req.ConnectorId = "nirgendwo"
		code(t, func() error { _, err := e.outbox.SubmitEmail(eva, req); return err }(), codes.FailedPrecondition)
	})
	t.Run("system-generated is for services", func(t *testing.T) {
		req := email("eva@kanzlei.example", "client@example.com", "x")
		req.SystemGenerated = true
		code(t, func() error { _, err := e.outbox.SubmitEmail(eva, req); return err }(), codes.PermissionDenied)
	})
	t.Run("nothing was written", func(t *testing.T) {
		r, err := e.outbox.CountEmails(e.admin(), &outboxv1.CountEmailsRequest{View: outboxv1.View_VIEW_ALL})
		if err != nil || r.GetTotal() != 0 {
			t.Errorf("count after refusals = %v (%v)", r, err)
		}
		if n := len(e.sink.Messages()); n != 0 {
			t.Errorf("%d messages sent", n)
		}
	})
}

func TestIdempotentSubmit(t *testing.T) {
	e := startEnv(t)
	eva := e.as("eva", nil)
	req := email("eva@kanzlei.example", "client@example.com", "Einmal")
	req.IdempotencyKey = "crm-4711"
	first := e.submit(eva, req)
	second := e.submit(eva, req)
	if first.GetEmailId() != second.GetEmailId() {
		t.Fatalf("ids %s and %s", first.GetEmailId(), second.GetEmailId())
	}
	e.waitStatus(eva, first.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)
	third := e.submit(eva, req)
	if third.GetEmailId() != first.GetEmailId() {
		t.Errorf("after sending, the key gave a new email %s", third.GetEmailId())
	}
	time.Sleep(100 * time.Millisecond) // nothing more may arrive; a second copy would by now
	if n := len(e.sink.Messages()); n != 1 {
		t.Errorf("%d copies sent", n)
	}
}

// TestUndoSendNowCancelReschedule: the undo delay from the user's settings holds mail in
// QUEUED; cancel within it sends nothing; send now skips it; a schedule can be moved.
func TestUndoSendNowCancelReschedule(t *testing.T) {
	e := startEnv(t)
	eva := e.as("eva", nil)
	_, err := e.outbox.UpdateUserSettings(eva, &outboxv1.UpdateUserSettingsRequest{
		Settings:   &outboxv1.UserSettings{UndoDelay: durationpb.New(5 * time.Minute)},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"undo_delay"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	undone := e.submit(eva, email("eva@kanzlei.example", "client@example.com", "Doch nicht"))
	now := e.submit(eva, email("eva@kanzlei.example", "client@example.com", "Sofort"))
	for _, m := range []*outboxv1.Email{undone, now} {
		if m.GetStatus() != outboxv1.EmailStatus_EMAIL_STATUS_QUEUED || m.GetNextAttemptTime().AsTime().Before(time.Now().Add(4*time.Minute)) {
			t.Fatalf("submitted %v, want QUEUED for five minutes", m)
		}
	}
	// An id listed twice is one email: matched once, cancelled once, nothing refused.
	r, err := e.outbox.Cancel(eva, &outboxv1.CancelRequest{Selection: &outboxv1.Selection{EmailIds: []string{undone.GetEmailId(), undone.GetEmailId()}}})
	if err != nil || r.GetResult().GetSucceeded() != 1 || r.GetResult().GetMatched() != 1 || len(r.GetResult().GetFailures()) != 0 {
		t.Fatalf("cancel = %v, %v; want one matched and cancelled", r, err)
	}
	sn, err := e.outbox.SendNow(eva, &outboxv1.SendNowRequest{Selection: &outboxv1.Selection{EmailIds: []string{now.GetEmailId(), undone.GetEmailId()}}})
	if err != nil {
		t.Fatal(err)
	}
	if sn.GetResult().GetSucceeded() != 1 || len(sn.GetResult().GetFailures()) != 1 || sn.GetResult().GetFailures()[0].GetCode() != int32(codes.FailedPrecondition) {
		t.Errorf("send now = %v, want one done and the cancelled one refused", sn.GetResult())
	}
	messageFor(t, e.sink, "Sofort")
	if got := e.waitStatus(eva, undone.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED); got.GetCancelTime() == nil {
		t.Errorf("cancelled email %v", got)
	}

	t.Run("reschedule", func(t *testing.T) {
		req := email("eva@kanzlei.example", "client@example.com", "Spaeter")
		req.SendAt = timestamppb.New(time.Now().Add(24 * time.Hour))
		m := e.submit(eva, req)
		if m.GetStatus() != outboxv1.EmailStatus_EMAIL_STATUS_SCHEDULED || m.GetScheduledByUserId() != "eva" {
			t.Fatalf("scheduled %v", m)
		}
		at := time.Now().Add(48 * time.Hour).Truncate(time.Millisecond)
		r, err := e.outbox.Reschedule(eva, &outboxv1.RescheduleRequest{Selection: &outboxv1.Selection{EmailIds: []string{m.GetEmailId()}}, SendAt: timestamppb.New(at)})
		if err != nil || r.GetResult().GetSucceeded() != 1 {
			t.Fatalf("reschedule = %v, %v", r, err)
		}
		got, _ := e.outbox.GetEmail(eva, &outboxv1.GetEmailRequest{EmailId: m.GetEmailId()})
		if !got.GetEmail().GetNextAttemptTime().AsTime().Equal(at) || !got.GetEmail().GetSendAt().AsTime().Equal(at) {
			t.Errorf("next attempt %v, send_at %v, want both %v", got.GetEmail().GetNextAttemptTime().AsTime(), got.GetEmail().GetSendAt().AsTime(), at)
		}
		// Another person reschedules it: send_at and who scheduled it are the last reschedule's.
		later := at.Add(time.Hour)
		if r, err := e.outbox.Reschedule(e.admin(), &outboxv1.RescheduleRequest{Selection: &outboxv1.Selection{EmailIds: []string{m.GetEmailId()}}, SendAt: timestamppb.New(later)}); err != nil || r.GetResult().GetSucceeded() != 1 {
			t.Fatalf("reschedule by admin = %v, %v", r, err)
		}
		got, _ = e.outbox.GetEmail(eva, &outboxv1.GetEmailRequest{EmailId: m.GetEmailId()})
		if !got.GetEmail().GetSendAt().AsTime().Equal(later) || got.GetEmail().GetScheduledByUserId() != "admin" {
			t.Errorf("after the admin's reschedule: send_at %v by %q, want %v by admin", got.GetEmail().GetSendAt().AsTime(), got.GetEmail().GetScheduledByUserId(), later)
		}
	})
	t.Run("reschedule queued mail", func(t *testing.T) {
		m := e.submit(eva, email("eva@kanzlei.example", "client@example.com", "In der Warteschlange"))
		if m.GetStatus() != outboxv1.EmailStatus_EMAIL_STATUS_QUEUED || m.GetSendAt() != nil {
			t.Fatalf("submitted %v, want QUEUED without send_at", m)
		}
		at := time.Now().Add(2 * time.Hour).Truncate(time.Millisecond)
		if r, err := e.outbox.Reschedule(eva, &outboxv1.RescheduleRequest{Selection: &outboxv1.Selection{EmailIds: []string{m.GetEmailId()}}, SendAt: timestamppb.New(at)}); err != nil || r.GetResult().GetSucceeded() != 1 {
			t.Fatalf("reschedule = %v, %v", r, err)
		}
		got, _ := e.outbox.GetEmail(eva, &outboxv1.GetEmailRequest{EmailId: m.GetEmailId()})
		g := got.GetEmail()
		if g.GetStatus() != outboxv1.EmailStatus_EMAIL_STATUS_SCHEDULED || !g.GetSendAt().AsTime().Equal(at) || g.GetScheduledByUserId() != "eva" {
			t.Errorf("after rescheduling queued mail: %s, send_at %v by %q; want SCHEDULED at %v by eva", g.GetStatus(), g.GetSendAt(), g.GetScheduledByUserId(), at)
		}
	})
}

// TestSendRightCacheFollowsMailboxChanges: with answers cached for an hour, a right granted or
// taken away in mailbox reaches the outbox through mailbox's events, not the TTL.
func TestSendRightCacheFollowsMailboxChanges(t *testing.T) {
	e := startEnv(t, func(c *app.Config) { c.DirectoryCacheTTL = time.Hour })
	eva := e.as("eva", nil)
	submit := func() error {
		_, err := e.outbox.SubmitEmail(eva, email("info@kanzlei.example", "client@example.com", "Von info"))
		return err
	}
	code(t, submit(), codes.PermissionDenied) // cached now
	if _, err := e.mailbox.AddMember(e.admin(), &mailboxv1.AddMemberRequest{MailboxId: "info", UserId: "eva", Rights: []mailboxv1.Right{mailboxv1.Right_RIGHT_SEND_AS}}); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, "the granted right to reach the outbox", func() bool { return submit() == nil })
	if _, err := e.mailbox.RemoveMember(e.admin(), &mailboxv1.RemoveMemberRequest{MailboxId: "info", UserId: "eva"}); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, "the removed right to reach the outbox", func() bool { return status.Code(submit()) == codes.PermissionDenied })
}
