package app

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postamt/postamt/services/outbox/internal/dispatch"
	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// laneGauges are the outbox's backlog gauges, sampled by one replica (gauges.Sampler):
//
//	postamt_outbox_due_emails{tenant,connector}               mail due now and not being sent
//	postamt_outbox_oldest_due_age_seconds{tenant,connector}   how long the oldest of it has been due
//	postamt_outbox_sending_emails{tenant,connector}           mail in SENDING
//	postamt_outbox_emails{status}                             PENDING_RETRY, FAILED, CONNECTOR_DISABLED
//	postamt_outbox_connector_held_seconds{tenant,connector}   how long the connector's mail still
//	                                                          waits for the relay (limits, throttling)
//
// The connectors with the largest due backlog, up to max, get series of their own; the others
// are summed (the oldest age: the largest) under tenant and connector "_other", so the series
// stay bounded however many connectors tenants create, and a connector in trouble (a backlog)
// is the one that keeps its name.
type laneGauges struct {
	ledger *redisstore.Ledger
	lanes  func() []redisstore.Lane
	now    func() time.Time
	max    int

	due, age, sending, status, held *prometheus.Desc
}

func newLaneGauges(ledger *redisstore.Ledger, lanes func() []redisstore.Lane, now func() time.Time, maxConnectors int) *laneGauges {
	lc := []string{"tenant", "connector"}
	if maxConnectors <= 0 {
		maxConnectors = dispatch.DefaultMaxConnectorSeries
	}
	return &laneGauges{
		ledger: ledger, lanes: lanes, now: now, max: maxConnectors,
		due: prometheus.NewDesc("postamt_outbox_due_emails",
			"Mail due now and not in conversation (QUEUED, SCHEDULED and PENDING_RETRY past their due time, SENDING whose lease ran out), by tenant and connector.", lc, nil),
		age: prometheus.NewDesc("postamt_outbox_oldest_due_age_seconds",
			"Seconds since the oldest due mail of the connector became due; 0 when none is due.", lc, nil),
		sending: prometheus.NewDesc("postamt_outbox_sending_emails",
			"Mail in SENDING (claimed by a replica), by tenant and connector.", lc, nil),
		status: prometheus.NewDesc("postamt_outbox_emails",
			"Mail in the statuses that wait for a relay or a person: PENDING_RETRY, FAILED, CONNECTOR_DISABLED.", []string{"status"}, nil),
		held: prometheus.NewDesc("postamt_outbox_connector_held_seconds",
			"Seconds the connector's mail still waits for the relay: its limits, or a back-off after throttling replies; 0 when it does not wait.", lc, nil),
	}
}

func (g *laneGauges) descs() []*prometheus.Desc {
	return []*prometheus.Desc{g.due, g.age, g.sending, g.status, g.held}
}

// gaugeStatuses are the statuses postamt_outbox_emails counts.
var gaugeStatuses = []outbox.Status{outbox.StatusPendingRetry, outbox.StatusFailed, outbox.StatusConnectorDisabled}

func (g *laneGauges) sample(ctx context.Context, emit func(*prometheus.Desc, float64, ...string)) error {
	now := g.now()
	lanes := g.lanes()
	stats, err := g.ledger.LaneStats(ctx, lanes, now)
	if err != nil {
		return err
	}
	tenants := make([]string, 0, len(lanes))
	for _, l := range lanes {
		tenants = append(tenants, l.Tenant)
	}
	slices.Sort(tenants)
	counts, err := g.ledger.StatusCounts(ctx, slices.Compact(tenants), gaugeStatuses)
	if err != nil {
		return err
	}
	slices.SortFunc(stats, func(a, b redisstore.LaneStat) int {
		return cmp.Or(cmp.Compare(b.Due, a.Due), cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.Connector, b.Connector))
	})
	ageOf := func(st redisstore.LaneStat) float64 {
		if st.OldestDue.IsZero() {
			return 0
		}
		return max(now.Sub(st.OldestDue).Seconds(), 0)
	}
	heldFor := func(st redisstore.LaneStat) float64 {
		if st.HeldUntil.IsZero() {
			return 0
		}
		return max(st.HeldUntil.Sub(now).Seconds(), 0)
	}
	var other redisstore.LaneStat
	var otherAge, otherHeld float64
	for i, st := range stats {
		if i >= g.max {
			other.Due += st.Due
			other.Sending += st.Sending
			otherAge = max(otherAge, ageOf(st))
			otherHeld = max(otherHeld, heldFor(st))
			continue
		}
		emit(g.due, float64(st.Due), st.Tenant, st.Connector)
		emit(g.age, ageOf(st), st.Tenant, st.Connector)
		emit(g.sending, float64(st.Sending), st.Tenant, st.Connector)
		emit(g.held, heldFor(st), st.Tenant, st.Connector)
	}
	if len(stats) > g.max {
		emit(g.due, float64(other.Due), dispatch.OtherLabel, dispatch.OtherLabel)
		emit(g.age, otherAge, dispatch.OtherLabel, dispatch.OtherLabel)
		emit(g.sending, float64(other.Sending), dispatch.OtherLabel, dispatch.OtherLabel)
		emit(g.held, otherHeld, dispatch.OtherLabel, dispatch.OtherLabel)
	}
	for _, s := range gaugeStatuses {
		emit(g.status, float64(counts[s]), s.String())
	}
	return nil
}
