package app_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

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

func ids(es []*outboxv1.Email) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.GetEmailId())
	}
	slices.Sort(out)
	return out
}

func sorted(s ...string) []string { slices.Sort(s); return s }

func (e *env) list(ctx context.Context, view outboxv1.View, f *outboxv1.EmailFilter) []*outboxv1.Email {
	e.t.Helper()
	var out []*outboxv1.Email
	tok := ""
	for {
		r, err := e.outbox.ListEmails(ctx, &outboxv1.ListEmailsRequest{View: view, Filter: f, PageSize: 2, PageToken: tok})
		if err != nil {
			e.t.Fatalf("list %s: %v", view, err)
		}
		out = append(out, r.GetEmails()...)
		if tok = r.GetNextPageToken(); tok == "" {
			return out
		}
	}
}

// holdAll gives every user five minutes of undo delay, so submitted mail stays in the outbox.
func (e *env) holdAll(users ...string) {
	e.t.Helper()
	for _, u := range users {
		_, err := e.outbox.UpdateUserSettings(e.admin(), &outboxv1.UpdateUserSettingsRequest{
			Settings: &outboxv1.UserSettings{UserId: u, UndoDelay: durationpb.New(5 * time.Minute)}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"undo_delay"}},
		})
		if err != nil {
			e.t.Fatal(err)
		}
	}
}

// TestViewsAndAccess: MINE, TEAM (by the sender's teams), ALL (mine, my teams', my mailboxes'),
// SYSTEM (system mail of my mailboxes; the tenant's for admins), the badge per view, and
// NotFound for mail outside the caller's access.
func TestViewsAndAccess(t *testing.T) {
	e := startEnv(t)
	e.holdAll("max", "martina", "eva")
	martina, max, eva := e.as("martina", []string{"empfang"}), e.as("max", []string{"empfang"}), e.as("eva", nil)
	fromMax := e.submit(max, email("max@kanzlei.example", "a@example.com", "Max privat"))
	fromMaxInfo := e.submit(max, email("info@kanzlei.example", "b@example.com", "Max fuer info"))
	fromMartina := e.submit(martina, email("martina@kanzlei.example", "c@example.com", "Martina"))
	fromEva := e.submit(eva, email("eva@kanzlei.example", "d@example.com", "Eva"))
	sysReq := email("info@kanzlei.example", "e@example.com", "Automatische Eingangsbestaetigung")
	sysReq.SystemGenerated = true
	sysReq.SendAt = timestamppb.New(time.Now().Add(time.Hour)) // services have no undo delay
	system := e.submit(e.service(), sysReq)

	for _, tc := range []struct {
		name string
		ctx  context.Context
		view outboxv1.View
		want []string
	}{
		{"max MINE", max, outboxv1.View_VIEW_MINE, sorted(fromMax.GetEmailId(), fromMaxInfo.GetEmailId())},
		{"martina TEAM", martina, outboxv1.View_VIEW_TEAM, sorted(fromMax.GetEmailId(), fromMaxInfo.GetEmailId(), fromMartina.GetEmailId())},
		{"martina ALL", martina, outboxv1.View_VIEW_ALL, sorted(fromMax.GetEmailId(), fromMaxInfo.GetEmailId(), fromMartina.GetEmailId(), system.GetEmailId())},
		{"martina SYSTEM", martina, outboxv1.View_VIEW_SYSTEM, []string{system.GetEmailId()}},
		{"eva ALL", eva, outboxv1.View_VIEW_ALL, []string{fromEva.GetEmailId()}},
		{"eva TEAM", eva, outboxv1.View_VIEW_TEAM, nil},
		{"eva SYSTEM", eva, outboxv1.View_VIEW_SYSTEM, nil},
		{"admin ALL", e.admin(), outboxv1.View_VIEW_ALL, sorted(fromMax.GetEmailId(), fromMaxInfo.GetEmailId(), fromMartina.GetEmailId(), fromEva.GetEmailId(), system.GetEmailId())},
		{"admin SYSTEM", e.admin(), outboxv1.View_VIEW_SYSTEM, []string{system.GetEmailId()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ids(e.list(tc.ctx, tc.view, nil)); !slices.Equal(got, tc.want) {
				t.Errorf("listed %v, want %v", got, tc.want)
			}
			c, err := e.outbox.CountEmails(tc.ctx, &outboxv1.CountEmailsRequest{View: tc.view})
			if err != nil || c.GetTotal() != int64(len(tc.want)) {
				t.Errorf("badge = %v (%v), want %d", c.GetTotal(), err, len(tc.want))
			}
		})
	}
	t.Run("first view: TEAM for a lead, MINE otherwise", func(t *testing.T) {
		for ctx, want := range map[context.Context]outboxv1.View{martina: outboxv1.View_VIEW_TEAM, max: outboxv1.View_VIEW_MINE} {
			r, err := e.outbox.ListEmails(ctx, &outboxv1.ListEmailsRequest{})
			if err != nil || r.GetView() != want {
				t.Errorf("default view %v (%v), want %v", r.GetView(), err, want)
			}
		}
	})
	t.Run("mail outside the caller's access is not found", func(t *testing.T) {
		_, err := e.outbox.GetEmail(eva, &outboxv1.GetEmailRequest{EmailId: fromMax.GetEmailId()})
		code(t, err, codes.NotFound)
		r, err := e.outbox.Cancel(eva, &outboxv1.CancelRequest{Selection: &outboxv1.Selection{EmailIds: []string{fromMax.GetEmailId()}}})
		if err != nil || r.GetResult().GetSucceeded() != 0 || r.GetResult().GetFailures()[0].GetCode() != int32(codes.NotFound) {
			t.Errorf("eva cancels max's mail: %v (%v)", r, err)
		}
		other := authtestOther(e)
		_, err = e.outbox.GetEmail(other, &outboxv1.GetEmailRequest{EmailId: fromEva.GetEmailId()})
		code(t, err, codes.NotFound)
	})
	t.Run("filters", func(t *testing.T) {
		got := ids(e.list(e.admin(), outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{Text: "INFO"}))
		if want := sorted(fromMaxInfo.GetEmailId()); !slices.Equal(got, want) {
			t.Errorf("text filter: %v, want %v", got, want)
		}
		got = ids(e.list(e.admin(), outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{MailboxId: "info"}))
		if want := sorted(fromMaxInfo.GetEmailId(), system.GetEmailId()); !slices.Equal(got, want) {
			t.Errorf("mailbox filter: %v, want %v", got, want)
		}
		got = ids(e.list(e.admin(), outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_FAILED}}))
		if len(got) != 0 {
			t.Errorf("status filter: %v", got)
		}
	})
	t.Run("bulk cancel by filter", func(t *testing.T) {
		r, err := e.outbox.Cancel(martina, &outboxv1.CancelRequest{Selection: &outboxv1.Selection{View: outboxv1.View_VIEW_TEAM, Filter: &outboxv1.EmailFilter{}}})
		if err != nil || r.GetResult().GetMatched() != 3 || r.GetResult().GetSucceeded() != 3 {
			t.Fatalf("bulk cancel = %v (%v)", r, err)
		}
		if got := ids(e.list(e.admin(), outboxv1.View_VIEW_ALL, nil)); !slices.Equal(got, sorted(fromEva.GetEmailId(), system.GetEmailId())) {
			t.Errorf("left after bulk cancel: %v", got)
		}
	})
	t.Run("mail about a work item my team works on", func(t *testing.T) {
		req := email("eva@kanzlei.example", "f@example.com", "Zum Ticket des Empfangs")
		req.WorkItem = &outboxv1.WorkItem{Id: "T-4711", Type: outboxv1.WorkItemType_WORK_ITEM_TYPE_TICKET, TeamId: "empfang"}
		about := e.submit(eva, req)
		for name, ctx := range map[string]context.Context{"martina": martina, "max": max} {
			if got := ids(e.list(ctx, outboxv1.View_VIEW_TEAM, nil)); !slices.Equal(got, []string{about.GetEmailId()}) {
				t.Errorf("%s TEAM: %v, want the work item's email", name, got)
			}
		}
		if got := ids(e.list(eva, outboxv1.View_VIEW_TEAM, nil)); len(got) != 0 {
			t.Errorf("eva TEAM: %v, want nothing (eva is in no team)", got)
		}
		req.WorkItem.TeamId = "bad\nteam"
		_, err := e.outbox.SubmitEmail(eva, req)
		code(t, err, codes.InvalidArgument)
	})
}

// TestSMTPOutcomes: each answer of the relay leads to its status, with the attempt recorded.
func TestSMTPOutcomes(t *testing.T) {
	e := startEnv(t)
	eva := e.as("eva", nil)
	// A pattern long enough that no retry comes due while the test runs on the real clock (the
	// pattern's timing is tested with an injected clock in internal/dispatch).
	host, port := e.sinkHostPort()
	if _, err := e.outbox.CreateConnector(e.admin(), &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
		ConnectorId: "langsam", Host: host, Port: port, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		RetryPattern: []*durationpb.Duration{durationpb.New(time.Hour)}, MaxAttempts: 3,
	}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		b    smtptest.Behavior
		want outboxv1.EmailStatus
		code int32
	}{
		{smtptest.ServiceUnavailable, outboxv1.EmailStatus_EMAIL_STATUS_PENDING_RETRY, 421},
		{smtptest.TempFailRcpt, outboxv1.EmailStatus_EMAIL_STATUS_PENDING_RETRY, 451},
		{smtptest.MailboxFull, outboxv1.EmailStatus_EMAIL_STATUS_PENDING_RETRY, 452},
		{smtptest.PermFailRcpt, outboxv1.EmailStatus_EMAIL_STATUS_FAILED, 550},
		{smtptest.MessageTooBig, outboxv1.EmailStatus_EMAIL_STATUS_FAILED, 552},
		{smtptest.PermFailData, outboxv1.EmailStatus_EMAIL_STATUS_FAILED, 554},
		{smtptest.Hang, outboxv1.EmailStatus_EMAIL_STATUS_FAILED, 0},
		{smtptest.Drop, outboxv1.EmailStatus_EMAIL_STATUS_FAILED, 0},
	} {
		t.Run(tc.b.String(), func(t *testing.T) {
			subject := "outcome " + tc.b.String()
			e.sink.SetHook(func(env smtptest.Envelope) smtptest.Behavior { return tc.b })
			req := email("eva@kanzlei.example", "client@example.com", subject)
			req.ConnectorId = "langsam"
			m := e.submit(eva, req)
			got := e.waitStatus(eva, m.GetEmailId(), tc.want)
			e.sink.SetHook(nil)
			if got.GetAttemptCount() != 1 || len(got.GetAttempts()) != 1 || got.GetAttempts()[0].GetSmtpCode() != tc.code || got.GetLastError() == "" || got.GetFirstFailureTime() == nil {
				t.Errorf("after %s: %v", tc.b, got)
			}
			if tc.want == outboxv1.EmailStatus_EMAIL_STATUS_PENDING_RETRY {
				// Due times round up to the millisecond (never early); attempt times are shown truncated.
				if d := got.GetNextAttemptTime().AsTime().Sub(got.GetLastAttemptTime().AsTime()); d < time.Hour || d > time.Hour+time.Millisecond {
					t.Errorf("next attempt %s after the last, want the pattern's 1h", d)
				}
			}
		})
	}
	t.Run("a manual retry sends failed mail", func(t *testing.T) {
		failed := e.list(e.admin(), outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_FAILED}})
		if len(failed) != 5 {
			t.Fatalf("%d failed", len(failed))
		}
		r, err := e.outbox.Retry(eva, &outboxv1.RetryRequest{Selection: &outboxv1.Selection{EmailIds: []string{failed[0].GetEmailId()}}})
		if err != nil || r.GetResult().GetSucceeded() != 1 {
			t.Fatalf("retry = %v (%v)", r, err)
		}
		got := e.waitStatus(eva, failed[0].GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)
		if got.GetAttemptCount() != 2 || len(got.GetAttempts()) != 2 {
			t.Errorf("after retry: %v", got)
		}
	})
}

// TestConnectorDisableEnable: mail due on a disabled connector waits without using an attempt,
// and is queued again when the connector is enabled.
func TestConnectorDisableEnable(t *testing.T) {
	e := startEnv(t)
	eva := e.as("eva", nil)
	if _, err := e.outbox.DisableConnector(e.admin(), &outboxv1.DisableConnectorRequest{ConnectorId: "default"}); err != nil {
		t.Fatal(err)
	}
	m := e.submit(eva, email("eva@kanzlei.example", "client@example.com", "Wartet"))
	got := e.waitStatus(eva, m.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_CONNECTOR_DISABLED)
	if got.GetAttemptCount() != 0 || got.GetLastError() != "connector default is disabled; enable it and retry" {
		t.Errorf("disabled: %v", got)
	}
	r, err := e.outbox.EnableConnector(e.admin(), &outboxv1.EnableConnectorRequest{ConnectorId: "default"})
	if err != nil || r.GetRequeued() != 1 || !r.GetConnector().GetEnabled() {
		t.Fatalf("enable = %v (%v)", r, err)
	}
	got = e.waitStatus(eva, m.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)
	if got.GetAttemptCount() != 1 {
		t.Errorf("sent after enable: %v", got)
	}
	t.Run("only admins manage connectors", func(t *testing.T) {
		_, err := e.outbox.DisableConnector(eva, &outboxv1.DisableConnectorRequest{ConnectorId: "default"})
		code(t, err, codes.PermissionDenied)
	})
	t.Run("a secret reference outside the operator's scope is refused", func(t *testing.T) {
		host, port := e.sinkHostPort()
		for _, ref := range []string{"env:AUTH_HS256_SECRET", "file:/etc/shadow"} {
			_, err := e.outbox.CreateConnector(e.admin(), &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
				ConnectorId: "neugierig", Host: host, Port: port, AuthMechanism: outboxv1.AuthMechanism_AUTH_MECHANISM_PLAIN,
				Username: "x", SecretRef: ref,
			}})
			if st := code(t, err, codes.InvalidArgument); !slices.Contains(fields(st), "connector.secret_ref") {
				t.Errorf("%s: violations %v", ref, fields(st))
			}
		}
	})
	t.Run("the secret is a reference and never returned", func(t *testing.T) {
		c, err := e.outbox.GetConnector(eva, &outboxv1.GetConnectorRequest{ConnectorId: "default"})
		if err != nil || c.GetConnector().GetHost() == "" {
			t.Fatalf("get = %v (%v)", c, err)
		}
	})
}

// TestImportedMailIsNeverRetriedAutomatically: an imported email that meets a temporary failure
// fails at once; only a person's retry sends it.
func TestImportedMailIsNeverRetriedAutomatically(t *testing.T) {
	e := startEnv(t)
	e.sink.SetBehavior(smtptest.TempFailRcpt)
	r, err := e.outbox.ImportEmails(e.admin(), &outboxv1.ImportEmailsRequest{Emails: []*outboxv1.ImportedEmail{
		{Email: email("eva@kanzlei.example", "client@example.com", "Altlast"), SenderUserId: "eva", Status: outboxv1.EmailStatus_EMAIL_STATUS_PENDING_RETRY, AttemptCount: 2, LastError: "451 legacy"},
		{Email: email("eva@kanzlei.example", "client@example.com", "Kaputt"), SenderUserId: "eva", Status: outboxv1.EmailStatus_EMAIL_STATUS_SENT},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GetFailures()) != 1 || r.GetFailures()[0].GetEmailId() != "#1" || r.GetEmailIds()[0] == "" {
		t.Fatalf("import = %v", r)
	}
	eva := e.as("eva", nil)
	got := e.waitStatus(eva, r.GetEmailIds()[0], outboxv1.EmailStatus_EMAIL_STATUS_FAILED)
	if !got.GetImported() || got.GetAttemptCount() != 3 {
		t.Errorf("imported after a 451: %v", got)
	}
	e.sink.SetBehavior(smtptest.Accept)
	if _, err := e.outbox.Retry(eva, &outboxv1.RetryRequest{Selection: &outboxv1.Selection{EmailIds: []string{got.GetEmailId()}}}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus(eva, got.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENT)
}

// TestWatchEmails: a watcher of a view sees the changes of its mail, and nothing of others'.
func TestWatchEmails(t *testing.T) {
	e := startEnv(t)
	e.holdAll("eva")
	consumers := 0 // mailbox's sent view has one of its own; count from when it exists
	poll.Eventually(t, "mailbox's consumer on the outbox stream", func() bool {
		if _, err := e.js.Consumer(context.Background(), "POSTAMT_OUTBOX", "mailbox-sent-view"); err != nil {
			return false
		}
		info, err := e.js.Stream(context.Background(), "POSTAMT_OUTBOX")
		if err == nil {
			consumers = info.CachedInfo().State.Consumers
		}
		return err == nil
	})
	ctx, cancel := context.WithCancel(e.as("max", []string{"empfang"}))
	defer cancel()
	stream, err := e.outbox.WatchEmails(ctx, &outboxv1.WatchEmailsRequest{View: outboxv1.View_VIEW_MINE})
	if err != nil {
		t.Fatal(err)
	}
	// The header says the watch is in place before anything changes.
	if md, err := stream.Header(); err != nil || len(md.Get("postamt-watch-open")) != 1 {
		t.Fatalf("watch header %v (%v), want postamt-watch-open", md, err)
	}
	if got := e.consumersOf(t); got <= consumers {
		t.Errorf("the watch said it was in place before its consumer existed")
	}
	got := make(chan *outboxv1.Email, 16)
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				close(got)
				return
			}
			got <- r.GetEmail()
		}
	}()
	e.submit(e.as("eva", nil), email("eva@kanzlei.example", "client@example.com", "Nicht fuer Max"))
	m := e.submit(e.as("max", []string{"empfang"}), email("max@kanzlei.example", "client@example.com", "Fuer Max"))
	var statuses []outboxv1.EmailStatus
	var sent *outboxv1.Email
	poll.Eventually(t, "max's email submitted, claimed and sent on the watch", func() bool {
		for {
			select {
			case em, ok := <-got:
				if !ok {
					t.Fatal("watch ended")
				}
				if em.GetEmailId() != m.GetEmailId() {
					t.Fatalf("watch of max's mail shows %v", em)
				}
				statuses = append(statuses, em.GetStatus())
				if em.GetStatus() == outboxv1.EmailStatus_EMAIL_STATUS_SENT {
					sent = em
				}
			default:
				return sent != nil
			}
		}
	})
	if statuses[0] != outboxv1.EmailStatus_EMAIL_STATUS_QUEUED {
		t.Errorf("statuses %v", statuses)
	}
	// The sent email reads on the watch as it does in GetEmail (less the attempts): a live
	// list row has every column a reloaded one has, the last attempt's time among them.
	want, err := e.outbox.GetEmail(e.as("max", []string{"empfang"}), &outboxv1.GetEmailRequest{EmailId: m.GetEmailId()})
	if err != nil {
		t.Fatal(err)
	}
	want.Email.Attempts = nil
	if !proto.Equal(sent, want.GetEmail()) || sent.GetLastAttemptTime() == nil {
		t.Errorf("sent on the watch:\n%v\nGetEmail:\n%v", sent, want.GetEmail())
	}
}

// watchChange is one response of a watch.
type watchChange struct {
	id     string
	status outboxv1.EmailStatus
	left   bool
}

// watchChanges starts a watch as ctx's caller (see watch) and returns its changes.
func (e *env) watchChanges(ctx context.Context, req *outboxv1.WatchEmailsRequest) <-chan watchChange {
	ctx, cancel := context.WithCancel(ctx)
	e.t.Cleanup(cancel)
	return watchAs(e, ctx, req, func(r *outboxv1.WatchEmailsResponse) watchChange {
		return watchChange{r.GetEmail().GetEmailId(), r.GetEmail().GetStatus(), r.GetLeftFilter()}
	})
}

// TestWatchEmailsLeftFilter: a filtered watch says when mail leaves its filter (left_filter),
// and stays silent about mail that was never in it. A list of failed mail learns that a retried
// email left it; a list of open mail (no status filter) that an email was sent or cancelled; a
// list of a connector's mail that an email was moved off it.
func TestWatchEmailsLeftFilter(t *testing.T) {
	e := startEnv(t)
	host, port := e.sinkHostPort()
	e.createConnector(&outboxv1.Connector{ConnectorId: "second", Host: host, Port: port, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE})
	eva := e.as("eva", nil)
	e.sink.SetHook(func(env smtptest.Envelope) smtptest.Behavior {
		if slices.Contains(env.To, "unknown@example.com") {
			return smtptest.PermFailRcpt
		}
		return smtptest.Accept
	})
	t.Cleanup(func() { e.sink.SetHook(nil) })
	failedOnly := e.watchChanges(eva, &outboxv1.WatchEmailsRequest{View: outboxv1.View_VIEW_MINE, Filter: &outboxv1.EmailFilter{
		Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_FAILED},
	}})
	open := e.watchChanges(eva, &outboxv1.WatchEmailsRequest{View: outboxv1.View_VIEW_MINE})
	second := e.watchChanges(eva, &outboxv1.WatchEmailsRequest{View: outboxv1.View_VIEW_MINE, Filter: &outboxv1.EmailFilter{ConnectorId: "second"}})
	var openGot []watchChange
	// waitOpen reads the open watch until it has shown want.
	waitOpen := func(want watchChange) {
		t.Helper()
		poll.Eventually(t, fmt.Sprintf("%v on the open watch", want), func() bool {
			for {
				select {
				case c, ok := <-open:
					if !ok {
						t.Fatal("the open watch ended")
					}
					openGot = append(openGot, c)
				default:
					return slices.Contains(openGot, want)
				}
			}
		})
	}
	const failed, sent = outboxv1.EmailStatus_EMAIL_STATUS_FAILED, outboxv1.EmailStatus_EMAIL_STATUS_SENT

	a := e.submit(eva, email("eva@kanzlei.example", "unknown@example.com", "fails, then retried"))
	b := e.submit(eva, email("eva@kanzlei.example", "client@example.com", "goes out"))
	waitOpen(watchChange{a.GetEmailId(), failed, false})
	waitOpen(watchChange{b.GetEmailId(), sent, true})
	e.sink.SetHook(nil)
	if _, err := e.outbox.Retry(eva, &outboxv1.RetryRequest{Selection: &outboxv1.Selection{EmailIds: []string{a.GetEmailId()}}}); err != nil {
		t.Fatal(err)
	}
	waitOpen(watchChange{a.GetEmailId(), sent, true})
	req := email("eva@kanzlei.example", "client@example.com", "scheduled, then cancelled")
	req.SendAt = timestamppb.New(time.Now().Add(time.Hour))
	c := e.submit(eva, req)
	if _, err := e.outbox.Cancel(eva, &outboxv1.CancelRequest{Selection: &outboxv1.Selection{EmailIds: []string{c.GetEmailId()}}}); err != nil {
		t.Fatal(err)
	}
	waitOpen(watchChange{c.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED, true})
	// Scheduled mail moved to the second connector and back, then cancelled.
	const scheduled = outboxv1.EmailStatus_EMAIL_STATUS_SCHEDULED
	req = email("eva@kanzlei.example", "client@example.com", "moved there and back")
	req.SendAt = timestamppb.New(time.Now().Add(time.Hour))
	d := e.submit(eva, req)
	for _, to := range []string{"second", "default"} {
		if _, err := e.outbox.MoveEmails(e.admin(), &outboxv1.MoveEmailsRequest{Selection: &outboxv1.Selection{EmailIds: []string{d.GetEmailId()}}, ConnectorId: to}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.outbox.Cancel(eva, &outboxv1.CancelRequest{Selection: &outboxv1.Selection{EmailIds: []string{d.GetEmailId()}}}); err != nil {
		t.Fatal(err)
	}
	waitOpen(watchChange{d.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED, true})
	// The last email fails after every change above is in the outbox's stream: once the filtered
	// watch shows it, it has shown everything before it.
	e.sink.SetHook(func(smtptest.Envelope) smtptest.Behavior { return smtptest.PermFailRcpt })
	lastReq := email("eva@kanzlei.example", "client@example.com", "the last one")
	lastReq.ConnectorId = "second"
	last := e.submit(eva, lastReq)
	waitOpen(watchChange{last.GetEmailId(), failed, false})
	// upToLast reads w until it shows the last email.
	upToLast := func(name string, w <-chan watchChange) []watchChange {
		t.Helper()
		var got []watchChange
		poll.Eventually(t, "the last email on the watch of "+name, func() bool {
			for {
				select {
				case c, ok := <-w:
					if !ok {
						t.Fatalf("the watch of %s ended", name)
					}
					got = append(got, c)
					if c.id == last.GetEmailId() {
						return true
					}
				default:
					return false
				}
			}
		})
		return got
	}
	want := []watchChange{
		{a.GetEmailId(), failed, false},
		{a.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_PENDING_RETRY, true}, // retried: out of the list
		{last.GetEmailId(), failed, false},
	}
	if got := upToLast("failed mail", failedOnly); !slices.Equal(got, want) {
		t.Errorf("the watch of failed mail showed %v, want %v (nothing of mail that never failed)", got, want)
	}
	want = []watchChange{
		{d.GetEmailId(), scheduled, false}, // moved here
		{d.GetEmailId(), scheduled, true},  // moved away
	}
	got := upToLast("the second connector's mail", second)
	// The last email's first state there is QUEUED, or SENDING when its claim's announcement
	// overtook the submission's event by more than the watch's grace (a loaded machine).
	if n := len(got); n == 0 || got[n-1].left {
		t.Errorf("the watch of the second connector ended with %v, want the last email in the filter", got)
	} else if got = got[:n-1]; !slices.Equal(got, want) {
		t.Errorf("the watch of the second connector showed %v before the last email, want %v (nothing of the default connector's mail)", got, want)
	}
	// The open watch: every open state as it is, what leaves the outbox as left.
	for _, c := range openGot {
		final := c.status == sent || c.status == outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED
		if c.left != final {
			t.Errorf("the open watch showed %v: left_filter should be set exactly for sent and cancelled mail", c)
		}
	}
}

// consumersOf counts the consumers of the outbox's stream.
func (e *env) consumersOf(t *testing.T) int {
	t.Helper()
	info, err := e.js.Stream(context.Background(), "POSTAMT_OUTBOX")
	if err != nil {
		t.Fatal(err)
	}
	return info.CachedInfo().State.Consumers
}

// TestCancelWhileSendingFailsCleanly: an email a worker holds is refused per email with
// FAILED_PRECONDITION (BEING_SENT), and its send goes on.
func TestCancelWhileSendingFailsCleanly(t *testing.T) {
	e := startEnv(t)
	eva := e.as("eva", nil)
	e.sink.SetBehavior(smtptest.Hang) // the relay takes the message and keeps the reply
	m := e.submit(eva, email("eva@kanzlei.example", "client@example.com", "Haengt"))
	e.waitStatus(eva, m.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_SENDING)
	r, err := e.outbox.Cancel(eva, &outboxv1.CancelRequest{Selection: &outboxv1.Selection{EmailIds: []string{m.GetEmailId()}}})
	if err != nil {
		t.Fatal(err)
	}
	f := r.GetResult().GetFailures()
	if r.GetResult().GetSucceeded() != 0 || len(f) != 1 || f[0].GetCode() != int32(codes.FailedPrecondition) {
		t.Fatalf("cancel while sending = %v", r.GetResult())
	}
	// The hang ends in the submit timeout: the outcome is unknown, held as FAILED by default.
	got := e.waitStatus(eva, m.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_FAILED)
	if got.GetAttempts()[0].GetOutcome() != outboxv1.AttemptOutcome_ATTEMPT_OUTCOME_UNKNOWN {
		t.Errorf("attempt %v, want the unknown outcome", got.GetAttempts()[0])
	}
}

// TestUserSettings: defaults, an update by field mask, and To and Subject that cannot be hidden.
func TestUserSettings(t *testing.T) {
	e := startEnv(t)
	eva := e.as("eva", nil)
	got, err := e.outbox.GetUserSettings(eva, &outboxv1.GetUserSettingsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	s := got.GetSettings()
	if s.GetUserId() != "eva" || s.GetDefaultView() != outboxv1.View_VIEW_MINE || s.GetPageSize() != 50 || len(s.GetVisibleColumns()) == 0 {
		t.Errorf("defaults %v", s)
	}
	_, err = e.outbox.UpdateUserSettings(eva, &outboxv1.UpdateUserSettingsRequest{
		Settings:   &outboxv1.UserSettings{VisibleColumns: []outboxv1.Column{outboxv1.Column_COLUMN_SUBJECT}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"visible_columns"}},
	})
	if st := code(t, err, codes.InvalidArgument); !slices.Contains(fields(st), "settings.visible_columns") {
		t.Errorf("violations %v", fields(st))
	}
	up, err := e.outbox.UpdateUserSettings(eva, &outboxv1.UpdateUserSettingsRequest{
		Settings:   &outboxv1.UserSettings{DefaultView: outboxv1.View_VIEW_ALL, PageSize: 100},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"default_view", "page_size"}},
	})
	if err != nil || up.GetSettings().GetDefaultView() != outboxv1.View_VIEW_ALL || up.GetSettings().GetPageSize() != 100 || up.GetSettings().GetVersion() != 1 {
		t.Fatalf("update = %v (%v)", up, err)
	}
	_, err = e.outbox.GetUserSettings(eva, &outboxv1.GetUserSettingsRequest{UserId: "max"})
	code(t, err, codes.PermissionDenied)
}

// TestListOrders: the orders the indexes do not keep (newest submitted first, most recent
// attempt first) over pages, the token bound to its order, and FILTER_TOO_BROAD past the bound.
func TestListOrders(t *testing.T) {
	e := startEnv(t, func(c *app.Config) { c.MaxFilterScan = 100 })
	e.holdAll("eva")
	eva := e.as("eva", nil)
	// Due order is the submit order; submit order newest first is its reverse.
	var held []string
	var last int64
	for i := range 3 {
		for time.Now().UnixMilli() <= last {
			runtime.Gosched() // distinct submit milliseconds, so that the order is not decided by ids
		}
		req := email("eva@kanzlei.example", "client@example.com", "held "+strconv.Itoa(i))
		req.SendAt = timestamppb.New(time.Now().Add(time.Duration(i+1) * time.Hour))
		m := e.submit(eva, req)
		held = append(held, m.GetEmailId())
		last = m.GetSubmitTime().AsTime().UnixMilli()
	}
	// Three that fail at once, one after another: the last attempted is the newest.
	e.sink.SetHook(func(smtptest.Envelope) smtptest.Behavior { return smtptest.PermFailRcpt })
	var failed []string
	for i := range 3 {
		req := email("eva@kanzlei.example", "client@example.com", "failed "+strconv.Itoa(i))
		req.SendAt = timestamppb.New(time.Now().Add(time.Millisecond))
		m := e.submit(eva, req)
		got := e.waitStatus(eva, m.GetEmailId(), outboxv1.EmailStatus_EMAIL_STATUS_FAILED)
		failed = append(failed, got.GetEmailId())
		for time.Now().UnixMilli() <= got.GetLastAttemptTime().AsTime().UnixMilli() {
			runtime.Gosched()
		}
	}
	e.sink.SetHook(nil)

	listAll := func(order outboxv1.EmailOrder, f *outboxv1.EmailFilter) []string {
		t.Helper()
		var out []string
		tok := ""
		for {
			r, err := e.outbox.ListEmails(eva, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_MINE, Filter: f, Order: order, PageSize: 2, PageToken: tok})
			if err != nil {
				t.Fatalf("list by %s: %v", order, err)
			}
			for _, m := range r.GetEmails() {
				out = append(out, m.GetEmailId())
			}
			if tok = r.GetNextPageToken(); tok == "" {
				return out
			}
		}
	}
	heldOnly := &outboxv1.EmailFilter{Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_SCHEDULED}}
	t.Run("due time", func(t *testing.T) {
		if got := listAll(outboxv1.EmailOrder_EMAIL_ORDER_DUE_TIME, heldOnly); !slices.Equal(got, held) {
			t.Errorf("got %v, want %v", got, held)
		}
	})
	t.Run("newest submitted first", func(t *testing.T) {
		want := slices.Clone(held)
		slices.Reverse(want)
		if got := listAll(outboxv1.EmailOrder_EMAIL_ORDER_SUBMIT_TIME_DESC, heldOnly); !slices.Equal(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
	t.Run("most recent attempt first, never attempted last", func(t *testing.T) {
		want := slices.Clone(failed)
		slices.Reverse(want)
		neverTried := slices.Clone(held)
		slices.Sort(neverTried)
		want = append(want, neverTried...)
		if got := listAll(outboxv1.EmailOrder_EMAIL_ORDER_LAST_ATTEMPT_TIME_DESC, nil); !slices.Equal(got, want) {
			t.Errorf("got %v, want %v", got, want)
		}
	})
	t.Run("a token is bound to its order", func(t *testing.T) {
		r, err := e.outbox.ListEmails(eva, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_MINE, Order: outboxv1.EmailOrder_EMAIL_ORDER_SUBMIT_TIME_DESC, PageSize: 1})
		if err != nil || r.GetNextPageToken() == "" {
			t.Fatalf("first page: %v (%v)", r, err)
		}
		for _, order := range []outboxv1.EmailOrder{outboxv1.EmailOrder_EMAIL_ORDER_DUE_TIME, outboxv1.EmailOrder_EMAIL_ORDER_LAST_ATTEMPT_TIME_DESC} {
			_, err = e.outbox.ListEmails(eva, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_MINE, Order: order, PageToken: r.GetNextPageToken()})
			code(t, err, codes.InvalidArgument)
		}
		_, err = e.outbox.ListEmails(eva, &outboxv1.ListEmailsRequest{Order: outboxv1.EmailOrder(99)})
		code(t, err, codes.InvalidArgument)
	})
	t.Run("a token is bound to its view and filter", func(t *testing.T) {
		first := &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_MINE, Filter: heldOnly, PageSize: 1}
		r, err := e.outbox.ListEmails(eva, first)
		if err != nil || r.GetNextPageToken() == "" {
			t.Fatalf("first page: %v (%v)", r, err)
		}
		next := proto.CloneOf(first)
		next.PageToken = r.GetNextPageToken()
		if _, err := e.outbox.ListEmails(eva, next); err != nil {
			t.Fatalf("the same query's next page: %v", err)
		}
		for name, change := range map[string]func(*outboxv1.ListEmailsRequest){
			"another view": func(r *outboxv1.ListEmailsRequest) { r.View = outboxv1.View_VIEW_ALL },
			"no filter":    func(r *outboxv1.ListEmailsRequest) { r.Filter = nil },
			"another status": func(r *outboxv1.ListEmailsRequest) {
				r.Filter.Statuses = []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_FAILED}
			},
			"a text filter besides": func(r *outboxv1.ListEmailsRequest) { r.Filter.Text = "held" },
		} {
			req := proto.CloneOf(next)
			change(req)
			_, err := e.outbox.ListEmails(eva, req)
			if got := fields(code(t, err, codes.InvalidArgument)); !slices.Equal(got, []string{"page_token"}) {
				t.Errorf("%s: violations %v, want page_token", name, got)
			}
		}
	})
	t.Run("more than the scan bound", func(t *testing.T) {
		for i := range 100 {
			req := email("eva@kanzlei.example", "client@example.com", "many "+strconv.Itoa(i))
			req.SendAt = timestamppb.New(time.Now().Add(2 * time.Hour))
			e.submit(eva, req)
		}
		_, err := e.outbox.ListEmails(eva, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_MINE, Order: outboxv1.EmailOrder_EMAIL_ORDER_SUBMIT_TIME_DESC})
		code(t, err, codes.FailedPrecondition)
		// The due-time order serves any size.
		if r, err := e.outbox.ListEmails(eva, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_MINE, PageSize: 10}); err != nil || len(r.GetEmails()) != 10 {
			t.Errorf("due-time page: %d emails (%v)", len(r.GetEmails()), err)
		}
	})
}
