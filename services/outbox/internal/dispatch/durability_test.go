package dispatch_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/postamt/postamt/internal/redisx"
	"github.com/postamt/postamt/internal/testkit/poll"
	"github.com/postamt/postamt/internal/testkit/redistest"
	"github.com/postamt/postamt/internal/testkit/smtptest"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// TestUnconfirmedClaimsAreNotSent holds the dispatcher to the durability rule (redisx.Acks): with
// one replica required, a claim its replica has not confirmed could roll back in a failover and
// be claimed again elsewhere, so nothing it took is sent. With the replica gone, mail that comes
// due is claimed, handed back and not sent; a submit is reported unconfirmed though the master
// keeps it. When the replica is back, every email reaches the relay exactly once.
func TestUnconfirmedClaimsAreNotSent(t *testing.T) {
	ctx := context.Background()
	master := redistest.Start(t)
	replica := master.StartReplica(t)
	// Linked before the first write, and a second for each confirmation: under a loaded
	// machine's scheduling a replica's acknowledgement can take longer than 200 ms, which once
	// failed the first submit (a test failing under load is a defect of the test).
	replica.WaitLinked(t)
	acked, err := redisx.Open(ctx, master.URL(), redisx.WithReplicaAcks(1, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = acked.Close() })
	r := &rig{t: t, redis: master, ledger: redisstore.New(acked, 0, 0), sinks: map[string]*smtptest.Sink{}, pool: map[string]int{}}
	sink := r.connector("relay", 4)

	before := r.submitN("before", 5, time.Now())
	rep := r.replica(10*time.Second, 1)
	sink.WaitForMessages(t, len(before), 30*time.Second)
	for _, id := range before {
		poll.Eventually(t, id+" recorded as sent", func() bool { return r.email(id).Status == outbox.StatusSent })
	}

	replica.Kill()
	var during []string
	for i := range 5 {
		id := fmt.Sprintf("during-%d", i)
		body := fmt.Sprintf("From: info@kanzlei.example\r\nTo: client@example.com\r\nMessage-ID: <%s@kanzlei.example>\r\nSubject: %s\r\n\r\nHallo\r\n", id, id)
		_, _, err := r.ledger.Submit(ctx, &redisstore.Email{
			ID: id, Tenant: "kanzlei", Status: outbox.StatusQueued, Priority: 2, Due: time.Now(), Connector: "relay", Version: 1,
			From: "info@kanzlei.example", Rcpts: []string{"client@example.com"}, Body: []byte(body),
			Buckets: []string{redisstore.BucketAll, redisstore.BucketUser("max")},
		}, redisstore.Event{Subject: "postamt.outbox.v1.EmailSubmitted", Msg: wrapperspb.String(id)})
		if !errors.Is(err, redisx.ErrNotReplicated) {
			t.Fatalf("submit without a replica = %v, want ErrNotReplicated", err)
		}
		during = append(during, id)
	}
	// The master holds them and the dispatcher claims them: its claims are handed back, not sent
	// (and since the hand-backs are not confirmed either, it claims nothing more until they are).
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(rep.log.String())
		}
	})
	poll.Eventually(t, "unconfirmed claims handed back", func() bool {
		return testutil.ToFloat64(rep.events.WithLabelValues("handed_back")) > 0
	})
	if n := len(sink.Messages()); n != len(before) {
		t.Fatalf("the relay got %d messages while no replica confirmed claims, want %d", n, len(before))
	}

	replica.Restart(t)
	replica.WaitLinked(t)
	msgs := sink.WaitForMessages(t, len(before)+len(during), 30*time.Second)
	got := copies(t, msgs)
	for _, id := range append(before, during...) {
		if got[id] != 1 {
			t.Errorf("%s reached the relay %d times, want once", id, got[id])
		}
	}
	for _, id := range during {
		poll.Eventually(t, id+" recorded as sent", func() bool { return r.email(id).Status == outbox.StatusSent })
	}
}
