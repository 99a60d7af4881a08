package server

import (
	"reflect"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestMetricsLint runs promtool's metric checks (promlint, which `promtool
// check metrics` uses) over every controller metric, each with a sample
// child so that labelled families are exposed too.
func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	m.connected.Set(1)
	m.propagation.Observe(0.01)
	m.pushes.WithLabelValues("full").Inc()
	m.acks.WithLabelValues("applied").Inc()
	m.refused.WithLabelValues("revoked").Inc()
	m.flowBatches.WithLabelValues("stored").Inc()
	m.flowsIngested.Inc()
	m.flowsLost.Inc()
	m.flowsPruned.WithLabelValues("age").Inc()
	m.ingestQueue.Set(1)
	m.storeErrors.WithLabelValues("full").Inc()
	m.storeBytes.Set(1)
	m.storeFlows.Set(1)
	m.alertsRaised.WithLabelValues("unexpected-ssh").Inc()
	m.deliveries.WithLabelValues("security-team", "delivered").Inc()

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	// Every field of metrics is a family: one added without a sample
	// above would escape the lint.
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if want := reflect.TypeOf(*m).NumField(); len(families) != want {
		t.Errorf("%d metric families exposed, the metrics struct has %d fields: give the new one a sample here", len(families), want)
	}
}
