package server

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the controller's metrics. Everything is counted where it
// happens; gauges that mirror the store are set by housekeeping.
type metrics struct {
	connected   prometheus.Gauge
	propagation prometheus.Histogram
	pushes      *prometheus.CounterVec
	acks        *prometheus.CounterVec
	refused     *prometheus.CounterVec

	flowBatches   *prometheus.CounterVec
	flowsIngested prometheus.Counter
	flowsLost     prometheus.Counter
	flowsPruned   *prometheus.CounterVec
	ingestQueue   prometheus.Gauge
	storeErrors   *prometheus.CounterVec
	storeBytes    prometheus.Gauge
	storeFlows    prometheus.Gauge
	alertsRaised  *prometheus.CounterVec
	deliveries    *prometheus.CounterVec
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
			Help: "Agent connections or RPCs refused, by reason (expired, revoked, unknown_ca, no_identity, wrong_node, token).",
		}, []string{"reason"}),
		flowBatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_flow_batches_total",
			Help: "Flow batches received from agents, by result (stored, duplicate, malformed, rate_limited, busy, store_full, store_io, store_other).",
		}, []string{"result"}),
		flowsIngested: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eastguard_controller_flows_ingested_total",
			Help: "Flow records stored.",
		}),
		flowsLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eastguard_controller_agent_flows_lost_total",
			Help: "Flow records agents report they had to drop (spool full, refused batches).",
		}),
		flowsPruned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_flows_pruned_total",
			Help: "Flow records deleted by retention, by reason (age, size).",
		}, []string{"reason"}),
		ingestQueue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eastguard_controller_flow_ingest_queue_batches",
			Help: "Flow batches waiting for the store writer.",
		}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_store_write_errors_total",
			Help: "Event store transactions that failed, by reason (full: disk or size budget full; io; other).",
		}, []string{"reason"}),
		storeBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eastguard_controller_flow_store_bytes",
			Help: "Bytes the event store (flows, alerts, outbox) occupies.",
		}),
		storeFlows: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eastguard_controller_flow_store_flows",
			Help: "Flow records in the store.",
		}),
		alertsRaised: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_alerts_raised_total",
			Help: "Alerts opened, by alert rule.",
		}, []string{"rule"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_webhook_deliveries_total",
			Help: "Webhook delivery attempts, by webhook and outcome (delivered, retry, gave_up).",
		}, []string{"webhook", "outcome"}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.propagation, m.pushes, m.acks, m.refused,
			m.flowBatches, m.flowsIngested, m.flowsLost, m.flowsPruned, m.ingestQueue,
			m.storeErrors, m.storeBytes, m.storeFlows, m.alertsRaised, m.deliveries)
	}
	return m
}
