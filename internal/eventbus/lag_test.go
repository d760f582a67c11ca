package eventbus_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/postamt/postamt/internal/eventbus"
	"github.com/postamt/postamt/internal/gauges"
	"github.com/postamt/postamt/internal/testkit/poll"
)

// gather reads a registry as "name{label values}" -> value.
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName() + "{"
			for _, l := range m.GetLabel() {
				key += l.GetName() + "=" + l.GetValue() + ","
			}
			out[key+"}"] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	}
	return 0
}

// TestLagGauges: events written while no relay runs show as the relay's backlog with the age of
// the oldest; once the relay published them the backlog is empty. A durable consumer that has
// not read them shows them pending; after it took and acknowledged them, nothing is.
func TestLagGauges(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	written := time.Now()
	for _, id := range []string{"a", "b", "c"} {
		write(t, ctx, h.rdb, streamKey, id, "v-"+id)
	}
	relay := &eventbus.Relay{Client: h.rdb, JS: h.js, Streams: []string{streamKey}, ClaimIdle: time.Second}
	durable := eventbus.Durable{Stream: testStream, Name: "lag-test"}
	later := written.Add(time.Minute)
	g := eventbus.NewLagGauges("test", relay, h.js, func() time.Time { return later }, durable)
	reg := prometheus.NewRegistry()
	s := &gauges.Sampler{Name: "test", Descs: g.Descs(), Sample: g.Sample}
	reg.MustRegister(s)

	s.Refresh(ctx)
	got := gather(t, reg)
	if v := got["postamt_relay_backlog_entries{service=test,}"]; v != 3 {
		t.Errorf("backlog = %v, want 3", v)
	}
	// The oldest entry was written just before `written`: its age is about the injected minute.
	if v := got["postamt_relay_oldest_entry_age_seconds{service=test,}"]; v < 59 || v > 70 {
		t.Errorf("oldest age = %v, want about 60", v)
	}
	if _, ok := got["postamt_consumer_pending_messages{consumer=lag-test,service=test,stream=POSTAMT_TEST,}"]; ok {
		t.Error("a consumer that does not exist yet has a lag series")
	}

	cons, err := h.js.CreateOrUpdateConsumer(ctx, testStream, jetstream.ConsumerConfig{Durable: durable.Name, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	startRelay(t, relay)
	poll.Eventually(t, "relay drained and 3 pending for the consumer", func() bool {
		s.Refresh(ctx)
		got := gather(t, reg)
		return got["postamt_relay_backlog_entries{service=test,}"] == 0 && got["postamt_relay_oldest_entry_age_seconds{service=test,}"] == 0 &&
			got["postamt_consumer_pending_messages{consumer=lag-test,service=test,stream=POSTAMT_TEST,}"] == 3
	})
	batch, err := cons.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	s.Refresh(ctx)
	got = gather(t, reg)
	if p, a := got["postamt_consumer_pending_messages{consumer=lag-test,service=test,stream=POSTAMT_TEST,}"],
		got["postamt_consumer_ack_pending_messages{consumer=lag-test,service=test,stream=POSTAMT_TEST,}"]; p != 0 || a != float64(len(msgs)) {
		t.Errorf("after fetching %d: pending %v, ack pending %v", len(msgs), p, a)
	}
	for _, m := range msgs {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	s.Refresh(ctx)
	if a := gather(t, reg)["postamt_consumer_ack_pending_messages{consumer=lag-test,service=test,stream=POSTAMT_TEST,}"]; a != 0 {
		t.Errorf("after acknowledging: ack pending %v", a)
	}
}
