package redisstore_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// BenchmarkLaneStats measures one sample of the outbox's connector gauges (LaneStats, which
// the one sampling replica runs every OUTBOX_METRICS_INTERVAL) as connectors and partitions
// grow: a ZRANGE of each partition's ready index, a GET per lane, and 8 pipelined reads per
// (lane, partition) pair that holds mail. "busy": every lane has mail due and in SENDING in
// every partition (the worst case: lanes × partitions pairs); "idle": 10 lanes have mail in
// every partition, the others none (most connectors of most tenants, most of the time). It says
// what an interval costs Redis and the sampling replica at a deployment's size
// (docs/operations.md, "Series and their bounds"). Reported per sample: redis-cmds (commands
// sent) and redis-cpu-µs (redis-server's user+system CPU, from INFO cpu), beside ns/op (the
// wall time of both pipelines, client included).
//
//	cd services/outbox && go test -run '^$' -bench LaneStats -benchtime 20x ./internal/redisstore/
func BenchmarkLaneStats(b *testing.B) {
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	ctx := context.Background()
	for _, parts := range []int{16, 64} {
		for _, lanes := range []int{10, 200, 1000} {
			for _, busy := range []bool{true, false} {
				withMail := lanes
				if !busy {
					if lanes <= 10 {
						continue
					}
					withMail = 10
				}
				b.Run(fmt.Sprintf("partitions=%d/connectors=%d/with-mail=%d", parts, lanes, withMail), func(b *testing.B) {
					if err := rdb.FlushAll(ctx).Err(); err != nil {
						b.Fatal(err)
					}
					now := time.Now()
					ls := benchLanes(b, rdb, lanes, withMail, parts, now)
					l := redisstore.New(rdb, 0, parts)
					cpu0 := redistest.CPU(b, rdb)
					b.ResetTimer()
					for b.Loop() {
						if _, err := l.LaneStats(ctx, ls, now); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					b.ReportMetric(float64(parts+lanes+withMail*parts*8), "redis-cmds/op")
					b.ReportMetric(float64((redistest.CPU(b, rdb)-cpu0).Microseconds())/float64(b.N), "redis-cpu-µs/op")
				})
			}
		}
	}
}

// benchLanes makes lanes connectors (ten per tenant), the first withMail of them with one email
// due a second ago and one in SENDING in every partition, written straight into the indexes
// (and the ready index) whose names the ledger documents.
func benchLanes(b *testing.B, rdb *redis.Client, lanes, withMail, parts int, now time.Time) []redisstore.Lane {
	b.Helper()
	ctx := context.Background()
	out := make([]redisstore.Lane, lanes)
	pipe := rdb.Pipeline()
	for i := range out {
		out[i] = redisstore.Lane{Tenant: "tenant-" + strconv.Itoa(i/10), Connector: "relay-" + strconv.Itoa(i%10)}
		for p := range parts {
			if i >= withMail {
				break
			}
			tag := "pm:ob:{ob" + strconv.Itoa(p) + "}"
			base := tag + ":t:" + out[i].Tenant + ":due:" + out[i].Connector + ":"
			pipe.ZAdd(ctx, tag+":rdy", redis.Z{Score: float64(now.Add(-time.Second).UnixMilli()), Member: out[i].Member()})
			pipe.ZAdd(ctx, base+"2", redis.Z{Score: float64(now.Add(-time.Second).UnixMilli()), Member: "due-" + strconv.Itoa(i)})
			pipe.ZAdd(ctx, base+"0", redis.Z{Score: float64(now.Add(time.Minute).UnixMilli()), Member: "sending-" + strconv.Itoa(i)})
		}
		if pipe.Len() > 10000 {
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		b.Fatal(err)
	}
	return out
}
