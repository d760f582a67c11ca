package grpcapi_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/mailbox/internal/mailbox"
)

// sentView lists a user's whole sent view as "email_id(folder)" strings, newest first, walking
// every page of size pageSize.
func (e *env) sentView(t *testing.T, user string, pageSize int32) []string {
	t.Helper()
	var out []string
	token := ""
	for range 100 {
		r := must(e.client.ListSentItems(e.as("kanzlei", user), &mailboxv1.ListSentItemsRequest{PageSize: pageSize, PageToken: token}))(t)
		for _, it := range r.GetItems() {
			folder := "shared"
			if it.GetFolder() == mailboxv1.SentItemFolder_SENT_ITEM_FOLDER_OWN {
				folder = "own"
			}
			out = append(out, it.GetEmailId()+"("+folder+")")
		}
		if token = r.GetNextPageToken(); token == "" {
			return out
		}
	}
	t.Fatal("sent view does not end")
	return nil
}

// TestSentViewSeed000 is the story of seed 000: a firm with Max Mustermann and Martina
// Musterfrau. Max sends from his personal address, Martina from the office address
// info@kanzlei.example. Each message is stored in its sender's own Sent folder; in Postamt every
// member of the office mailbox also sees what was sent from it, with attribution, and nobody else
// sees Max's personal mail.
func TestSentViewSeed000(t *testing.T) {
	e := newEnv(t)
	admin := e.tenant("kanzlei")
	e.user(admin, "max", "Max Mustermann", "max@kanzlei.example")
	e.user(admin, "martina", "Martina Musterfrau", "martina@kanzlei.example")
	e.user(admin, "lea", "Lea Lehrling", "lea@kanzlei.example")
	e.personal(admin, "max-pm", "max", "mustermann@kanzlei.example", "Max Mustermann")
	e.personal(admin, "martina-pm", "martina", "musterfrau@kanzlei.example", "Martina Musterfrau")
	e.shared(admin, "info", "info@kanzlei.example", "Kanzlei Muster", false)
	e.member(admin, "info", "max", read, sendAs)
	e.member(admin, "info", "martina", read, sendAs)

	ctx := context.Background()
	t0 := time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)
	apply := func(id, sender, senderName, mailboxID, from string, at time.Time) {
		t.Helper()
		if _, err := e.svc.ApplySent(ctx, "kanzlei", &mailbox.SentItem{
			EmailID: id, MessageID: id + "@kanzlei.example", MailboxID: mailboxID, FromAddress: from, SenderUser: sender,
			SenderName: senderName, Subject: "Betreff " + id, To: []string{"client@example.com"}, Mode: mailbox.SendAs, SentAt: at,
		}); err != nil {
			t.Fatal(err)
		}
	}
	apply("max-1", "max", "Max Mustermann", "max-pm", "mustermann@kanzlei.example", t0)
	apply("martina-1", "martina", "Martina Musterfrau", "info", "info@kanzlei.example", t0.Add(time.Minute))

	t.Run("Max sees his own mail and the office mail", func(t *testing.T) {
		if got, want := fmt.Sprint(e.sentView(t, "max", 50)), "[martina-1(shared) max-1(own)]"; got != want {
			t.Errorf("Max's view = %s, want %s", got, want)
		}
	})
	t.Run("Martina sees her office mail as her own, not Max's personal mail", func(t *testing.T) {
		if got, want := fmt.Sprint(e.sentView(t, "martina", 50)), "[martina-1(own)]"; got != want {
			t.Errorf("Martina's view = %s, want %s", got, want)
		}
	})
	t.Run("the office mail names who sent it", func(t *testing.T) {
		r := must(e.client.ListSentItems(e.as("kanzlei", "max"), &mailboxv1.ListSentItemsRequest{}))(t)
		it := r.GetItems()[0]
		if it.GetAttribution() != "sent by Martina Musterfrau via info@kanzlei.example" || it.GetSentByUserId() != "martina" {
			t.Errorf("item = %v", it)
		}
	})
	t.Run("a non-member sees nothing", func(t *testing.T) {
		if got := e.sentView(t, "lea", 50); len(got) != 0 {
			t.Errorf("Lea's view = %v, want empty", got)
		}
	})
	t.Run("joining shows the history at once", func(t *testing.T) {
		e.member(admin, "info", "lea", read)
		if got, want := fmt.Sprint(e.sentView(t, "lea", 50)), "[martina-1(shared)]"; got != want {
			t.Errorf("Lea's view = %s, want %s", got, want)
		}
	})
	t.Run("leaving hides others' office mail at once but keeps one's own", func(t *testing.T) {
		apply("max-2", "max", "Max Mustermann", "info", "info@kanzlei.example", t0.Add(2*time.Minute))
		must(e.client.RemoveMember(admin, &mailboxv1.RemoveMemberRequest{MailboxId: "info", UserId: "max"}))(t)
		if got, want := fmt.Sprint(e.sentView(t, "max", 50)), "[max-2(own) max-1(own)]"; got != want {
			t.Errorf("Max's view = %s, want %s", got, want)
		}
	})
	t.Run("redelivery changes nothing", func(t *testing.T) {
		applied, err := e.svc.ApplySent(ctx, "kanzlei", &mailbox.SentItem{
			EmailID: "martina-1", MailboxID: "info", FromAddress: "info@kanzlei.example", SenderUser: "martina", SentAt: t0.Add(time.Minute),
		})
		if err != nil || applied {
			t.Errorf("ApplySent again = %v, %v; want false, nil", applied, err)
		}
		if got, want := fmt.Sprint(e.sentView(t, "martina", 50)), "[max-2(shared) martina-1(own)]"; got != want {
			t.Errorf("Martina's view = %s, want %s", got, want)
		}
	})
	t.Run("paging walks every item once, newest first", func(t *testing.T) {
		for i := range 7 {
			// Same millisecond for several: ties are broken by id.
			apply(fmt.Sprintf("bulk-%d", i), "martina", "Martina Musterfrau", "info", "info@kanzlei.example", t0.Add(time.Hour+time.Duration(i/3)*time.Millisecond))
		}
		got := e.sentView(t, "lea", 2)
		want := "[bulk-6(shared) bulk-3(shared) bulk-4(shared) bulk-5(shared) bulk-0(shared) bulk-1(shared) bulk-2(shared) max-2(shared) martina-1(shared)]"
		if fmt.Sprint(got) != want {
			t.Errorf("paged view = %v, want %s", got, want)
		}
	})
	t.Run("users may read only their own view", func(t *testing.T) {
		_, err := e.client.ListSentItems(e.as("kanzlei", "lea"), &mailboxv1.ListSentItemsRequest{UserId: "martina"})
		wantCode(t, err, codes.PermissionDenied)
	})
}

// TestSentItemSenderName: the sent view names the sender by the display name mailbox's directory
// holds when the item is written, whatever the event carried; a sender the directory does not
// know keeps the event's name, or is shown by user id.
func TestSentItemSenderName(t *testing.T) {
	e := newEnv(t)
	admin := e.tenant("kanzlei")
	e.user(admin, "martina", "Martina Musterfrau", "martina@kanzlei.example")
	e.shared(admin, "info", "info@kanzlei.example", "Kanzlei Muster", false)
	e.member(admin, "info", "martina", read, sendAs)
	t0 := time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC)
	tests := []struct {
		name            string
		sender          string
		eventName       string
		wantName        string
		wantAttribution string
	}{
		{"a known sender, no name in the event", "martina", "", "Martina Musterfrau", "sent by Martina Musterfrau via info@kanzlei.example"},
		{"a known sender, another name in the event", "martina", "M. Musterfrau", "Martina Musterfrau", "sent by Martina Musterfrau via info@kanzlei.example"},
		{"an unknown sender with a name in the event", "gone", "Gerd Gegangen", "Gerd Gegangen", "sent by Gerd Gegangen via info@kanzlei.example"},
		{"an unknown sender without a name", "gone", "", "", "sent by gone via info@kanzlei.example"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("e-%d", i)
			if _, err := e.svc.ApplySent(context.Background(), "kanzlei", &mailbox.SentItem{
				EmailID: id, MessageID: id + "@kanzlei.example", MailboxID: "info", FromAddress: "info@kanzlei.example",
				SenderUser: tt.sender, SenderName: tt.eventName, Subject: "Betreff", To: []string{"client@example.com"},
				Mode: mailbox.SendOnBehalf, SentAt: t0.Add(time.Duration(i) * time.Minute),
			}); err != nil {
				t.Fatal(err)
			}
			r := must(e.client.ListSentItems(e.as("kanzlei", "martina"), &mailboxv1.ListSentItemsRequest{}))(t)
			var got *mailboxv1.SentItem
			for _, it := range r.GetItems() {
				if it.GetEmailId() == id {
					got = it
				}
			}
			if got.GetSentByDisplayName() != tt.wantName || got.GetAttribution() != tt.wantAttribution {
				t.Errorf("item = %v, want sent_by_display_name %q and attribution %q", got, tt.wantName, tt.wantAttribution)
			}
		})
	}
}
