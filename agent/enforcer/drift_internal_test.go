package enforcer

import (
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/eastguard/eastguard/agent/datapath"
)

// TestDriftLogSummarises: past driftLogBurst findings of a kind in a
// period, one line at the period's end says how many were not logged; the
// next period logs again; other kinds have their own budget.
func TestDriftLogSummarises(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	l := newDriftLog(zap.New(core))
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	flap := datapath.Drift{Kind: datapath.DriftLinkDetached, Object: "tcx-7-ingress (eth0)", Repaired: true}
	for i := range 12 {
		now := t0.Add(time.Duration(i) * time.Second)
		l.note(flap, true, now)
		l.flush(now)
	}
	l.note(datapath.Drift{Kind: datapath.DriftMapModified, Object: "eg_policy", Repaired: true}, true, t0.Add(12*time.Second))
	if n := logs.FilterMessage("datapath tampered with: repaired").Len(); n != driftLogBurst+1 {
		t.Errorf("%d lines in the first period, want %d of the flapping kind and 1 of the other", n, driftLogBurst)
	}
	l.flush(t0.Add(driftLogPeriod))
	sum := logs.FilterMessage("datapath tampered with, more findings not logged one by one").All()
	if len(sum) != 1 || sum[0].ContextMap()["findings"] != int64(12-driftLogBurst) || sum[0].ContextMap()["kind"] != "link-detached" {
		t.Errorf("summary lines %+v, want one saying %d link-detached findings", sum, 12-driftLogBurst)
	}
	l.note(flap, true, t0.Add(driftLogPeriod+time.Second))
	if n := logs.FilterMessage("datapath tampered with: repaired").FilterField(zap.String("kind", "link-detached")).Len(); n != driftLogBurst+1 {
		t.Errorf("the next period did not log again: %d lines", n)
	}
}
