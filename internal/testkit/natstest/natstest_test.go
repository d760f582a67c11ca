package natstest_test

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postamt/postamt/internal/testkit/natstest"
	"github.com/postamt/postamt/internal/testkit/poll"
)

func TestRestart(t *testing.T) {
	ctx := context.Background()
	s := natstest.Start(t)
	url := s.URL()
	js := s.JetStream(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "s.1", []byte("x")); err != nil {
		t.Fatal(err)
	}

	s.Restart(t)

	t.Run("same URL", func(t *testing.T) {
		if got := s.URL(); got != url {
			t.Errorf("URL after restart = %s, want %s", got, url)
		}
	})
	t.Run("streams and messages are kept", func(t *testing.T) {
		st, err := s.JetStream(t).Stream(ctx, "S")
		if err != nil {
			t.Fatal(err)
		}
		if got, want := st.CachedInfo().State.Msgs, uint64(1); got != want {
			t.Errorf("messages after restart = %d, want %d", got, want)
		}
	})
	t.Run("old clients reconnect", func(t *testing.T) {
		var err error
		poll.Eventually(t, "a publish on the old connection", func() bool {
			_, err = js.Publish(ctx, "s.2", []byte("y"))
			return err == nil
		})
	})
}

func TestShutdown(t *testing.T) {
	s := natstest.Start(t)
	nc := s.Conn(t)
	s.Shutdown()
	s.Shutdown() // idempotent, and Cleanup calls it once more
	poll.Eventually(t, "the client to notice", func() bool { return !nc.IsConnected() })
}

func TestWithoutJetStream(t *testing.T) {
	s := natstest.Start(t, natstest.WithoutJetStream())
	_, err := s.JetStream(t).AccountInfo(context.Background())
	if !errors.Is(err, jetstream.ErrJetStreamNotEnabled) {
		t.Errorf("AccountInfo error = %v, want ErrJetStreamNotEnabled", err)
	}
}
