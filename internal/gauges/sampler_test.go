package gauges_test

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postamt/postamt/internal/gauges"
	"github.com/postamt/postamt/internal/testkit/redistest"
)

// TestSamplerOneReplicaExports: of two replicas sharing a lock, only the holder samples and
// exports; a failed sample keeps the last values and is counted; when the holder stops renewing
// (its lock deleted here, as by expiry), the other takes over and the first exports nothing.
func TestSamplerOneReplicaExports(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	desc := prometheus.NewDesc("test_backlog", "A sampled value.", nil, nil)
	newReplica := func(value *float64, fail *bool) (*gauges.Sampler, *prometheus.Registry) {
		s := &gauges.Sampler{
			Name: "test", Descs: []*prometheus.Desc{desc}, Redis: rdb, LockKey: "test:{m}:lock",
			Sample: func(_ context.Context, emit func(*prometheus.Desc, float64, ...string)) error {
				if *fail {
					return errors.New("redis is away")
				}
				emit(desc, *value)
				return nil
			},
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(s)
		return s, reg
	}
	va, vb := 7.0, 9.0
	var failA, failB bool
	a, regA := newReplica(&va, &failA)
	b, regB := newReplica(&vb, &failB)

	a.Refresh(ctx)
	b.Refresh(ctx)
	if n := testutil.CollectAndCount(regA, "test_backlog"); n != 1 {
		t.Fatalf("holder exports %d series, want 1", n)
	}
	if n := testutil.CollectAndCount(regB, "test_backlog"); n != 0 {
		t.Errorf("the other replica exports %d series, want 0", n)
	}

	va, failA = 8, true
	a.Refresh(ctx)
	if got := testutil.ToFloat64(collectorOf(t, regA, "test_backlog")); got != 7 {
		t.Errorf("after a failed sample: %v, want the last value 7", got)
	}
	if got := testutil.ToFloat64(collectorOf(t, regA, "postamt_sampler_failures_total")); got != 1 {
		t.Errorf("failures = %v, want 1", got)
	}

	if err := rdb.Del(ctx, "test:{m}:lock").Err(); err != nil {
		t.Fatal(err)
	}
	b.Refresh(ctx)
	a.Refresh(ctx)
	if got := testutil.ToFloat64(collectorOf(t, regB, "test_backlog")); got != 9 {
		t.Errorf("new holder exports %v, want 9", got)
	}
	if n := testutil.CollectAndCount(regA, "test_backlog"); n != 0 {
		t.Errorf("the old holder still exports %d series", n)
	}
}

// collectorOf is the registry's one series of name, as a collector testutil can read.
func collectorOf(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: "copy"}, func() float64 { return v })
		}
	}
	t.Fatalf("no single series %s", name)
	return nil
}
