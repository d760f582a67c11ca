package faults_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/postamt/postamt/faults/harness"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	outboxv1 "github.com/postamt/postamt/proto/gen/postamt/outbox/v1"
)

// TestRestoreDrill (issue 19) is the restore drill of docs/operations.md ("Restore drill: a
// single Redis and NATS server"), step by step with the runbook's commands: mail in every state
// the outbox keeps between submit and its end (SENT, FAILED, CANCELLED, PENDING_RETRY,
// CONNECTOR_DISABLED, SCHEDULED, and QUEUED behind stopped dispatchers); the dispatchers
// stopped; a Redis backup (`redis-cli --rdb`) and then a JetStream one (the stopped server's
// store directory, `cp -a`); every process killed and both data directories deleted; Redis
// restored from the RDB (started with the append-only file off, AOF switched on with CONFIG
// SET, restarted as configured) and NATS from the copied store; the services started again.
// Right after the restore every email is in the status it had at the backup; then the failing
// relay recovers, the disabled connector is enabled and the scheduled mail is sent now, and
// Check finds every email to be sent at the relays exactly once (no UNKNOWN attempt, no
// copy from before the backup sent again), the FAILED and CANCELLED mail never sent, one
// EmailSent per SENT email in the restored stream and the sent view in agreement.
//
// What the drill does not cover: mail in SENDING at the backup (the dispatchers are stopped
// first, as the runbook says, so that nothing is sent between the backup and the disaster;
// mail sent after a backup is sent again after its restore, see "What a restore loses"), and a
// Redis Cluster or a NATS cluster (their commands are in "Backup and restore").
func TestRestoreDrill(t *testing.T) {
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Skip("the drill takes the Redis backup with redis-cli (Debian: redis-tools)")
	}
	const n = 6
	s := harness.Start(t, harness.Options{Dispatchers: 1})
	s.Describe(fmt.Sprintf("%d emails in each state: SENT, FAILED, CANCELLED, PENDING_RETRY, CONNECTOR_DISABLED, SCHEDULED (due in 45 s and in 1 h), QUEUED", n),
		"backup (redis-cli --rdb, JetStream store copy), every process killed and both data directories deleted, restored per the runbook")

	ok := s.NewRelay(t)
	refusing := s.NewRelay(t)
	refusing.Script(smtptest.StageRcpt, func(string, int) smtptest.Behavior { return smtptest.PermFailRcpt })
	flaky := s.NewRelay(t)
	var down atomic.Bool
	down.Store(true)
	flakySeen := flaky.Script(smtptest.StageData, func(string, int) smtptest.Behavior {
		if down.Load() {
			return smtptest.TempFailData
		}
		return smtptest.Accept
	})
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "default", Relay: ok})
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "abgelehnt", Relay: refusing})
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "wackelig", Relay: flaky, RetryPattern: []time.Duration{time.Hour}})
	s.CreateConnector(t, harness.Connector{Tenant: tenant, ID: "pausiert", Relay: ok, Disabled: true})

	batch := func(name, connector string, sendAt time.Time) []harness.Submitted {
		return s.Submit(t, harness.Batch{Tenant: tenant, Connector: connector, N: n, SendAt: sendAt, Subject: "Drill " + name})
	}
	sent := batch("sent", "default", time.Time{})
	refused := batch("refused", "abgelehnt", time.Time{})
	retrying := batch("retrying", "wackelig", time.Time{})
	disabledMail := batch("disabled", "pausiert", time.Time{})
	soon := batch("soon", "default", time.Now().Add(45*time.Second))
	later := batch("later", "default", time.Now().Add(time.Hour))
	cancelled := batch("cancelled", "default", time.Now().Add(time.Hour))
	if _, err := s.Outbox().Cancel(s.Admin(tenant), &outboxv1.CancelRequest{Selection: &outboxv1.Selection{EmailIds: ids(cancelled)}}); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	harness.Must(t, "the SENT, FAILED and PENDING_RETRY mail", 60*time.Second, func() bool {
		c, err := s.StatusCounts(tenant)
		return err == nil && ok.Distinct() == n && c[failed] == n &&
			c[outboxv1.EmailStatus_EMAIL_STATUS_PENDING_RETRY] == n && flakySeen.Total() == n
	})

	// Runbook step 1: stop dispatching, so that nothing is sent between the backup and the
	// disaster. Mail submitted now stays QUEUED.
	for name, e := range s.StopDispatchers(stopWaitDrill) {
		t.Logf("%s stopped: %s", name, e)
	}
	queued := batch("queued", "default", time.Time{})
	all := concat(sent, refused, retrying, disabledMail, soon, later, cancelled, queued)
	atBackup := statuses(t, s, all)
	want := map[string]outboxv1.EmailStatus{}
	for _, g := range []struct {
		mail []harness.Submitted
		st   outboxv1.EmailStatus
	}{
		{sent, outboxv1.EmailStatus_EMAIL_STATUS_SENT}, {refused, failed},
		{retrying, outboxv1.EmailStatus_EMAIL_STATUS_PENDING_RETRY}, {disabledMail, disabled},
		{soon, outboxv1.EmailStatus_EMAIL_STATUS_SCHEDULED}, {later, outboxv1.EmailStatus_EMAIL_STATUS_SCHEDULED},
		{cancelled, outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED}, {queued, outboxv1.EmailStatus_EMAIL_STATUS_QUEUED},
	} {
		for _, m := range g.mail {
			want[m.ID] = g.st
		}
	}
	if off := differences(want, atBackup); len(off) > 0 {
		t.Fatalf("%d emails are not in the state the drill backs up, e.g. %s", len(off), harness.Some(off, 5))
	}

	// Step 2: the Redis backup, online: redis-cli --rdb fetches an RDB over the replication
	// protocol.
	backup := t.TempDir()
	host, port, _ := strings.Cut(s.Redis.Addr(), ":")
	run(t, "redis-cli", "-h", host, "-p", port, "--rdb", filepath.Join(backup, "redis.rdb"))
	// Step 3: then the JetStream backup: a stopped server's store directory is consistent.
	// Taken after Redis's, it holds every event the Redis backup no longer has (the relays
	// delete an event from Redis only once JetStream has it).
	s.NATS.Shutdown()
	run(t, "cp", "-a", s.NATS.StoreDir(), filepath.Join(backup, "nats"))

	// The disaster: every process gone, and both servers' data.
	for _, p := range processes(s) {
		p.Kill()
	}
	s.Redis.Kill()
	for _, dir := range []string{filepath.Join(s.Redis.Dir(), "appendonlydir"), filepath.Join(s.Redis.Dir(), "dump.rdb"), s.NATS.StoreDir()} {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}

	// Step 4: restore JetStream: the copy back into the store directory, then the server.
	run(t, "cp", "-a", filepath.Join(backup, "nats"), s.NATS.StoreDir())
	s.NATS.Restart(t)
	// Step 5: restore Redis: the RDB as dump.rdb, the server started with AOF off (with AOF on
	// and no AOF it would start empty), AOF switched on (a rewrite writes it from memory), and
	// once it is written the server restarted as configured, from its new AOF.
	run(t, "cp", filepath.Join(backup, "redis.rdb"), filepath.Join(s.Redis.Dir(), "dump.rdb"))
	s.Redis.RestartWith(t, "--appendonly", "no")
	rdb := redis.NewClient(&redis.Options{Addr: s.Redis.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	keys, err := rdb.DBSize(ctx).Result()
	if err != nil || keys == 0 {
		t.Fatalf("the restored Redis holds %d keys (%v)", keys, err)
	}
	if err := rdb.ConfigSet(ctx, "appendonly", "yes").Err(); err != nil {
		t.Fatal(err)
	}
	harness.Must(t, "the AOF written from the restored data", 60*time.Second, func() bool {
		info, err := rdb.Info(ctx, "persistence").Result()
		return err == nil && strings.Contains(info, "aof_enabled:1") && strings.Contains(info, "aof_rewrite_in_progress:0") &&
			strings.Contains(info, "aof_rewrite_scheduled:0") && strings.Contains(info, "aof_last_bgrewrite_status:ok")
	})
	s.Redis.Restart(t)
	if got, err := rdb.DBSize(ctx).Result(); err != nil || got != keys {
		t.Fatalf("after the restart on the new AOF Redis holds %d keys (%v), want the %d restored", got, err, keys)
	}

	// Step 6: the services, the dispatchers last: before any mail moves, the ledger is the
	// backup's.
	for _, p := range []*harness.Process{s.Mailbox, s.API} {
		p.Restart(t)
	}
	if off := differences(atBackup, statuses(t, s, all)); len(off) > 0 {
		t.Errorf("%d emails are not in their status of the backup after the restore, e.g. %s", len(off), harness.Some(off, 5))
	}
	for _, p := range s.Dispatchers {
		p.Restart(t)
	}
	s.RecoverFrom(time.Now())

	// Step 7 (the check): the mail moves on as it would have without the disaster.
	down.Store(false)
	if _, err := s.Outbox().Retry(s.Admin(tenant), &outboxv1.RetryRequest{Selection: &outboxv1.Selection{EmailIds: ids(retrying)}}); err != nil {
		t.Fatalf("retry: %v", err)
	}
	s.SetConnectorEnabled(t, tenant, "pausiert", true)
	sendNow := time.Now()
	if _, err := s.Outbox().SendNow(s.Admin(tenant), &outboxv1.SendNowRequest{Selection: &outboxv1.Selection{EmailIds: ids(later)}}); err != nil {
		t.Fatalf("send now: %v", err)
	}
	for i := range all {
		if slices.Contains(ids(later), all[i].ID) {
			all[i].SendAt = sendNow // what Check holds the first copy against
		}
	}
	expect := harness.Expect{Status: map[string]outboxv1.EmailStatus{}}
	for _, m := range refused {
		expect.Status[m.ID] = failed
	}
	for _, m := range cancelled {
		expect.Status[m.ID] = outboxv1.EmailStatus_EMAIL_STATUS_CANCELLED
	}
	res := s.Check(t, all, expect)
	copies := map[string]int{}
	for _, r := range []*harness.Relay{ok, refusing, flaky} {
		for id, k := range r.Copies() {
			copies[id] += k
		}
	}
	var notOnce []string
	for _, m := range all {
		if _, notSent := expect.Status[m.ID]; !notSent && copies[m.MessageID] != 1 {
			notOnce = append(notOnce, fmt.Sprintf("%s (%d copies)", m.ID, copies[m.MessageID]))
		}
	}
	if len(notOnce) > 0 {
		t.Errorf("%d emails to be SENT did not reach a relay exactly once, e.g. %s", len(notOnce), harness.Some(notOnce, 5))
	}
	if res.Ambiguous > 0 || res.Duplicated > 0 {
		t.Errorf("%d copies sent twice (%d counted as ambiguous); a restore of a backup taken with the dispatchers stopped sends nothing twice", res.Duplicated, res.Ambiguous)
	}
}

// stopWaitDrill bounds the dispatchers' drain before the backup.
const stopWaitDrill = 30 * time.Second

// ids are the emails' ids.
func ids(mail []harness.Submitted) []string {
	out := make([]string, len(mail))
	for i, m := range mail {
		out[i] = m.ID
	}
	return out
}

func concat(parts ...[]harness.Submitted) []harness.Submitted {
	var out []harness.Submitted
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// statuses reads each email's status from the ledger.
func statuses(t *testing.T, s *harness.Suite, mail []harness.Submitted) map[string]outboxv1.EmailStatus {
	t.Helper()
	out := map[string]outboxv1.EmailStatus{}
	for id, e := range s.Emails(t, mail) {
		out[id] = e.GetStatus()
	}
	return out
}

// differences lists the emails whose status in got is not the one in want.
func differences(want, got map[string]outboxv1.EmailStatus) []string {
	var off []string
	for id, w := range want {
		if g, ok := got[id]; !ok || g != w {
			off = append(off, fmt.Sprintf("%s %s, want %s", id, strings.TrimPrefix(g.String(), "EMAIL_STATUS_"), strings.TrimPrefix(w.String(), "EMAIL_STATUS_")))
		}
	}
	return off
}

// processes lists the suite's running service processes.
func processes(s *harness.Suite) []*harness.Process {
	all := []*harness.Process{s.Mailbox, s.API}
	for _, p := range []*harness.Process{s.Tracker, s.Calendar} {
		if p != nil {
			all = append(all, p)
		}
	}
	return append(all, s.Dispatchers...)
}

// run runs one of the runbook's commands and fails the test with its output when it fails.
func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
