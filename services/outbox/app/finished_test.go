package app_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/testkit/poll"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	"github.com/postamt/postamt/services/outbox/app"
)

var (
	sentOnly      = []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_SENT}
	cancelledOnly = []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED}
)

// listPages lists every page of a filter with pages of size, failing t on an error, and returns
// the emails in the order listed and how many pages it took.
func (e *env) listPages(t *testing.T, ctx context.Context, view outboxv1.View, f *outboxv1.EmailFilter, size int32) ([]*outboxv1.Email, int) {
	t.Helper()
	var out []*outboxv1.Email
	tok := ""
	for pages := 1; ; pages++ {
		r, err := e.outbox.ListEmails(ctx, &outboxv1.ListEmailsRequest{View: view, Filter: f, PageSize: size, PageToken: tok})
		if err != nil {
			t.Fatalf("list %s %v: %v", view, f, err)
		}
		out = append(out, r.GetEmails()...)
		if tok = r.GetNextPageToken(); tok == "" {
			return out, pages
		}
		if pages > 100 {
			t.Fatal("the pages do not end")
		}
	}
}

// count counts a filter, failing t on an error.
func (e *env) count(t *testing.T, ctx context.Context, view outboxv1.View, f *outboxv1.EmailFilter) *outboxv1.CountEmailsResponse {
	t.Helper()
	r, err := e.outbox.CountEmails(ctx, &outboxv1.CountEmailsRequest{View: view, Filter: f})
	if err != nil {
		t.Fatalf("count %s %v: %v", view, f, err)
	}
	return r
}

func countOf(r *outboxv1.CountEmailsResponse, s outboxv1.EmailStatus) int64 {
	for _, c := range r.GetByStatus() {
		if c.GetStatus() == s {
			return c.GetCount()
		}
	}
	return 0
}

// TestFinishedMailCanBeFound: mail that went out through the relay (SENT) and mail that was
// cancelled are listed and counted by filter for as long as they are retained — newest final
// first, paged with tokens of their own kind — in the same views as open mail: another user,
// team or tenant sees none of it, and a record that expired is not listed. Actions refuse them.
func TestFinishedMailCanBeFound(t *testing.T) {
	e := startEnv(t)
	host, port := e.sinkHostPort()
	if _, err := e.outbox.CreateConnector(e.admin(), &outboxv1.CreateConnectorRequest{Connector: &outboxv1.Connector{
		ConnectorId: "zweit", Host: host, Port: port, TlsMode: outboxv1.TlsMode_TLS_MODE_NONE,
		RetryPattern: []*durationpb.Duration{durationpb.New(time.Minute)}, MaxAttempts: 3,
	}}); err != nil {
		t.Fatal(err)
	}
	max, martina, eva := e.as("max", []string{"empfang"}), e.as("martina", []string{"empfang"}), e.as("eva", nil)

	var batch, maxSent []string
	for i := range 5 {
		m := e.submit(max, email("max@kanzlei.example", fmt.Sprintf("mandant%d@example.com", i), fmt.Sprintf("Mahnlauf November %d", i)))
		batch = append(batch, m.GetEmailId())
	}
	viaZweit := email("max@kanzlei.example", "bank@example.com", "Ueberweisung")
	viaZweit.ConnectorId = "zweit"
	zweit := e.submit(max, viaZweit).GetEmailId()
	maxSent = append(slices.Clone(batch), zweit)
	fromInfo := e.submit(martina, email("info@kanzlei.example", "c@example.com", "Termin bestaetigt")).GetEmailId()
	fromEva := e.submit(eva, email("eva@kanzlei.example", "d@example.com", "Eva privat")).GetEmailId()
	later := email("max@kanzlei.example", "e@example.com", "Abgesagt")
	later.SendAt = timestamppb.New(time.Now().Add(time.Hour))
	cancelled := e.submit(max, later).GetEmailId()
	if r, err := e.outbox.Cancel(max, &outboxv1.CancelRequest{Selection: &outboxv1.Selection{EmailIds: []string{cancelled}}}); err != nil || r.GetResult().GetSucceeded() != 1 {
		t.Fatalf("cancel = %v (%v)", r, err)
	}
	allSent := append(slices.Clone(maxSent), fromInfo, fromEva)
	for _, id := range allSent {
		e.waitStatus(e.admin(), id, outboxv1.EmailStatus_EMAIL_STATUS_SENT)
	}
	e.sink.WaitForMessages(t, len(allSent), 30*time.Second)

	t.Run("listed by status and filter, newest final first, page by page", func(t *testing.T) {
		got, pages := e.listPages(t, e.admin(), outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{Statuses: sentOnly}, 3)
		if !slices.Equal(ids(got), sorted(allSent...)) || pages != 3 {
			t.Fatalf("admin's sent mail: %v in %d pages, want %v in 3", ids(got), pages, sorted(allSent...))
		}
		if !slices.IsSortedFunc(got, func(a, b *outboxv1.Email) int { return b.GetSentTime().AsTime().Compare(a.GetSentTime().AsTime()) }) {
			t.Error("not listed newest sent first")
		}
		for _, tc := range []struct {
			name string
			ctx  context.Context
			view outboxv1.View
			f    *outboxv1.EmailFilter
			want []string
		}{
			{"the batch by text", e.admin(), outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{Statuses: sentOnly, Text: "mahnlauf"}, sorted(batch...)},
			{"by connector", e.admin(), outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{Statuses: sentOnly, ConnectorId: "zweit"}, []string{zweit}},
			{"max MINE", max, outboxv1.View_VIEW_MINE, &outboxv1.EmailFilter{Statuses: sentOnly}, sorted(maxSent...)},
			{"max cancelled", max, outboxv1.View_VIEW_MINE, &outboxv1.EmailFilter{Statuses: cancelledOnly}, []string{cancelled}},
			{"martina TEAM, both final statuses", martina, outboxv1.View_VIEW_TEAM, &outboxv1.EmailFilter{Statuses: append(slices.Clone(sentOnly), cancelledOnly...)}, sorted(append(slices.Clone(maxSent), fromInfo, cancelled)...)},
			{"eva ALL: her own only", eva, outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{Statuses: sentOnly}, []string{fromEva}},
			{"eva TEAM: none", eva, outboxv1.View_VIEW_TEAM, &outboxv1.EmailFilter{Statuses: sentOnly}, nil},
			{"eva MINE by the batch's text: none", eva, outboxv1.View_VIEW_MINE, &outboxv1.EmailFilter{Statuses: sentOnly, Text: "mahnlauf"}, nil},
			{"another tenant's admin: none", authtestOther(e), outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{Statuses: sentOnly}, nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, _ := e.listPages(t, tc.ctx, tc.view, tc.f, 2)
				if !slices.Equal(ids(got), tc.want) {
					t.Errorf("listed %v, want %v", ids(got), tc.want)
				}
				c := e.count(t, tc.ctx, tc.view, tc.f)
				if c.GetTotal() != int64(len(tc.want)) {
					t.Errorf("counted %v, want %d", c, len(tc.want))
				}
			})
		}
	})

	t.Run("counted per final status", func(t *testing.T) {
		c := e.count(t, e.admin(), outboxv1.View_VIEW_ALL, &outboxv1.EmailFilter{Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED, outboxv1.EmailStatus_EMAIL_STATUS_SENT}})
		if countOf(c, outboxv1.EmailStatus_EMAIL_STATUS_SENT) != int64(len(allSent)) || countOf(c, outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED) != 1 || c.GetTotal() != int64(len(allSent))+1 {
			t.Errorf("counts %v, want %d sent and 1 cancelled", c, len(allSent))
		}
		if open := e.count(t, e.admin(), outboxv1.View_VIEW_ALL, nil); open.GetTotal() != 0 {
			t.Errorf("the badge counts %v, want no open mail", open)
		}
	})

	t.Run("tokens are of their own kind", func(t *testing.T) {
		f := &outboxv1.EmailFilter{Statuses: sentOnly}
		r, err := e.outbox.ListEmails(e.admin(), &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: f, PageSize: 1})
		if err != nil || r.GetNextPageToken() == "" {
			t.Fatalf("first page: %v (%v)", r, err)
		}
		_, err = e.outbox.ListEmails(e.admin(), &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, PageSize: 1, PageToken: r.GetNextPageToken()})
		code(t, err, codes.InvalidArgument)
		_, err = e.outbox.ListEmails(e.admin(), &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: f, Order: outboxv1.EmailOrder_EMAIL_ORDER_SUBMIT_TIME_DESC, PageSize: 1, PageToken: r.GetNextPageToken()})
		code(t, err, codes.InvalidArgument)
	})

	t.Run("refused: mixed statuses, orders finished mail is not kept in, actions", func(t *testing.T) {
		mixed := &outboxv1.EmailFilter{Statuses: []outboxv1.EmailStatus{outboxv1.EmailStatus_EMAIL_STATUS_SENT, outboxv1.EmailStatus_EMAIL_STATUS_FAILED}}
		_, err := e.outbox.ListEmails(e.admin(), &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: mixed})
		if st := code(t, err, codes.InvalidArgument); !slices.Contains(fields(st), "filter.statuses") {
			t.Errorf("mixed statuses: fields %v, want filter.statuses", fields(st))
		}
		_, err = e.outbox.CountEmails(e.admin(), &outboxv1.CountEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: mixed})
		code(t, err, codes.InvalidArgument)
		for _, o := range []outboxv1.EmailOrder{outboxv1.EmailOrder_EMAIL_ORDER_DUE_TIME, outboxv1.EmailOrder_EMAIL_ORDER_SUBMIT_TIME_DESC, outboxv1.EmailOrder_EMAIL_ORDER_LAST_ATTEMPT_TIME_DESC} {
			_, err := e.outbox.ListEmails(e.admin(), &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{Statuses: sentOnly}, Order: o})
			if st := code(t, err, codes.InvalidArgument); !slices.Contains(fields(st), "order") {
				t.Errorf("%s: fields %v, want order", o, fields(st))
			}
		}
		sel := &outboxv1.Selection{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{Statuses: sentOnly}}
		_, err = e.outbox.Retry(e.admin(), &outboxv1.RetryRequest{Selection: sel})
		if st := code(t, err, codes.InvalidArgument); !slices.Contains(fields(st), "filter.statuses") {
			t.Errorf("retry: fields %v, want filter.statuses", fields(st))
		}
		_, err = e.outbox.Cancel(e.admin(), &outboxv1.CancelRequest{Selection: &outboxv1.Selection{View: outboxv1.View_VIEW_ALL, Filter: &outboxv1.EmailFilter{Statuses: cancelledOnly}}})
		code(t, err, codes.InvalidArgument)
	})

	t.Run("a record past its retention is not listed", func(t *testing.T) {
		// The record of one email of the batch expires (its retention is an hour here; the key is
		// deleted as its TTL would): its index entry stays until trimmed, and readers skip it.
		keys, err := allKeys(context.Background(), e.rdb, "pm:ob:*:e:"+batch[0])
		if err != nil || len(keys) != 1 {
			t.Fatalf("record key of %s: %v (%v)", batch[0], keys, err)
		}
		if ttl := e.rdb.PTTL(context.Background(), keys[0]).Val(); ttl <= 0 || ttl > time.Hour {
			t.Fatalf("sent record's TTL %s, want the retention", ttl)
		}
		if err := e.rdb.Del(context.Background(), keys[0]).Err(); err != nil {
			t.Fatal(err)
		}
		got, _ := e.listPages(t, max, outboxv1.View_VIEW_MINE, &outboxv1.EmailFilter{Statuses: sentOnly, Text: "Mahnlauf"}, 2)
		if want := sorted(batch[1:]...); !slices.Equal(ids(got), want) {
			t.Errorf("listed %v, want %v", ids(got), want)
		}
		got, _ = e.listPages(t, max, outboxv1.View_VIEW_MINE, &outboxv1.EmailFilter{Statuses: sentOnly}, 1)
		if len(got) != len(maxSent)-1 {
			t.Errorf("listed %v, want the %d left", ids(got), len(maxSent)-1)
		}
	})
}

// TestFinishedMailFilterScanBound: a filter the finished indexes do not answer reads a bounded
// number of records per page (OUTBOX_MAX_FILTER_SCAN, in chunks of 200) — a page may come back
// short, with a token that goes on to the match — and a count with such a filter over more mail
// is FILTER_TOO_BROAD.
func TestFinishedMailFilterScanBound(t *testing.T) {
	e := startEnv(t, func(c *app.Config) { c.MaxFilterScan = 100 })
	eva := e.as("eva", nil)
	needle := e.submit(eva, email("eva@kanzlei.example", "a@example.com", "Die Nadel")).GetEmailId()
	e.waitStatus(eva, needle, outboxv1.EmailStatus_EMAIL_STATUS_SENT)
	const hay = 250 // more than a page's read of 200 records (List reads in chunks of 200)
	for i := range hay {
		e.submit(eva, email("eva@kanzlei.example", "b@example.com", fmt.Sprintf("Heu %d", i)))
	}
	poll.Eventually(t, "every email sent", func() bool {
		return e.count(t, eva, outboxv1.View_VIEW_MINE, &outboxv1.EmailFilter{Statuses: sentOnly}).GetTotal() == hay+1
	})

	f := &outboxv1.EmailFilter{Statuses: sentOnly, Text: "nadel"}
	r, err := e.outbox.ListEmails(eva, &outboxv1.ListEmailsRequest{View: outboxv1.View_VIEW_MINE, Filter: f, PageSize: 10})
	if err != nil || len(r.GetEmails()) != 0 || r.GetNextPageToken() == "" {
		t.Fatalf("first page = %v (%v), want a short page with a token (the needle is the oldest)", ids(r.GetEmails()), err)
	}
	got, _ := e.listPages(t, eva, outboxv1.View_VIEW_MINE, f, 10)
	if !slices.Equal(ids(got), []string{needle}) {
		t.Errorf("listed %v, want the needle", ids(got))
	}
	_, err = e.outbox.CountEmails(eva, &outboxv1.CountEmailsRequest{View: outboxv1.View_VIEW_MINE, Filter: f})
	code(t, err, codes.FailedPrecondition)
}

// allKeys is KEYS pattern over the whole keyspace: on a cluster client KEYS asks one node, so
// every master is asked.
func allKeys(ctx context.Context, rdb redis.UniversalClient, pattern string) ([]string, error) {
	c, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return rdb.Keys(ctx, pattern).Result()
	}
	var (
		mu  sync.Mutex
		all []string
	)
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		keys, err := m.Keys(ctx, pattern).Result()
		mu.Lock()
		all = append(all, keys...)
		mu.Unlock()
		return err
	})
	return all, err
}
