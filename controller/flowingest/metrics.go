package flowingest

import "github.com/prometheus/client_golang/prometheus"

// metrics are the flow and alert counters.
type metrics struct {
	flowBatches    *prometheus.CounterVec
	recordsRefused *prometheus.CounterVec
	flowsIngested  prometheus.Counter
	flowsLost      prometheus.Counter
	flowsPruned    *prometheus.CounterVec
	ingestQueue    prometheus.Gauge
	storeErrors    *prometheus.CounterVec
	storeBytes     prometheus.Gauge
	storeFlows     prometheus.Gauge
	alertsRaised   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		flowBatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_flow_batches_total",
			Help: "Flow batches received from agents, by result (stored, duplicate, malformed, rate_limited, busy, store_full, store_io, store_other).",
		}, []string{"result"}),
		recordsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_flow_records_refused_total",
			Help: "Flow records dropped from stored batches, by reason (not_local: neither end the reporting node's, by the record's direction).",
		}, []string{"reason"}),
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
	}
	if reg != nil {
		reg.MustRegister(m.flowBatches, m.recordsRefused, m.flowsIngested, m.flowsLost, m.flowsPruned, m.ingestQueue,
			m.storeErrors, m.storeBytes, m.storeFlows, m.alertsRaised)
	}
	return m
}
