package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/poll"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/app"
)

// TestPartitionsEndToEnd runs the outbox (and mailbox) on 64 partitions, on a fresh Redis:
// submitted mail lands in partitions beyond today's 16 and is dispatched from all of them to the
// SMTP sink, idempotency keys find their emails, and the views list and count scheduled mail
// across every partition.
func TestPartitionsEndToEnd(t *testing.T) {
	e := startEnvPartitions(t, 64)
	ctx := context.Background()
	maxU := e.as("max", nil)
	const now, later = 30, 25
	for i := range now {
		req := email("max@kanzlei.example", fmt.Sprintf("client%d@example.com", i), fmt.Sprintf("Sofort %d", i))
		if i%3 == 0 {
			req.IdempotencyKey = fmt.Sprintf("crm-%d", i)
		}
		first := e.submit(maxU, req)
		if req.IdempotencyKey != "" {
			if again := e.submit(maxU, req); again.GetEmailId() != first.GetEmailId() {
				t.Errorf("idempotency key %s: %s, then %s", req.IdempotencyKey, first.GetEmailId(), again.GetEmailId())
			}
		}
	}
	at := time.Now().Add(time.Hour)
	for i := range later {
		req := email("max@kanzlei.example", "client@example.com", fmt.Sprintf("Später %d", i))
		req.SendAt = timestamppb.New(at)
		e.submit(maxU, req)
	}
	poll.Eventually(t, "the mail due now at the sink", func() bool { return len(e.sink.Messages()) >= now })
	if n := len(e.sink.Messages()); n != now {
		t.Errorf("%d messages at the sink, want %d", n, now)
	}

	// The records are spread over all 64 partitions' tags, not 16.
	keys, err := allKeys(ctx, e.rdb, "pm:ob:{ob*}:e:*")
	if err != nil {
		t.Fatal(err)
	}
	tags := map[int]bool{}
	for _, k := range keys {
		m := regexp.MustCompile(`\{ob(\d+)\}`).FindStringSubmatch(k)
		p, _ := strconv.Atoi(m[1])
		tags[p] = true
	}
	beyond := 0
	for p := range tags {
		if p >= 64 {
			t.Errorf("a record in partition %d of 64", p)
		}
		if p >= 16 {
			beyond++
		}
	}
	if len(keys) != now+later || beyond == 0 {
		t.Errorf("%d records in %d partitions, %d of them beyond 16; want %d records and some beyond 16", len(keys), len(tags), beyond, now+later)
	}

	var listed []string
	token := ""
	for {
		r, err := e.outbox.ListEmails(maxU, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_MINE, PageSize: 7, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range r.GetEmails() {
			listed = append(listed, m.GetEmailId())
			if m.GetStatus() != outboxv1.EmailStatus_EMAIL_STATUS_SCHEDULED {
				t.Errorf("listed %s in %s", m.GetEmailId(), m.GetStatus())
			}
		}
		if token = r.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(listed) != later {
		t.Errorf("view MINE listed %d emails over pages of 7, want the %d scheduled", len(listed), later)
	}
	c, err := e.outbox.CountEmails(maxU, &outboxv1.CountEmailsRequest{View: outboxv1.View_VIEW_MINE})
	if err != nil || c.GetTotal() != later {
		t.Errorf("count of MINE = %d (%v), want %d", c.GetTotal(), err, later)
	}
	if got := e.rdb.Get(ctx, "pm:ob:{ob0}:partitions").Val(); got != "64" {
		t.Errorf("recorded partition count %q, want 64", got)
	}
}

// TestPartitionsChangeRefused: an outbox started on data written with another partition count
// refuses to start, naming REDIS_PARTITIONS and both counts — whether the data recorded its
// count (a deployment created with 16, restarted with 32) or predates the record (it counts as
// 16).
func TestPartitionsChangeRefused(t *testing.T) {
	e := startEnv(t) // the default, 16, recorded at the first start
	verifier, signer := authtest.Keys(t)
	run := func(t *testing.T, partitions int) error {
		t.Helper()
		cfg := app.Config{
			MailboxAddr: "127.0.0.1:1", DefaultConnector: "default", MaxUndoDelay: time.Minute, MaxMessageBytes: 1 << 20, MaxRecipients: 50,
			ScheduleHorizon: time.Hour, Retention: time.Hour, ClaimBatch: 64, Lease: 10 * time.Second, StopTimeout: 10 * time.Second,
			SMTPCommandTimeout: time.Second, SMTPSubmitTimeout: time.Second, SecretEnvPrefix: "POSTAMT_SMTP_", SecretDir: "/run/secrets/postamt",
			RelayBatch: 256, RelayClaimIdle: time.Second, MaxFilterScan: 10_000, MaxSelection: 100_000,
		}
		ob, err := app.New(cfg, app.Deps{
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Redis: e.rdb, JS: e.js, Verifier: verifier, Signer: signer,
			Metrics: prometheus.NewRegistry(), Partitions: partitions,
		})
		if err != nil {
			t.Fatal(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return ob.Run(ctx, lis)
	}
	refused := func(t *testing.T, err error, configured, recorded int) {
		t.Helper()
		var pe *redisx.PartitionsError
		if !errors.As(err, &pe) || pe.Configured != configured || pe.Recorded != recorded {
			t.Fatalf("start with %d on data of %d: %v, want a PartitionsError", configured, recorded, err)
		}
		// The operator reads what to do from the message.
		for _, want := range []string{"REDIS_PARTITIONS", strconv.Itoa(configured), strconv.Itoa(recorded), "chosen when a deployment is created"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message %q does not name %q", err, want)
			}
		}
	}
	t.Run("restart with 32 on data of 16", func(t *testing.T) {
		refused(t, run(t, 32), 32, 16)
	})
	t.Run("data from before the record counts as 16", func(t *testing.T) {
		if err := e.rdb.Del(context.Background(), "pm:ob:{ob0}:partitions").Err(); err != nil {
			t.Fatal(err)
		}
		refused(t, run(t, 64), 64, 16)
		if got := e.rdb.Get(context.Background(), "pm:ob:{ob0}:partitions").Val(); got != "16" {
			t.Errorf("record after the refused upgrade = %q, want 16", got)
		}
	})
}
