package dispatch

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postamt/postamt/services/outbox/internal/outbox"
	"github.com/postamt/postamt/services/outbox/internal/redisstore"
)

// OtherLabel is the tenant and connector label of the series that aggregate the connectors
// beyond Metrics' cap.
const OtherLabel = "_other"

// DefaultMaxConnectorSeries is Metrics' cap when none is given: enough for every connector of a
// deployment of a few hundred tenants, small enough that one scrape of an outbox replica stays
// a few thousand series (each connector costs 5 outcome counters and a 12-bucket histogram).
const DefaultMaxConnectorSeries = 200

// Metrics are the dispatcher's per-connector series: attempts by outcome and the duration of SMTP
// conversations, labelled by tenant and connector id so an alert names the relay that fails.
// Connectors are created by tenants, so the label set is capped: the first MaxConnectors
// connectors this replica sends through get series of their own, every further one is counted
// under tenant="_other", connector="_other". Each lane looks its observers up once, when it is
// created, so an attempt's update allocates nothing.
type Metrics struct {
	// Attempts counts attempts by tenant, connector and outcome: sent, temporary, permanent,
	// unknown (the RFC 1047 window, and mail taken over from a worker whose lease ran out),
	// connector_disabled, throttled, quota_exhausted. sum by (outcome) is the series it had
	// before the labels were added.
	Attempts *prometheus.CounterVec
	// Conversation observes the seconds of each SMTP conversation (connection or reuse to the
	// relay's reply after the data), by tenant and connector.
	Conversation *prometheus.HistogramVec

	max   int
	mu    sync.Mutex
	lanes map[redisstore.Lane]*laneMetrics
	other *laneMetrics
}

// NewMetrics creates the series; maxConnectors <= 0 means DefaultMaxConnectorSeries.
func NewMetrics(maxConnectors int) *Metrics {
	if maxConnectors <= 0 {
		maxConnectors = DefaultMaxConnectorSeries
	}
	return &Metrics{
		Attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "postamt_outbox_attempts_total",
			Help: "Delivery attempts by tenant, connector and outcome; outcome=\"unknown\" counts attempts that may have delivered the mail: connections lost after the final dot (RFC 1047) and mail taken over from a worker whose lease ran out. Connectors beyond the cap are counted under \"_other\".",
		}, []string{"tenant", "connector", "outcome"}),
		Conversation: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "postamt_outbox_smtp_conversation_seconds",
			Help:    "Duration of SMTP conversations with a connector's relay, by tenant and connector. Connectors beyond the cap are observed under \"_other\".",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 100},
		}, []string{"tenant", "connector"}),
		max:   maxConnectors,
		lanes: make(map[redisstore.Lane]*laneMetrics),
	}
}

// Collectors are the series to register.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.Attempts, m.Conversation}
}

// numOutcomes sizes laneMetrics.attempts, indexed by outbox.Outcome up to the last one; index 0
// and OutcomeNotSent (never an attempt) count as "other".
const numOutcomes = int(outbox.OutcomeQuotaExhausted) + 1

// laneMetrics are one connector's observers, resolved once; a nil *laneMetrics counts nothing.
type laneMetrics struct {
	attempts     [numOutcomes]prometheus.Counter
	conversation prometheus.Observer
}

func (m *Metrics) lane(l redisstore.Lane) *laneMetrics {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if lm, ok := m.lanes[l]; ok {
		return lm
	}
	if len(m.lanes) >= m.max {
		if m.other == nil {
			m.other = m.children(OtherLabel, OtherLabel)
		}
		return m.other
	}
	lm := m.children(l.Tenant, l.Connector)
	m.lanes[l] = lm
	return lm
}

func (m *Metrics) children(tenant, connector string) *laneMetrics {
	lm := &laneMetrics{conversation: m.Conversation.WithLabelValues(tenant, connector)}
	for i := range lm.attempts {
		lm.attempts[i] = m.Attempts.WithLabelValues(tenant, connector, outcomeLabel(outbox.Outcome(i)))
	}
	return lm
}

func (lm *laneMetrics) attempt(o outbox.Outcome) {
	if lm == nil {
		return
	}
	i := int(o)
	if i >= numOutcomes {
		i = 0
	}
	lm.attempts[i].Inc()
}

func (lm *laneMetrics) conversed(seconds float64) {
	if lm != nil {
		lm.conversation.Observe(seconds)
	}
}
