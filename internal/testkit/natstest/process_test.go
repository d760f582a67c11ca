package natstest_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
)

// TestProcessClusterSurvivesACrash: an R3 stream on three nats-server processes keeps taking
// publishes while its leader, also the meta leader, is SIGKILLed mid-publishing; after the restart every replica is
// current again, and the crashed server, the others and a client reading the stream all hold
// every acknowledged message.
func TestProcessClusterSurvivesACrash(t *testing.T) {
	ctx := context.Background()
	c := natstest.StartProcessCluster(t, 3)

	if got := len(c.Servers()); got != 3 {
		t.Fatalf("Servers() = %d, want 3 (nil for processes)", got)
	}
	if c.MetaLeader() < 0 {
		t.Fatal("no meta leader after the start")
	}
	js := c.JetStream(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Storage: jetstream.FileStorage, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	// Consumers with several filter subjects need 2.10: the services' consumers do.
	if _, err := js.CreateOrUpdateConsumer(ctx, "S", jetstream.ConsumerConfig{Durable: "d", FilterSubjects: []string{"s.x", "s.y"}, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatalf("a consumer with two filter subjects: %v", err)
	}

	// One publisher, each message retried (same Msg-ID, so deduplicated) until acknowledged.
	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			for {
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := js.Publish(pctx, "s.x", []byte("x"), jetstream.WithMsgID(fmt.Sprint(i)))
				cancel()
				if err == nil {
					acked.Add(1)
					break
				}
				time.Sleep(20 * time.Millisecond) // back off a retry while the cluster elects
			}
		}
	})
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()
	poll.Eventually(t, "100 messages acknowledged", func() bool { return acked.Load() >= 100 })

	// The victim leads both the stream and the meta group: the stream's leadership is moved
	// to the meta leader first.
	var victim int
	poll.Eventually(t, "a meta leader", func() bool { victim = c.MetaLeader(); return victim >= 0 })
	poll.Eventually(t, "the stream led by the meta leader", func() bool {
		if c.StreamLeader("S") == victim {
			return true
		}
		if err := c.MoveStreamLeader("S", victim); err != nil {
			t.Logf("move the stream leader: %v", err)
		}
		return false
	})
	before := acked.Load()
	c.Kill(victim)
	c.Kill(victim) // idempotent
	poll.Eventually(t, "a new stream leader", func() bool { l := c.StreamLeader("S"); return l >= 0 && l != victim })
	poll.Eventually(t, "100 more acknowledged without the old leader", func() bool { return acked.Load() >= before+100 })

	c.Restart(t, victim)
	close(stop)
	wg.Wait()
	want := uint64(acked.Load())
	t.Logf("killed %s (stream and meta leader) after %d acknowledged; %d acknowledged in all", c.Name(victim), before, want)

	t.Run("replicas current", func(t *testing.T) {
		poll.Eventually(t, "every replica current", func() bool { return c.StreamsCurrent() == nil })
	})
	t.Run("every message on every server", func(t *testing.T) {
		for i := range 3 {
			var got uint64
			var err error
			poll.Eventually(t, fmt.Sprintf("%s holds %d messages", c.Name(i), want), func() bool {
				got, err = c.StreamMsgs(i, "S")
				return err == nil && got == want
			})
		}
	})
	t.Run("a client reads them", func(t *testing.T) {
		st, err := js.Stream(ctx, "S")
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := info.State.Msgs; got != want {
			t.Errorf("stream holds %d messages, want %d (one per acknowledged Msg-ID)", got, want)
		}
	})
	t.Run("meta leader known", func(t *testing.T) {
		if c.MetaLeader() < 0 {
			t.Error("no meta leader after the restart")
		}
	})
}
