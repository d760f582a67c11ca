package journal_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/services/tracker/internal/journal"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// ingester records what the endpoint feeds it.
type ingester struct {
	mu   sync.Mutex
	got  []ingested
	fail error
}

type ingested struct {
	tenant string
	msg    tracker.Message
}

func (i *ingester) Ingest(_ context.Context, tenant string, m *tracker.Message) (*tracker.Result, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.fail != nil {
		return nil, i.fail
	}
	i.got = append(i.got, ingested{tenant, *m})
	return &tracker.Result{Tracked: true}, nil
}

func (i *ingester) calls() []ingested {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]ingested(nil), i.got...)
}

const maxBytes = 4096

func start(t *testing.T, ing *ingester) string {
	t.Helper()
	srv := journal.New(journal.Config{
		Addresses: map[string]journal.Target{
			"journal-max@tracker.kanzlei.example":  {Tenant: "kanzlei", MailboxID: "p-max", User: "max"},
			"journal-info@tracker.kanzlei.example": {Tenant: "kanzlei", MailboxID: "info", User: "martina"},
		},
		Domain: "tracker.kanzlei.example", MaxMessageBytes: maxBytes, Timeout: 5 * time.Second,
	}, ing, nil)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return lis.Addr().String()
}

func dial(t *testing.T, addr string) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Hello("exchange.kanzlei.example"); err != nil {
		t.Fatal(err)
	}
	return c
}

func code(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

const copyOfSent = "Message-ID: <m1@kanzlei.example>\r\n" +
	"From: Max <max@kanzlei.example>\r\n" +
	"To: erika@kunde.example\r\n" +
	"Bcc: akte7@kanzlei.example\r\n" +
	"Subject: Angebot\r\n" +
	"Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n" +
	"\r\n" +
	"Sehr geehrte Frau Mustermann,\r\n"

func send(t *testing.T, c *smtp.Client, to []string, body string) error {
	t.Helper()
	if err := c.Mail("exchange@kanzlei.example", nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return err
	}
	return w.Close()
}

func TestJournalConversation(t *testing.T) {
	ing := &ingester{}
	c := dial(t, start(t, ing))

	if ok, size := c.Extension("SIZE"); !ok || size != "4096" {
		t.Errorf("EHLO SIZE = %v %q, want 4096", ok, size)
	}

	t.Run("unknown journal address is 550 5.1.1", func(t *testing.T) {
		if err := c.Mail("exchange@kanzlei.example", nil); err != nil {
			t.Fatal(err)
		}
		err := c.Rcpt("someone@tracker.kanzlei.example", nil)
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
			t.Fatalf("RCPT = %v, want 550 5.1.1", err)
		}
		if err := c.Reset(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a journal copy is ingested once per journaled mailbox", func(t *testing.T) {
		err := send(t, c, []string{"Journal-Max@Tracker.Kanzlei.example", "journal-info@tracker.kanzlei.example", "journal-max@tracker.kanzlei.example"}, copyOfSent)
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		got := ing.calls()
		if len(got) != 2 {
			t.Fatalf("ingested %d, want 2 (p-max and info)", len(got))
		}
		m := got[0].msg
		if got[0].tenant != "kanzlei" || m.MailboxID != "p-max" || m.SenderUser != "max" || m.Source != tracker.SourceJournal ||
			m.MessageID != "m1@kanzlei.example" || m.From != "max@kanzlei.example" || len(m.Bcc) != 1 {
			t.Errorf("ingested %+v", got[0])
		}
		if got[1].msg.MailboxID != "info" || got[1].msg.SenderUser != "martina" {
			t.Errorf("second %+v", got[1])
		}
	})

	t.Run("an envelope journal report is unwrapped, with the Bcc recipients it lists", func(t *testing.T) {
		report := "Message-ID: <report-1@exchange.kanzlei.example>\r\n" +
			"From: Microsoft Exchange <journal@kanzlei.example>\r\n" +
			"To: journal-max@tracker.kanzlei.example\r\n" +
			"Subject: Journal report\r\n" +
			"X-MS-Journal-Report:\r\n" +
			"MIME-Version: 1.0\r\n" +
			"Content-Type: multipart/mixed; boundary=\"b1\"\r\n" +
			"\r\n" +
			"--b1\r\nContent-Type: text/plain\r\n\r\n" +
			"Sender: max@kanzlei.example\r\nSubject: Angebot\r\nMessage-Id: <m2@kanzlei.example>\r\n" +
			"To: erika@kunde.example\r\n" +
			"Bcc: Akte7@Kanzlei.example\r\n" +
			"Bcc: sekretariat-1@kanzlei.example, Expanded: team@kanzlei.example\r\n" +
			"Bcc: erika@kunde.example\r\n" +
			"Recipient: unverified@kunde.example\r\n" +
			"Bcc: not an address\r\n" +
			// Parses, into an address with a space the tracker refuses (found by FuzzReadCopy).
			"Bcc: \"akte 8\"@kanzlei.example\r\n" +
			"--b1\r\nContent-Type: message/rfc822\r\n\r\n" +
			// As relayed: the sending server removed the Bcc header.
			strings.Replace(strings.Replace(copyOfSent, "m1@", "m2@", 1), "Bcc: akte7@kanzlei.example\r\n", "", 1) +
			"--b1--\r\n"
		if err := send(t, c, []string{"journal-max@tracker.kanzlei.example"}, report); err != nil {
			t.Fatalf("send: %v", err)
		}
		got := ing.calls()
		last := got[len(got)-1].msg
		if last.MessageID != "m2@kanzlei.example" || last.Subject != "Angebot" {
			t.Errorf("evaluated %+v, want the attached original", last)
		}
		// The report's Bcc lines, as the sender addressed them (the list, not its member), each
		// once, none that is already a recipient; Recipient lines, unreadable ones and addresses
		// the tracker refuses left out.
		if got, want := strings.Join(last.Bcc, " "), "akte7@kanzlei.example team@kanzlei.example"; got != want {
			t.Errorf("Bcc = %q, want %q", got, want)
		}
	})

	t.Run("oversize is 552 5.3.4 at the end of DATA", func(t *testing.T) {
		n := len(ing.calls())
		err := send(t, c, []string{"journal-max@tracker.kanzlei.example"}, copyOfSent+strings.Repeat(strings.Repeat("x", 70)+"\r\n", maxBytes/70+1))
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 552 || se.EnhancedCode != (smtp.EnhancedCode{5, 3, 4}) {
			t.Fatalf("oversize = %v, want 552 5.3.4", err)
		}
		if len(ing.calls()) != n {
			t.Error("an oversize copy was ingested")
		}
	})

	t.Run("declared oversize is 552 at MAIL FROM", func(t *testing.T) {
		err := c.Mail("exchange@kanzlei.example", &smtp.MailOptions{Size: maxBytes + 1})
		if code(err) != 552 {
			t.Fatalf("MAIL SIZE = %v, want 552", err)
		}
	})

	t.Run("unreadable headers are 554 5.6.0", func(t *testing.T) {
		err := send(t, c, []string{"journal-max@tracker.kanzlei.example"}, "From: max@kanzlei.example\r\nSubject: no id\r\n\r\nbody\r\n")
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 554 || se.EnhancedCode != (smtp.EnhancedCode{5, 6, 0}) || !strings.Contains(se.Message, "Message-ID") {
			t.Fatalf("no Message-ID = %v, want 554 5.6.0 naming Message-ID", err)
		}
	})

	t.Run("a tracker that cannot evaluate now is 451 4.3.0", func(t *testing.T) {
		ing.mu.Lock()
		ing.fail = errs.Unavailable("mailbox down", time.Second, nil)
		ing.mu.Unlock()
		defer func() { ing.mu.Lock(); ing.fail = nil; ing.mu.Unlock() }()
		err := send(t, c, []string{"journal-max@tracker.kanzlei.example"}, copyOfSent)
		var se *smtp.SMTPError
		if !errors.As(err, &se) || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) {
			t.Fatalf("= %v, want 451 4.3.0", err)
		}
	})

	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}
}
