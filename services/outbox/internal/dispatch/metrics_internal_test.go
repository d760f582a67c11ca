package dispatch

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// TestMetricsCapAndCache: connectors up to the cap get series of their own, later ones share
// "_other"; a lane's observers are resolved once, so counting an attempt allocates nothing.
func TestMetricsCapAndCache(t *testing.T) {
	m := NewMetrics(2)
	a := m.lane(redisstore.Lane{Tenant: "kanzlei", Connector: "relay"})
	b := m.lane(redisstore.Lane{Tenant: "notar", Connector: "relay"})
	c := m.lane(redisstore.Lane{Tenant: "notar", Connector: "backup"})
	d := m.lane(redisstore.Lane{Tenant: "praxis", Connector: "default"})
	if again := m.lane(redisstore.Lane{Tenant: "kanzlei", Connector: "relay"}); again != a {
		t.Error("a lane's observers were resolved twice")
	}
	if c != d || c == a || c == b {
		t.Error("connectors beyond the cap do not share the _other observers")
	}
	a.attempt(outbox.OutcomePermanent)
	c.attempt(outbox.OutcomeTemporary)
	d.attempt(outbox.OutcomeTemporary)
	for _, tc := range []struct {
		tenant, connector, outcome string
		want                       float64
	}{
		{"kanzlei", "relay", "permanent", 1},
		{"notar", "relay", "permanent", 0},
		{OtherLabel, OtherLabel, "temporary", 2},
	} {
		if got := testutil.ToFloat64(m.Attempts.WithLabelValues(tc.tenant, tc.connector, tc.outcome)); got != tc.want {
			t.Errorf("%s/%s %s = %v, want %v", tc.tenant, tc.connector, tc.outcome, got, tc.want)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() {
		a.attempt(outbox.OutcomeSent)
		a.conversed(0.02)
	}); allocs != 0 {
		t.Errorf("an attempt's metrics allocate %v times, want 0", allocs)
	}
	var none *laneMetrics // a dispatcher without Metrics
	none.attempt(outbox.OutcomeSent)
	none.conversed(1)
	if (*Metrics)(nil).lane(redisstore.Lane{}) != nil {
		t.Error("nil Metrics gave observers")
	}
}
