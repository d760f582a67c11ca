package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/postamt/postamt/internal/auth"
	"github.com/postamt/postamt/internal/testkit/authtest"
	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/servetest"
	mailboxv1 "github.com/postamt/postamt/proto/gen/postamt/mailbox/v1"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
	trackerv1 "github.com/postamt/postamt/proto/gen/postamt/tracker/v1"
	mailboxapp "github.com/postamt/postamt/services/mailbox/app"
	trackerapp "github.com/postamt/postamt/services/tracker/app"
)

// The P6 workload: one tenant with p6Users users, each with a personal mailbox (all but the
// last two synchronise with Exchange), p6Records CRM records, and p6Seeds tracked emails that
// the measured replies answer.
const (
	p6Tenant  = "kanzlei"
	p6Users   = 20
	p6Records = 10_000
	p6Seeds   = 2_000
	// Names of the outbox's stream, subject and the tracker's durable consumer (the tracker
	// creates them; the benchmark only publishes and watches).
	p6Stream    = "POSTAMT_OUTBOX"
	p6Subject   = "postamt.outbox.v1.EmailSent"
	p6Durable   = "tracker-sent"
	p6EventsKey = "pm:tr:{tr%d}:events"
	// p6PublishWindow is how many publishes may wait for JetStream's acknowledgement.
	p6PublishWindow = 2000
)

// p6Options are the users' acceptance options by user index (-1: never set, the default 1);
// users 18 and 19 have mailboxes without server-side sync.
var p6Options = [p6Users]int32{0, 0, 0, 0, 1, 1, -1, -1, 2, 2, 2, 2, 3, 3, 3, 3, 4, -1, 0, 2}

// trackerSuite is mailbox and tracker wired as in production on a spawned Redis and an embedded
// JetStream; pub is a JetStream connection of its own standing for the outbox's relay.
type trackerSuite struct {
	rdb *redis.Client
	js  jetstream.JetStream
	pub jetstream.JetStream
}

func startTrackerSuite(b *testing.B) *trackerSuite {
	b.Helper()
	rs := redistest.Start(b)
	ns := natstest.Start(b)
	s := &trackerSuite{rdb: rs.Client(b), js: ns.JetStream(b), pub: ns.JetStream(b)}
	verifier, signer := authtest.Keys(b)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	mb, err := mailboxapp.New(mailboxapp.Config{RelayBatch: 256, RelayClaimIdle: 30 * time.Second}, mailboxapp.Deps{
		Logger: logger, Redis: s.rdb, JS: s.js, Verifier: verifier, Metrics: prometheus.NewRegistry(), Partitions: benchPartitions,
	})
	if err != nil {
		b.Fatal(err)
	}
	mbAddr := servetest.Run(b, mb.Run)
	mbc := mailboxv1.NewMailboxServiceClient(servetest.Dial(b, mbAddr))
	tr, err := trackerapp.New(trackerapp.Config{
		MailboxAddr: mbAddr, SyncKindCacheTTL: 5 * time.Minute, DecisionRetention: 168 * time.Hour, ConsumeSent: true,
		RelayBatch: 256, RelayClaimIdle: 30 * time.Second, JournalDomain: "localhost", JournalMaxBytes: 25 << 20,
	}, trackerapp.Deps{
		Logger: logger, Redis: s.rdb, JS: s.js, Verifier: verifier, Signer: signer, Metrics: prometheus.NewRegistry(), Partitions: benchPartitions,
	})
	if err != nil {
		b.Fatal(err)
	}
	tc := trackerv1.NewTrackerServiceClient(servetest.Dial(b, servetest.Run(b, tr.Run)))

	admin := authtest.Outgoing(b, signer, auth.Principal{Tenant: p6Tenant, User: "admin", Roles: []string{auth.RoleAdmin, "operator"}})
	crm := authtest.Outgoing(b, signer, auth.Principal{Tenant: p6Tenant, Service: "crm"})
	must := func(_ any, err error) {
		b.Helper()
		if err != nil {
			b.Fatal(err)
		}
	}
	must(mbc.CreateTenant(admin, &mailboxv1.CreateTenantRequest{Tenant: &mailboxv1.Tenant{TenantId: p6Tenant}}))
	for u := range p6Users {
		id := p6User(u)
		sync := mailboxv1.SyncKind_SYNC_KIND_EXCHANGE
		if u >= p6Users-2 {
			sync = mailboxv1.SyncKind_SYNC_KIND_NONE
		}
		must(mbc.CreateUser(admin, &mailboxv1.CreateUserRequest{User: &mailboxv1.User{UserId: id, DisplayName: id, Email: id + "@kanzlei.example"}}))
		must(mbc.CreateMailbox(admin, &mailboxv1.CreateMailboxRequest{Mailbox: &mailboxv1.Mailbox{
			MailboxId: "p-" + id, Address: id + "@kanzlei.example", DisplayName: id, Kind: mailboxv1.MailboxKind_MAILBOX_KIND_PERSONAL,
			OwnerUserId: id, SyncKind: sync,
		}}))
		if opt := p6Options[u]; opt >= 0 {
			must(tc.UpdateUserSettings(admin, &trackerv1.UpdateUserSettingsRequest{Settings: &trackerv1.UserSettings{UserId: id, AcceptanceOption: &opt}}))
		}
	}
	must(tc.UpdateOrgSettings(admin, &trackerv1.UpdateOrgSettingsRequest{
		Settings:   &trackerv1.OrgSettings{AutoTrackSentFolderItems: true},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"auto_track_sent_folder_items"}},
	}))

	// Records: 70 % contacts, 10 % each leads, accounts and another email-enabled type; every
	// 200th pair of records shares a second address (ambiguous).
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= p6Records {
					return
				}
				r := &trackerv1.Record{RecordId: fmt.Sprintf("r-%05d", i), DisplayName: fmt.Sprintf("Kunde %d", i), EmailAddresses: []string{p6RecordAddr(i)}}
				switch i % 10 {
				case 7:
					r.Kind = trackerv1.RecordKind_RECORD_KIND_LEAD
				case 8:
					r.Kind = trackerv1.RecordKind_RECORD_KIND_ACCOUNT
				case 9:
					r.Kind, r.EntityType = trackerv1.RecordKind_RECORD_KIND_OTHER, "matter"
				default:
					r.Kind = trackerv1.RecordKind_RECORD_KIND_CONTACT
				}
				if i%200 < 2 {
					r.EmailAddresses = append(r.EmailAddresses, fmt.Sprintf("gemeinsam%05d@kunde.example", i/200))
				}
				if _, err := tc.UpsertRecord(crm, &trackerv1.UpsertRecordRequest{Record: r}); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatalf("upsert record: %v", *err)
	}
	return s
}

func p6User(u int) string            { return fmt.Sprintf("u%02d", u) }
func p6RecordAddr(i int) string      { return fmt.Sprintf("k%05d@kunde.example", i) }
func p6SeedID(run, i int) string     { return fmt.Sprintf("seed%d-%05d@kanzlei.example", run, i) }
func p6SeedTo(i int) string          { return p6RecordAddr(i * 37 % p6Records) }
func p6SeedSubject(i int) string     { return fmt.Sprintf("Ihre Akte %d", i) }
func p6SeedThread(run, i int) string { return fmt.Sprintf("conv-seed%d-%d", run, i) }

// p6Event builds the i-th measured EmailSent of a run:
//   - 30 %: a reply to one of the seeded tracked emails (In-Reply-To, References, its thread);
//   - 40 %: new mail to one or two CRM records (a quarter of them with a Cc that is ambiguous);
//   - 30 %: new mail to an unknown address.
//
// Senders rotate over the users, so every acceptance option and both sync kinds occur.
func p6Event(run, i int, sent time.Time) *outboxv1.EmailSent {
	u := i % p6Users
	id := p6User(u)
	ev := &outboxv1.EmailSent{
		TenantId: p6Tenant, EmailId: fmt.Sprintf("r%d-e%d", run, i), Version: 3,
		MessageId:    fmt.Sprintf("p6-%d-%d@kanzlei.example", run, i),
		SenderUserId: id, MailboxId: "p-" + id, FromAddress: id + "@kanzlei.example",
		SentTime: timestamppb.New(sent), Mode: outboxv1.SendMode_SEND_MODE_OWNER,
		ConversationId: fmt.Sprintf("conv-%d-%d", run, i),
	}
	h := i * 2654435761 % 1_000_003
	switch i % 10 {
	case 0, 1, 2:
		s := h % p6Seeds
		seed := p6SeedID(run, s)
		ev.To, ev.Subject = []string{p6SeedTo(s)}, "AW: "+p6SeedSubject(s)
		ev.InReplyTo, ev.References, ev.ConversationId = seed, []string{seed}, p6SeedThread(run, s)
	case 3, 4, 5, 6:
		ev.To, ev.Subject = []string{p6RecordAddr(h % p6Records)}, fmt.Sprintf("Unterlagen %d", i)
		if i%4 == 0 {
			ev.Cc = []string{fmt.Sprintf("gemeinsam%05d@kunde.example", h%(p6Records/200))}
		}
	default:
		ev.To, ev.Subject = []string{fmt.Sprintf("unbekannt%d@example.net", h)}, fmt.Sprintf("Anfrage %d", i)
	}
	return ev
}

// p6Seed is the s-th seeded email: sent by u00 (option 0, Exchange) to a record, so it is
// tracked and the measured replies correlate with it.
func p6Seed(run, s int, sent time.Time) *outboxv1.EmailSent {
	return &outboxv1.EmailSent{
		TenantId: p6Tenant, EmailId: fmt.Sprintf("r%d-s%d", run, s), Version: 3, MessageId: p6SeedID(run, s),
		SenderUserId: "u00", MailboxId: "p-u00", FromAddress: "u00@kanzlei.example", To: []string{p6SeedTo(s)},
		Subject: p6SeedSubject(s), SentTime: timestamppb.New(sent), Mode: outboxv1.SendMode_SEND_MODE_OWNER,
		ConversationId: p6SeedThread(run, s),
	}
}

// publish publishes the events as the outbox's relay does (Nats-Msg-Id, tenant header), in
// windows of p6PublishWindow unacknowledged ones, and returns the stream sequence of the last.
func (s *trackerSuite) publish(b *testing.B, evs []*nats.Msg) uint64 {
	b.Helper()
	var lastAck jetstream.PubAckFuture
	for i, m := range evs {
		f, err := s.pub.PublishMsgAsync(m)
		if err != nil {
			b.Fatalf("publish: %v", err)
		}
		lastAck = f
		if i%p6PublishWindow == p6PublishWindow-1 || i == len(evs)-1 {
			select {
			case <-s.pub.PublishAsyncComplete():
			case <-time.After(time.Minute):
				b.Fatal("publishing did not complete within a minute")
			}
		}
	}
	select {
	case ack := <-lastAck.Ok():
		return ack.Sequence
	case err := <-lastAck.Err():
		b.Fatalf("publish: %v", err)
	}
	return 0
}

func p6Msgs(b *testing.B, evs []*outboxv1.EmailSent) []*nats.Msg {
	b.Helper()
	out := make([]*nats.Msg, len(evs))
	for i, ev := range evs {
		data, err := proto.Marshal(ev)
		if err != nil {
			b.Fatal(err)
		}
		m := &nats.Msg{Subject: p6Subject, Data: data, Header: nats.Header{}}
		m.Header.Set(nats.MsgIdHdr, ev.GetTenantId()+":email:"+ev.GetEmailId()+":3")
		m.Header.Set("Postamt-Tenant", ev.GetTenantId())
		out[i] = m
	}
	return out
}

// waitConsumer waits until the tracker's consumer has acknowledged every message up to stream
// sequence last (the decision of each is written before its acknowledgement), and returns how
// many deliveries were redeliveries. It asks every 10 ms: JetStream API requests cost the
// embedded server CPU that the tracker would otherwise have.
func (s *trackerSuite) waitConsumer(b *testing.B, last uint64) int {
	b.Helper()
	ctx := context.Background()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(10 * time.Minute)
	var c jetstream.Consumer
	for range tick.C {
		if time.Now().After(deadline) {
			b.Fatal("the tracker did not acknowledge every EmailSent within 10 minutes")
		}
		var err error
		if c == nil {
			if c, err = s.js.Consumer(ctx, p6Stream, p6Durable); err != nil {
				c = nil
				continue
			}
		}
		ci, err := c.Info(ctx)
		if err != nil {
			continue
		}
		if ci.AckFloor.Stream >= last && ci.NumAckPending == 0 {
			return ci.NumRedelivered
		}
	}
	return 0
}

// trackedOnJetStream is the number of messages on the tracker's stream.
func (s *trackerSuite) trackedOnJetStream(b *testing.B) uint64 {
	b.Helper()
	st, err := s.js.Stream(context.Background(), "POSTAMT_TRACKER")
	if err != nil {
		b.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	return info.State.Msgs
}

// countKeys counts the keys matching pattern.
func countKeys(b *testing.B, rdb *redis.Client, pattern string) int {
	b.Helper()
	ctx := context.Background()
	n := 0
	iter := rdb.Scan(ctx, 0, pattern, 10_000).Iterator()
	for iter.Next(ctx) {
		n++
	}
	if err := iter.Err(); err != nil {
		b.Fatal(err)
	}
	return n
}

// startCPUProfile profiles this process into file until the returned function or
// pprof.StopCPUProfile is called (POSTAMT_BENCH_P6_CPUPROFILE: only the measured window, unlike
// go test -cpuprofile, which includes the setup).
func startCPUProfile(b *testing.B, file string) func() {
	b.Helper()
	f, err := os.Create(file)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() { pprof.StopCPUProfile(); _ = f.Close() }
}

// processCPU is this process's CPU time so far (user + system).
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkP6TrackerIngest measures DESIGN.md §5 P6: the outbox's EmailSent events evaluated
// end to end from JetStream by the tracker wired as in production (services/tracker/app with
// its durable consumer, the mailbox service asked for sync kinds through its cache, the
// EmailTracked relay running), on a spawned Redis and an embedded JetStream, everything on this
// machine. The tenant has auto-tracking on, 20 users with every acceptance option, 10,000 CRM
// records and 2,000 tracked emails (published and evaluated before the clock starts).
//
// The clock runs from the first publish of POSTAMT_BENCH_P6_N events (default 100,000; 30 %
// replies to tracked mail, 40 % mail to records, 30 % to unknown addresses) until the consumer
// has acknowledged the last one, which it does only after the decision (the tracked email with
// its EmailTracked event, or the kept explanation of an untracked one) is written to Redis.
// Figures: events/s; publish-s, the time the publisher alone took; the whole process's heap
// allocations and CPU per event (tracker, mailbox, embedded NATS server and publisher), and
// redis-server's CPU per event; tracked-%; relay-lag-s, how much later the last EmailTracked
// was on JetStream.
func BenchmarkP6TrackerIngest(b *testing.B) {
	n := envInt("POSTAMT_BENCH_P6_N", 100_000)
	for run := range b.N {
		b.StopTimer()
		s := startTrackerSuite(b)
		ctx := context.Background()
		now := time.Now()
		seeds := make([]*outboxv1.EmailSent, p6Seeds)
		for i := range seeds {
			seeds[i] = p6Seed(run, i, now.Add(-time.Hour))
		}
		s.waitConsumer(b, s.publish(b, p6Msgs(b, seeds)))
		if got := countKeys(b, s.rdb, fmt.Sprintf("pm:tr:*:t:%s:m:seed%d-*", p6Tenant, run)); got != p6Seeds {
			b.Fatalf("%d of %d seeded emails tracked", got, p6Seeds)
		}
		evs := make([]*outboxv1.EmailSent, n)
		for i := range evs {
			evs[i] = p6Event(run, i, now)
		}
		msgs := p6Msgs(b, evs)
		trackedBefore := s.trackedOnJetStream(b)
		runtime.GC()

		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		cpu0, rcpu0 := processCPU(), redistest.CPU(b, s.rdb)
		if os.Getenv("POSTAMT_BENCH_P6_STATS") != "" {
			s.rdb.ConfigResetStat(ctx)
		}
		if f := os.Getenv("POSTAMT_BENCH_P6_CPUPROFILE"); f != "" {
			stop := startCPUProfile(b, f)
			defer stop()
		}
		b.StartTimer()
		start := time.Now()
		last := s.publish(b, msgs)
		published := time.Since(start)
		redelivered := s.waitConsumer(b, last)
		elapsed := time.Since(start)
		b.StopTimer()
		if f := os.Getenv("POSTAMT_BENCH_P6_CPUPROFILE"); f != "" {
			pprof.StopCPUProfile()
		}
		cpu1, rcpu1 := processCPU(), redistest.CPU(b, s.rdb)
		runtime.ReadMemStats(&ms1)

		if os.Getenv("POSTAMT_BENCH_P6_STATS") != "" {
			b.Logf("redis commands in the measured window:\n%s", s.rdb.Info(ctx, "commandstats").Val())
		}
		tracked := countKeys(b, s.rdb, fmt.Sprintf("pm:tr:*:t:%s:m:p6-%d-*", p6Tenant, run))
		untracked := countKeys(b, s.rdb, fmt.Sprintf("pm:tr:*:t:%s:d:p6-%d-*", p6Tenant, run))
		if tracked+untracked != n {
			b.Fatalf("%d tracked + %d untracked decisions, want %d", tracked, untracked, n)
		}
		// The relay publishes the EmailTracked events; wait for the last.
		tick := time.NewTicker(5 * time.Millisecond)
		for s.trackedOnJetStream(b)-trackedBefore < uint64(tracked) {
			if time.Since(start) > 10*time.Minute {
				b.Fatal("the relay did not publish every EmailTracked within 10 minutes")
			}
			<-tick.C
		}
		tick.Stop()
		relayLag := time.Since(start) - elapsed
		for p := range benchPartitions {
			if l := s.rdb.XLen(ctx, fmt.Sprintf(p6EventsKey, p)).Val(); l > 0 {
				b.Logf("partition %d: %d events not yet deleted by the relay", p, l)
			}
		}

		fn := float64(n)
		b.ReportMetric(fn/elapsed.Seconds(), "events/s")
		b.ReportMetric(published.Seconds(), "publish-s")
		b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/fn, "allocs/event")
		b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/fn, "B/event")
		b.ReportMetric(float64((cpu1-cpu0).Microseconds())/fn, "go-cpu-µs/event")
		b.ReportMetric(float64((rcpu1-rcpu0).Microseconds())/fn, "redis-cpu-µs/event")
		b.ReportMetric(100*float64(tracked)/fn, "tracked-%")
		b.ReportMetric(relayLag.Seconds(), "relay-lag-s")
		b.ReportMetric(float64(redelivered), "redelivered")
	}
}
