package gauges_test

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

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
	if n := count(t, regA, "test_backlog"); n != 1 {
		t.Fatalf("holder exports %d series, want 1", n)
	}
	if n := count(t, regB, "test_backlog"); n != 0 {
		t.Errorf("the other replica exports %d series, want 0", n)
	}

	va, failA = 8, true
	a.Refresh(ctx)
	if got := single(t, regA, "test_backlog"); got != 7 {
		t.Errorf("after a failed sample: %v, want the last value 7", got)
	}
	if got := single(t, regA, "postamt_sampler_failures_total"); got != 1 {
		t.Errorf("failures = %v, want 1", got)
	}

	if err := rdb.Del(ctx, "test:{m}:lock").Err(); err != nil {
		t.Fatal(err)
	}
	b.Refresh(ctx)
	a.Refresh(ctx)
	if got := single(t, regB, "test_backlog"); got != 9 {
		t.Errorf("new holder exports %v, want 9", got)
	}
	if n := count(t, regA, "test_backlog") + count(t, regA, "postamt_sampler_last_success_timestamp_seconds"); n != 0 {
		t.Errorf("the old holder still exports %d series", n)
	}
}

// series reads the values of name's series in reg.
func series(t *testing.T, reg *prometheus.Registry, name string) []float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			out = append(out, m.GetGauge().GetValue()+m.GetCounter().GetValue())
		}
	}
	return out
}

func count(t *testing.T, reg *prometheus.Registry, name string) int {
	t.Helper()
	return len(series(t, reg, name))
}

// single is the value of name's one series.
func single(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	vs := series(t, reg, name)
	if len(vs) != 1 {
		t.Fatalf("%d series %s, want 1", len(vs), name)
	}
	return vs[0]
}
