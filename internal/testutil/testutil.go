package testutil

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
)

// Eventually polls cond every 10 ms until it returns nil, and fails the
// test with cond's last error once timeout has passed.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// LintMetrics runs promtool's metric checks (promlint, which `promtool
// check metrics` uses) over every family of reg, and checks that reg
// exposes exactly families families: the caller gives every metric a
// sample first (labelled families are only exposed with a child), and a
// metric added without one would escape the lint.
func LintMetrics(t testing.TB, reg *prometheus.Registry, families int) {
	t.Helper()
	problems, err := promtest.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != families {
		t.Errorf("%d metric families exposed, want %d: give every metric a sample", len(got), families)
	}
}
