package flowingest

import (
	"reflect"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eastguard/eastguard/internal/testutil"
)

// TestMetricsLint lints every flow and alert metric, each with a sample.
func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	m.flowBatches.WithLabelValues("stored").Inc()
	m.recordsRefused.WithLabelValues("not_local").Inc()
	m.flowsIngested.Inc()
	m.flowsLost.Inc()
	m.flowsPruned.WithLabelValues("age").Inc()
	m.ingestQueue.Set(1)
	m.storeErrors.WithLabelValues("full").Inc()
	m.storeBytes.Set(1)
	m.storeFlows.Set(1)
	m.alertsRaised.WithLabelValues("unexpected-ssh").Inc()
	testutil.LintMetrics(t, reg, reflect.TypeOf(*m).NumField())
}
