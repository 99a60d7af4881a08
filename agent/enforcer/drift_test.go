package enforcer_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/agent/enforcer"
)

// watchDrift runs WatchDrift over dp until the test ends, and returns
// what OnDrift was told and the log.
func watchDrift(t *testing.T, dp *fakeDatapath, cfg enforcer.DriftConfig) (func() []datapath.Drift, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	e := enforcer.New(dp, nil, zap.New(core))
	var mu sync.Mutex
	var got []datapath.Drift
	cfg.OnDrift = func(d datapath.Drift) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.WatchDrift(ctx, cfg)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func() []datapath.Drift {
		mu.Lock()
		defer mu.Unlock()
		return append([]datapath.Drift(nil), got...)
	}, logs
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWatchDriftReportOnly: with --repair=false every check asks the
// datapath not to repair, and what it finds is still logged and reported.
// The first check runs at once and in full; later ones are cheap until
// the full interval passes.
func TestWatchDriftReportOnly(t *testing.T) {
	detached := datapath.Drift{Kind: datapath.DriftLinkDetached, Object: "tcx-7-ingress (eth0)", Detail: "gone"}
	dp := &fakeDatapath{drifts: [][]datapath.Drift{{detached}}}
	got, logs := watchDrift(t, dp, enforcer.DriftConfig{Interval: 10 * time.Millisecond, FullInterval: time.Hour, Repair: false})
	poll(t, "the drift reported", func() bool { return len(got()) == 1 && len(dp.checkCalls()) >= 3 })
	if got()[0] != detached {
		t.Errorf("reported %+v, want %+v", got()[0], detached)
	}
	calls := dp.checkCalls()
	for i, c := range calls {
		if c.Repair {
			t.Errorf("check %d asked to repair with --repair=false", i)
		}
		if c.Full != (i == 0) {
			t.Errorf("check %d full=%v, want only the first full", i, c.Full)
		}
	}
	if n := logs.FilterMessage("datapath tampered with: not repaired (--repair=false)").FilterField(zap.String("kind", "link-detached")).Len(); n != 1 {
		t.Errorf("%d log lines for the finding, want 1: %v", n, logs.All())
	}
}

// TestWatchDriftRepairsAndRequests: with repair on, checks ask for
// repair; a check request from the datapath (an interface event) runs a
// check at once, however long the interval.
func TestWatchDriftRepairsAndRequests(t *testing.T) {
	dp := &fakeDatapath{requests: make(chan struct{}, 1)}
	_, _ = watchDrift(t, dp, enforcer.DriftConfig{Interval: time.Hour, FullInterval: time.Hour, Repair: true})
	poll(t, "the first check", func() bool { return len(dp.checkCalls()) == 1 })
	dp.requests <- struct{}{}
	poll(t, "the requested check", func() bool { return len(dp.checkCalls()) == 2 })
	for i, c := range dp.checkCalls() {
		if !c.Repair {
			t.Errorf("check %d did not ask to repair", i)
		}
	}
}

// TestWatchDriftLogIsBounded: a process flapping a link gets a finding
// per check; the log has the first few of a kind per minute, then one
// line with the count; the reports and metrics still see each.
func TestWatchDriftLogIsBounded(t *testing.T) {
	var ds [][]datapath.Drift
	for range 12 {
		ds = append(ds, []datapath.Drift{{Kind: datapath.DriftMapModified, Object: "eg_policy", Detail: "1 entries changed", Repaired: true}})
	}
	dp := &fakeDatapath{drifts: ds}
	got, logs := watchDrift(t, dp, enforcer.DriftConfig{Interval: time.Millisecond, Repair: true})
	poll(t, "every finding reported", func() bool { return len(got()) == 12 })
	if n := logs.FilterMessage("datapath tampered with: repaired").Len(); n != 5 {
		t.Errorf("%d lines logged for 12 findings in a minute, want 5", n)
	}
}
