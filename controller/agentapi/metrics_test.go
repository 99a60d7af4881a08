package agentapi

import (
	"reflect"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eastguard/eastguard/internal/testutil"
)

// TestMetricsLint lints every metric of the service, each with a sample.
func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	m.connected.Set(1)
	m.propagation.Observe(0.01)
	m.pushes.WithLabelValues("full").Inc()
	m.acks.WithLabelValues("applied").Inc()
	m.refused.WithLabelValues("revoked").Inc()
	m.joins.WithLabelValues("service-account").Inc()
	m.lookups.WithLabelValues("answered").Inc()
	testutil.LintMetrics(t, reg, reflect.TypeOf(*m).NumField())
}
