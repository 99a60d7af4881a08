package agentapi

import (
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eastguard/eastguard/internal/wire"
)

// metrics are the agent-facing service's.
type metrics struct {
	connected   prometheus.Gauge
	propagation prometheus.Histogram
	pushes      *prometheus.CounterVec
	acks        *prometheus.CounterVec
	refused     *prometheus.CounterVec
	joins       *prometheus.CounterVec
	lookups     *prometheus.CounterVec
	drift       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eastguard_controller_agents_connected",
			Help: "Agents with an open control stream.",
		}),
		propagation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "eastguard_controller_policy_propagation_seconds",
			Help:    "Time from committing a node's new rule-set version to its agent's ack of it applied to the kernel.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_rule_set_pushes_total",
			Help: "Rule-set updates sent to agents, by kind (full or delta).",
		}, []string{"kind"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_acks_total",
			Help: "Acks received from agents, by result (applied, apply_failed, delta_base, stale_version, invalid).",
		}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_agent_refusals_total",
			Help: "Agent connections or RPCs refused, by reason (expired, revoked, unknown_ca, no_identity, wrong_node, token, bad_request, rate_limited, connection_limit, stale_resync, invalid, service_account, unavailable, busy).",
		}, []string{"reason"}),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_joins_total",
			Help: "Nodes admitted by Join, by method (token: a join token; service-account: a Kubernetes ServiceAccount token).",
		}, []string{"method"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_lookups_total",
			Help: "Datapath lookups asked of agents (egctl explain --live), by result (answered, timeout, limited).",
		}, []string{"result"}),
		drift: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_datapath_drift_total",
			Help: "Datapath drift findings agents reported (each raises or counts on a datapath-tampered alert), by kind (" + strings.Join(wire.DriftKinds, ", ") + ", other).",
		}, []string{"kind"}),
	}
	for _, k := range slices.Concat(wire.DriftKinds, []string{"other"}) {
		m.drift.WithLabelValues(k) // at 0 from the start: an increase is what to alert on
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.propagation, m.pushes, m.acks, m.refused, m.joins, m.lookups, m.drift)
	}
	return m
}
