package redisstore_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// fullLaneStats reads what LaneStats reports the long way: every index of the lane in every
// partition, whatever the ready indexes say.
func fullLaneStats(t *testing.T, rdb *redis.Client, parts int, ln redisstore.Lane, now time.Time) (due, sending int64, oldest time.Time) {
	t.Helper()
	ctx := context.Background()
	nowMS := strconv.FormatInt(now.UnixMilli(), 10)
	first := int64(-1)
	for p := range parts {
		base := "pm:ob:{ob" + strconv.Itoa(p) + "}:t:" + ln.Tenant + ":due:" + ln.Connector + ":"
		for idx := range 4 {
			n, err := rdb.ZCount(ctx, base+strconv.Itoa(idx), "-inf", nowMS).Result()
			if err != nil {
				t.Fatal(err)
			}
			due += n
			if idx == 0 {
				s, err := rdb.ZCard(ctx, base+"0").Result()
				if err != nil {
					t.Fatal(err)
				}
				sending += s
				continue
			}
			zs, err := rdb.ZRangeWithScores(ctx, base+strconv.Itoa(idx), 0, 0).Result()
			if err != nil {
				t.Fatal(err)
			}
			if len(zs) > 0 && int64(zs[0].Score) <= now.UnixMilli() && (first < 0 || int64(zs[0].Score) < first) {
				first = int64(zs[0].Score)
			}
		}
	}
	if first >= 0 {
		oldest = time.UnixMilli(first)
	}
	return due, sending, oldest
}

// TestLaneStatsReadsOnlyLanesWithMail: LaneStats reads a lane's indexes only in the partitions
// whose ready index names the lane, and finds exactly what reading every index of every
// partition finds — with mail due, scheduled, claimed (SENDING, its lease running and run out)
// and sent, spread over partitions by the scripts that keep the ready indexes, and with lanes
// that never had mail.
func TestLaneStatsReadsOnlyLanesWithMail(t *testing.T) {
	const parts = 16
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	l := redisstore.New(rdb, 0, parts)
	lanes := []redisstore.Lane{
		{Tenant: "kanzlei", Connector: "relay"}, {Tenant: "kanzlei", Connector: "spaeter"},
		{Tenant: "notariat", Connector: "relay"}, {Tenant: "kanzlei", Connector: "nie"},
	}
	for i := range 60 {
		ln := lanes[i%3]
		due := t0.Add(-time.Duration(i) * time.Second)
		if ln.Connector == "spaeter" {
			due = t0.Add(time.Hour)
		}
		e := &redisstore.Email{ID: fmt.Sprintf("m-%d", i), Tenant: ln.Tenant, Status: outbox.StatusQueued, Priority: 1 + i%3, Due: due,
			Connector: ln.Connector, Version: 1, Buckets: []string{redisstore.BucketAll}}
		if _, _, err := l.Submit(ctx, e, ev); err != nil {
			t.Fatal(err)
		}
	}
	// kanzlei/relay: its mail of three partitions claimed at t0 (30 s leases), one email of
	// them sent.
	claimed := 0
	for p := range 3 {
		ln := lanes[0]
		cands, err := l.Heads(ctx, ln, []int{p}, t0, 100)
		if err != nil {
			t.Fatal(err)
		}
		got, err := l.ClaimLane(ctx, ln, []int{p}, cands, t0, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		claimed += len(got.Emails)
		if p == 0 && len(got.Emails) > 0 {
			e := &got.Emails[0]
			if err := l.Apply(ctx, e, result(policy.Decide(outbox.OutcomeSent, e.Attempts+1, e.Imported), t0), evf); err != nil {
				t.Fatal(err)
			}
			claimed--
		}
	}
	if claimed == 0 {
		t.Fatal("nothing claimed: the test's mail did not reach partitions 0-2")
	}
	for _, now := range []time.Time{t0.Add(10 * time.Second), t0.Add(time.Minute)} {
		stats, err := l.LaneStats(ctx, lanes, now)
		if err != nil {
			t.Fatal(err)
		}
		for i, st := range stats {
			due, sending, oldest := fullLaneStats(t, rdb, parts, lanes[i], now)
			if st.Lane != lanes[i] || st.Due != due || st.Sending != sending || !st.OldestDue.Equal(oldest) {
				t.Errorf("at %s, %v: LaneStats due %d sending %d oldest %s; every index says due %d sending %d oldest %s",
					now.Sub(t0), lanes[i], st.Due, st.Sending, st.OldestDue, due, sending, oldest)
			}
		}
		if stats[0].Sending != int64(claimed) {
			t.Errorf("at %s: %d SENDING, want the %d claimed and not sent", now.Sub(t0), stats[0].Sending, claimed)
		}
	}
}
