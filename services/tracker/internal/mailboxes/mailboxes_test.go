package mailboxes_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/postamt/postamt/internal/errs"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	"github.com/postamt/postamt/services/tracker/internal/mailboxes"
	"github.com/postamt/postamt/services/tracker/internal/tracker"
)

// fakeMailbox answers GetMailbox from a map and counts the calls.
type fakeMailbox struct {
	mailboxv1.MailboxServiceClient
	mu    sync.Mutex
	kinds map[string]mailboxv1.SyncKind
	err   error
	calls int
}

func (f *fakeMailbox) GetMailbox(_ context.Context, in *mailboxv1.GetMailboxRequest, _ ...grpc.CallOption) (*mailboxv1.GetMailboxResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	k, ok := f.kinds[in.GetMailboxId()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such mailbox")
	}
	return &mailboxv1.GetMailboxResponse{Mailbox: &mailboxv1.Mailbox{MailboxId: in.GetMailboxId(), SyncKind: k}}, nil
}

// follow runs c.Follow on an embedded JetStream until the test ends and returns once the cache
// serves: the client's cache keeps answers only while it follows mailbox's events.
func follow(t *testing.T, c *mailboxes.Client, mb *fakeMailbox) {
	t.Helper()
	ns := natstest.Start(t)
	js := ns.JetStream(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "POSTAMT_MAILBOX", Subjects: []string{"postamt.mailbox.v1.>"}}); err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.Follow(ctx, js, "POSTAMT_MAILBOX", slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	poll.Eventually(t, "the cache to follow the events", func() bool {
		_, _ = c.SyncKind(ctx, "probe", "x")
		mb.mu.Lock()
		before := mb.calls
		mb.mu.Unlock()
		_, _ = c.SyncKind(ctx, "probe", "x")
		mb.mu.Lock()
		defer mb.mu.Unlock()
		return mb.calls == before
	})
}

func TestSyncKindCache(t *testing.T) {
	mb := &fakeMailbox{kinds: map[string]mailboxv1.SyncKind{
		"p-max": mailboxv1.SyncKind_SYNC_KIND_EXCHANGE, "p-eva": mailboxv1.SyncKind_SYNC_KIND_IMAP, "old": mailboxv1.SyncKind_SYNC_KIND_UNSPECIFIED,
	}}
	var mu sync.Mutex
	now := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	c := mailboxes.New(mb, time.Minute, clock)
	ctx := context.Background()
	follow(t, c, mb)
	tests := []struct {
		mailbox string
		want    tracker.SyncKind
	}{
		{"p-max", tracker.SyncExchange},
		{"p-eva", tracker.SyncIMAP},
		{"old", tracker.SyncNone},
		{"gone", tracker.SyncUnknownMailbox},
	}
	for _, tt := range tests {
		got, err := c.SyncKind(ctx, "kanzlei", tt.mailbox)
		if err != nil || got != tt.want {
			t.Errorf("SyncKind(%s) = %v, %v; want %v", tt.mailbox, got, err, tt.want)
		}
	}
	calls := mb.calls
	if _, err := c.SyncKind(ctx, "kanzlei", "p-max"); err != nil || mb.calls != calls {
		t.Errorf("a cached answer asked mailbox again (%d calls)", mb.calls-calls)
	}
	c.Invalidate("kanzlei")
	if _, _ = c.SyncKind(ctx, "kanzlei", "p-max"); mb.calls != calls+1 {
		t.Error("Invalidate kept the answer")
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	if _, _ = c.SyncKind(ctx, "kanzlei", "p-max"); mb.calls != calls+2 {
		t.Error("an expired answer was used")
	}
	mb.err = status.Error(codes.Unavailable, "down")
	if _, err := c.SyncKind(ctx, "kanzlei", "new"); !errors.Is(err, errs.ErrUnavailable) {
		t.Errorf("mailbox down = %v, want unavailable", err)
	}
}
