package natstest_test

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/postamt/postamt/internal/testkit/natstest"
)

func TestRestartKeepsStreams(t *testing.T) {
	s := natstest.Start(t)
	ctx := context.Background()
	js := s.JetStream(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "s.1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	s.Restart(t)
	st, err := s.JetStream(t).Stream(ctx, "S")
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("messages after restart = %d, want 1", n)
	}
}
