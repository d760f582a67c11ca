package app_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/testkit/smtptest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// watch starts a WatchEmails stream as ctx and returns its emails; the watch is in place when it
// returns (its header came), so changes made after it are seen.
func (e *env) watch(ctx context.Context, req *outboxv1.WatchEmailsRequest) <-chan *outboxv1.Email {
	return watchAs(e, ctx, req, (*outboxv1.WatchEmailsResponse).GetEmail)
}

// watchAs is watch with each response turned into a T.
func watchAs[T any](e *env, ctx context.Context, req *outboxv1.WatchEmailsRequest, as func(*outboxv1.WatchEmailsResponse) T) <-chan T {
	e.t.Helper()
	stream, err := e.outbox.WatchEmails(ctx, req)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		e.t.Fatal(err)
	}
	got := make(chan T, 64)
	go func() {
		defer close(got)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			got <- as(r)
		}
	}()
	return got
}

// until reads a watch until an email with id reaches status, and returns what it saw of that
// email on the way.
func until(t *testing.T, got <-chan *outboxv1.Email, id string, status outboxv1.EmailStatus) []*outboxv1.Email {
	t.Helper()
	var seen []*outboxv1.Email
	timeout := time.After(20 * time.Second)
	for {
		select {
		case em, ok := <-got:
			if !ok {
				t.Fatalf("watch ended; saw %v", seen)
			}
			if em.GetEmailId() != id {
				continue
			}
			seen = append(seen, em)
			if em.GetStatus() == status {
				return seen
			}
		case <-timeout:
			t.Fatalf("watch: %s never reached %s; saw %v", id, status, seen)
		}
	}
}

// TestBccOnlyForSenderAndAdmins: a colleague who may read an email (its team's lead, a member of
// its shared mailbox) never sees its Bcc — not in GetEmail, ListEmails of any view, WatchEmails
// or the submit answer of a repeated idempotency key — and cannot find it by searching a Bcc
// address; the sender, admins and services see it.
func TestBccOnlyForSenderAndAdmins(t *testing.T) {
	e := startEnv(t)
	e.holdAll("max", "martina")
	max, martina := e.as("max", nil), e.as("martina", nil)
	watch := e.watch(martina, &outboxv1.WatchEmailsRequest{View: outboxv1.View_VIEW_ALL})
	req := email("info@kanzlei.example", "mandant@example.com", "Vergleichsangebot")
	req.Bcc = []string{"geheim@anwalt.example"}
	req.IdempotencyKey = "vergleich-1"
	m := e.submit(max, req)
	if !slices.Equal(m.GetBcc(), req.Bcc) {
		t.Fatalf("the sender's submit answer: bcc %v", m.GetBcc())
	}

	for _, who := range []struct {
		name string
		ctx  context.Context
		sees bool
	}{{"max (sender)", max, true}, {"admin", e.admin(), true}, {"service", e.service(), true}, {"martina (lead, member of info)", martina, false}} {
		t.Run(who.name, func(t *testing.T) {
			want := 0
			if who.sees {
				want = 1
			}
			r, err := e.outbox.GetEmail(who.ctx, &outboxv1.GetEmailRequest{EmailId: m.GetEmailId()})
			if err != nil {
				t.Fatal(err)
			}
			if len(r.GetEmail().GetBcc()) != want {
				t.Errorf("GetEmail bcc %v", r.GetEmail().GetBcc())
			}
			for _, v := range []outboxv1.View{outboxv1.View_VIEW_MINE, outboxv1.View_VIEW_TEAM, outboxv1.View_VIEW_ALL} {
				for _, l := range e.list(who.ctx, v, nil) {
					if l.GetEmailId() == m.GetEmailId() && len(l.GetBcc()) != want {
						t.Errorf("%s bcc %v", v, l.GetBcc())
					}
				}
			}
			found := e.list(who.ctx, outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{Text: "geheim@"})
			if len(found) != want {
				t.Errorf("text search for the Bcc address found %d emails, want %d", len(found), want)
			}
			if found := e.list(who.ctx, outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{Text: "mandant@"}); len(found) != 1 {
				t.Errorf("text search for the To address found %d emails", len(found))
			}
		})
	}
	t.Run("a repeated idempotency key answers without Bcc to a colleague", func(t *testing.T) {
		again := email("info@kanzlei.example", "mandant@example.com", "Vergleichsangebot")
		again.IdempotencyKey = "vergleich-1"
		r, err := e.outbox.SubmitEmail(martina, again)
		if err != nil {
			t.Fatal(err)
		}
		if r.GetEmail().GetEmailId() != m.GetEmailId() || len(r.GetEmail().GetBcc()) != 0 {
			t.Errorf("answer %v", r.GetEmail())
		}
	})
	t.Run("the watch of a colleague", func(t *testing.T) {
		seen := until(t, watch, m.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_QUEUED)
		if len(seen[0].GetBcc()) != 0 {
			t.Errorf("watch shows bcc %v", seen[0].GetBcc())
		}
	})
}

// TestTeamViewsFromTheDirectory: team membership and leadership come from mailbox's teams, not
// the token: a lead whose token has no teams claim sees the team's mail, a member's mail is in
// the team view whatever their token says, and a token naming a team narrows the view to it but
// cannot add a team the directory does not give.
func TestTeamViewsFromTheDirectory(t *testing.T) {
	e := startEnv(t)
	e.holdAll("max", "martina", "eva")
	fromMax := e.submit(e.as("max", nil), email("max@kanzlei.example", "a@example.com", "Max ohne Teams im Token"))
	e.submit(e.as("eva", []string{"empfang"}), email("eva@kanzlei.example", "b@example.com", "Eva behauptet Empfang"))
	for _, tc := range []struct {
		name string
		ctx  context.Context
		want []string
	}{
		{"martina, lead, token without teams", e.as("martina", nil), []string{fromMax.GetEmailId()}},
		{"martina, token naming her team", e.as("martina", []string{"empfang"}), []string{fromMax.GetEmailId()}},
		{"martina, token narrowed to another team", e.as("martina", []string{"buchhaltung"}), nil},
		{"eva, token claiming a team she is not in", e.as("eva", []string{"empfang"}), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ids(e.list(tc.ctx, outboxv1.View_VIEW_TEAM, nil)); !slices.Equal(got, tc.want) {
				t.Errorf("TEAM %v, want %v", got, tc.want)
			}
		})
	}
	r, err := e.outbox.ListEmails(e.as("martina", nil), &outboxv1.ListEmailsRequest{})
	if err != nil || r.GetView() != outboxv1.View_VIEW_TEAM {
		t.Errorf("martina's first view %v (%v), want TEAM", r.GetView(), err)
	}
}

// TestMayHaveBeenSent: mail whose connection dropped after the final dot is held FAILED and marked
// as possibly sent, found by the filter; a bulk retry by filter leaves it alone and says why, a
// retry that asks for it sends it again and clears the mark.
func TestMayHaveBeenSent(t *testing.T) {
	e := startEnv(t)
	eva := e.as("eva", nil)
	e.sink.SetBehavior(smtptest.Drop)
	dropped := e.submit(eva, email("eva@kanzlei.example", "client@example.com", "Vielleicht zugestellt"))
	got := e.waitStatus(eva, dropped.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_FAILED)
	if !got.GetMayHaveBeenSent() || got.GetAttempts()[0].GetOutcome() != outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_UNKNOWN {
		t.Fatalf("after a drop: %v", got)
	}
	e.sink.SetBehavior(smtptest.PermFailRcpt)
	refused := e.submit(eva, email("eva@kanzlei.example", "unknown@example.com", "Abgelehnt"))
	if got := e.waitStatus(eva, refused.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_FAILED); got.GetMayHaveBeenSent() {
		t.Fatalf("a 550 marked as possibly sent: %v", got)
	}
	e.sink.SetBehavior(smtptest.Accept)

	if got := ids(e.list(eva, outboxv1.View_VIEW_MINE, &outboxv1.EmailFilter{MayHaveBeenSent: true})); !slices.Equal(got, []string{dropped.GetEmailId()}) {
		t.Errorf("filter may_have_been_sent: %v", got)
	}
	failedFilter := &outboxv1.Selection{View: outboxv1.View_VIEW_MINE, Filter: &outboxv1.EmailFilter{Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_FAILED}}}
	r, err := e.outbox.Retry(eva, &outboxv1.RetryRequest{Selection: failedFilter})
	if err != nil {
		t.Fatal(err)
	}
	res := r.GetResult()
	if res.GetMatched() != 2 || res.GetSucceeded() != 1 || len(res.GetFailures()) != 1 ||
		res.GetFailures()[0].GetEmailId() != dropped.GetEmailId() || res.GetFailures()[0].GetCode() != int32(codes.FailedPrecondition) ||
		!strings.Contains(res.GetFailures()[0].GetMessage(), "twice") {
		t.Fatalf("bulk retry by filter: %v", res)
	}
	if still, _ := e.outbox.GetEmail(eva, &outboxv1.GetEmailRequest{EmailId: dropped.GetEmailId()}); still.GetEmail().GetVersion() != got.GetVersion() {
		t.Fatalf("the bulk retry changed the possibly sent email: %v", still.GetEmail())
	}
	r, err = e.outbox.Retry(eva, &outboxv1.RetryRequest{Selection: &outboxv1.Selection{EmailIds: []string{dropped.GetEmailId()}}})
	if err != nil || r.GetResult().GetSucceeded() != 0 || r.GetResult().GetFailures()[0].GetCode() != int32(codes.FailedPrecondition) {
		t.Fatalf("single retry without the flag: %v (%v)", r, err)
	}
	r, err = e.outbox.Retry(eva, &outboxv1.RetryRequest{Selection: &outboxv1.Selection{EmailIds: []string{dropped.GetEmailId()}}, IncludeMayHaveBeenSent: true})
	if err != nil || r.GetResult().GetSucceeded() != 1 {
		t.Fatalf("retry with the flag: %v (%v)", r, err)
	}
	sent := e.waitStatus(eva, dropped.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)
	if sent.GetMayHaveBeenSent() || sent.GetAttemptCount() != 2 {
		t.Errorf("after the retry: %v", sent)
	}
}

// TestManualAttemptsReadAsSuch: a person's retry waits in PENDING_RETRY with their name, the
// watch shows every state (SENDING included, versions one by one), the attempt is recorded as
// manual and by whom, the counts say automatic attempts used since the retry and retries made,
// and rows carry the connector's display name.
func TestManualAttemptsReadAsSuch(t *testing.T) {
	e := startEnv(t)
	eva := e.as("eva", nil)
	host, port := e.sinkHostPort()
	if _, err := e.outbox.CreateConnector(e.admin(), &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
		ConnectorId: "kanzlei-relay", DisplayName: "Relay der Kanzlei", Host: host, Port: port, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		RetryPattern: []*durationpb.Duration{durationpb.New(time.Hour)}, MaxAttempts: 1,
	}}); err != nil {
		t.Fatal(err)
	}
	e.sink.SetBehavior(smtptest.PermFailRcpt)
	req := email("eva@kanzlei.example", "client@example.com", "Von Hand wiederholt")
	req.ConnectorId = "kanzlei-relay"
	m := e.submit(eva, req)
	failed := e.waitStatus(eva, m.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_FAILED)
	if failed.GetLastAttemptManual() || failed.GetAttempts()[0].GetManual() || failed.GetAttemptsSinceRetry() != 1 || failed.GetManualRetryCount() != 0 {
		t.Fatalf("first attempt: %v", failed)
	}
	rows := e.list(eva, outboxv1.View_VIEW_MINE, nil)
	if len(rows) != 1 || rows[0].GetConnectorDisplayName() != "Relay der Kanzlei" {
		t.Errorf("list row: %v", rows)
	}
	later := email("eva@kanzlei.example", "client@example.com", "Noch nicht versucht")
	later.ConnectorId, later.SendAt = "kanzlei-relay", timestamppb.New(time.Now().Add(time.Hour))
	if fresh := e.submit(eva, later); fresh.GetMaxAttempts() != 1 || fresh.GetAttemptCount() != 0 || fresh.GetConnectorDisplayName() != "Relay der Kanzlei" {
		t.Errorf("mail not attempted yet: %v, want the connector's max_attempts and name", fresh)
	} else if _, err := e.outbox.Cancel(eva, &outboxv1.CancelRequest{Selection: &outboxv1.Selection{EmailIds: []string{fresh.GetEmailId()}}}); err != nil {
		t.Fatal(err)
	}

	// The relay holds its answers until the watch has shown SENDING, so the email is in SENDING
	// when the watch reads it, however fast the machine.
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	e.sink.SetHook(func(smtptest.Envelope) smtptest.Behavior { <-release; return smtptest.Accept })
	watch := e.watch(eva, &outboxv1.WatchEmailsRequest{View: outboxv1.View_VIEW_MINE})
	if r, err := e.outbox.Retry(eva, &outboxv1.RetryRequest{Selection: &outboxv1.Selection{EmailIds: []string{m.GetEmailId()}}}); err != nil || r.GetResult().GetSucceeded() != 1 {
		t.Fatalf("retry: %v (%v)", r, err)
	}
	seen := until(t, watch, m.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENDING)
	free()
	seen = append(seen, until(t, watch, m.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)...)
	var statuses []outboxv1.EmailStatus
	for i, s := range seen {
		statuses = append(statuses, s.GetStatus())
		if want := failed.GetVersion() + int64(i) + 1; s.GetVersion() != want {
			t.Errorf("watch: version %d at step %d, want %d (every state, in order): %v", s.GetVersion(), i, want, seen)
		}
	}
	if want := []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_PENDING_RETRY, outboxv1.EmailStatus_EMAIL_STATUS_SENDING, outboxv1.EmailStatus_EMAIL_STATUS_SENT}; !slices.Equal(statuses, want) {
		t.Errorf("watch statuses %v, want %v", statuses, want)
	}
	if p := seen[0]; !p.GetLastAttemptManual() || p.GetLastAttemptByUserId() != "eva" || p.GetNextAttemptTime() == nil {
		t.Errorf("waiting retry: %v", p)
	}
	r, err := e.outbox.GetEmail(eva, &outboxv1.GetEmailRequest{EmailId: m.GetEmailId()})
	if err != nil {
		t.Fatal(err)
	}
	got := r.GetEmail()
	a := got.GetAttempts()
	if len(a) != 2 || a[0].GetManual() || !a[1].GetManual() || a[1].GetTriggeredByUserId() != "eva" {
		t.Errorf("attempts %v", a)
	}
	if !got.GetLastAttemptManual() || got.GetLastAttemptByUserId() != "eva" || got.GetAttemptCount() != 2 ||
		got.GetAttemptsSinceRetry() != 1 || got.GetMaxAttempts() != 1 || got.GetManualRetryCount() != 1 {
		t.Errorf("after the manual attempt: %v", got)
	}
}
