package kube

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eastguard/eastguard/controller/policyrepo"
)

// metrics are the source's Prometheus metrics; a nil *metrics records
// nothing.
type metrics struct {
	syncs    *prometheus.CounterVec
	duration prometheus.Histogram
	objects  *prometheus.GaugeVec
	refused  *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_kubernetes_syncs_total",
			Help: "Syncs of the Kubernetes mirror into the policy, by result: changed (a policy change committed), unchanged, error (retried).",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "eastguard_controller_kubernetes_sync_seconds",
			Help:    "Time of one sync: the whole mirrored set compared, validated, compiled and committed.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
		objects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "eastguard_controller_kubernetes_objects",
			Help: "Objects the last sync read from Kubernetes, by kind (Workload: pods that are workloads).",
		}, []string{"kind"}),
		refused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "eastguard_controller_kubernetes_refused",
			Help: "Objects the last sync left out because they do not validate, by kind (their condition or the log says why).",
		}, []string{"kind"}),
	}
	reg.MustRegister(m.syncs, m.duration, m.objects, m.refused)
	return m
}

// synced records one sync: its result, time, and what it read and left
// out (res is nil on error).
func (m *metrics) synced(took time.Duration, objs []policyrepo.SourceObject, kinds []string, res *policyrepo.SyncResult) {
	if m == nil {
		return
	}
	m.duration.Observe(took.Seconds())
	switch {
	case res == nil:
		m.syncs.WithLabelValues("error").Inc()
		return
	case res.Change != nil:
		m.syncs.WithLabelValues("changed").Inc()
	default:
		m.syncs.WithLabelValues("unchanged").Inc()
	}
	read := make(map[string]int, len(kinds))
	refused := make(map[string]int, len(kinds))
	for _, k := range kinds {
		read[k], refused[k] = 0, 0
	}
	for _, o := range objs {
		read[o.Key.Kind]++
	}
	for k := range res.Refused {
		refused[k.Kind]++
	}
	for k, n := range read {
		m.objects.WithLabelValues(k).Set(float64(n))
	}
	for k, n := range refused {
		m.refused.WithLabelValues(k).Set(float64(n))
	}
}
