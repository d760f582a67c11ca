package natstest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
)

// TestClusterSurvivesAServer: an R3 stream on three servers keeps taking publishes while its
// leader is killed, and after the restart every replica is current again with every message.
func TestClusterSurvivesAServer(t *testing.T) {
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)

	t.Run("URL names every server", func(t *testing.T) {
		if got := strings.Count(c.URL(), ",") + 1; got != 3 {
			t.Errorf("URL %q names %d servers, want 3", c.URL(), got)
		}
		if got := len(c.Servers()); got != 3 {
			t.Errorf("Servers() = %d, want 3", got)
		}
	})

	js := c.JetStream(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Storage: jetstream.FileStorage, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	publish := func(i int) {
		t.Helper()
		poll.Eventually(t, fmt.Sprintf("publish #%d acknowledged", i), func() bool {
			_, err := js.Publish(ctx, "s.x", []byte("x"), jetstream.WithMsgID(fmt.Sprint(i)))
			return err == nil
		})
	}
	for i := range 10 {
		publish(i)
	}
	var victim int
	poll.Eventually(t, "a stream leader", func() bool { victim = c.StreamLeader("S"); return victim >= 0 })
	c.Kill(victim)
	if c.Servers()[victim] != nil {
		t.Fatalf("server %d still listed after Kill", victim)
	}
	for i := 10; i < 20; i++ {
		publish(i)
	}
	poll.Eventually(t, "a new stream leader", func() bool { l := c.StreamLeader("S"); return l >= 0 && l != victim })

	c.Restart(t, victim)

	t.Run("replicas current", func(t *testing.T) {
		if err := c.StreamsCurrent(); err != nil {
			t.Error(err)
		}
	})
	t.Run("every message on the restarted server", func(t *testing.T) {
		jsz, err := c.Servers()[victim].Jsz(&server.JSzOptions{Streams: true})
		if err != nil {
			t.Fatal(err)
		}
		var got uint64
		for _, a := range jsz.AccountDetails {
			for _, st := range a.Streams {
				if st.Name == "S" {
					got = st.State.Msgs
				}
			}
		}
		if got != 20 {
			t.Errorf("restarted replica holds %d messages, want 20", got)
		}
	})
	t.Run("meta leader known", func(t *testing.T) {
		if c.MetaLeader() < 0 {
			t.Error("no meta leader after the restart")
		}
	})
}
