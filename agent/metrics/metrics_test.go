package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/agent/enforcer"
	"github.com/eastguard/eastguard/agent/flows"
	"github.com/eastguard/eastguard/internal/ruleset"
)

func fakeSources() Sources {
	var c datapath.Counters
	c[datapath.VerdictCounter(ruleset.VerdictDenied, ruleset.Ingress)] = 7
	c[datapath.CounterEventsLost] = 3
	c[datapath.CounterEstablished] = 100
	return Sources{
		Counters: func() (datapath.Counters, error) { return c, nil },
		Status: func() enforcer.Status {
			return enforcer.Status{Version: 42, LastError: "map eg_policy is full", Datapath: datapath.Status{
				Maps:      []datapath.MapUsage{{Name: "eg_policy", Entries: 10, Capacity: 74, Limit: 262144}},
				Endpoints: []datapath.EndpointStatus{{State: datapath.EndpointEnforcing}, {State: datapath.EndpointPending}},
				Guarded:   3, GuardedInterfaces: []string{"cali1", "cali2", "cali3"},
			}}
		},
		Pipeline:    func() flows.PipelineStats { return flows.PipelineStats{Events: 9, Flows: 4, Updates: 6, Untracked: 2} },
		Spool:       func() flows.SpoolStats { return flows.SpoolStats{RecordsLost: 5, DiskBytes: 1024, BatchesQueued: 2} },
		Ring:        func() (int, int) { return 80, 1 << 24 },
		Connected:   func() bool { return true },
		CertExpiry:  func() time.Time { return time.Unix(1900000000, 0) },
		DefaultMode: ruleset.ModeMonitor,
	}
}

func TestMetricsLintAndValues(t *testing.T) {
	a := New(fakeSources())
	a.ObserveApply(2*time.Millisecond, nil)
	a.ObserveApply(time.Millisecond, errors.New("x"))
	problems, err := testutil.CollectAndLint(a)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`eastguard_agent_datapath_verdicts_total{direction="ingress",verdict="denied"} 7`,
		`eastguard_agent_datapath_packets_total{path="established"} 100`,
		`eastguard_agent_flow_events_lost_total 3`,
		`eastguard_agent_flow_events_read_total 9`,
		`eastguard_agent_flow_records_lost_total 5`,
		`eastguard_agent_flow_volume_records_total 6`,
		`eastguard_agent_flow_untracked_connections_total 2`,
		`eastguard_agent_flow_spool_bytes{where="disk"} 1024`,
		`eastguard_agent_event_ring_used_bytes 80`,
		`eastguard_agent_ruleset_version 42`,
		`eastguard_agent_ruleset_last_apply_failed 1`,
		`eastguard_agent_map_entries{map="eg_policy"} 10`,
		`eastguard_agent_map_allocated_entries{map="eg_policy"} 74`,
		`eastguard_agent_map_limit_entries{map="eg_policy"} 262144`,
		`eastguard_agent_endpoints{state="pending"} 1`,
		`eastguard_agent_guarded_interfaces 3`,
		`eastguard_agent_controller_connected 1`,
		`eastguard_agent_default_monitor_mode 1`,
		`eastguard_agent_ruleset_apply_duration_seconds_count{outcome="failed"} 1`,
		`eastguard_agent_certificate_expiry_timestamp_seconds 1.9e+09`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	resp, err = srv.Client().Get(srv.URL + "/status")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/status: %v %v", err, resp.Status)
	}
	body, _ = io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `"lastError": "map eg_policy is full"`) || !strings.Contains(string(body), `"guardedInterfaces": 3`) {
		t.Errorf("/status %s", body)
	}
}

// TestMapLimitIsItsOwnMetric: the limit a map can be grown to (what egctl
// validate --sizes compares against, and what to alert on) is exposed by
// itself, not confused with the size of the current generation's map,
// which follows the rule set (85 entries in a map of 170 here).
func TestMapLimitIsItsOwnMetric(t *testing.T) {
	src := Sources{Status: func() enforcer.Status {
		return enforcer.Status{Datapath: datapath.Status{Maps: []datapath.MapUsage{
			{Name: "eg_policy", Entries: 85, Capacity: 170, Limit: 262144},
			{Name: "eg_ipcache", Entries: 3, Capacity: 67, Limit: 131072},
		}}}
	}}
	a := New(src)
	for _, c := range []struct {
		metric, m string
		want      float64
	}{
		{"eastguard_agent_map_entries", "eg_policy", 85},
		{"eastguard_agent_map_allocated_entries", "eg_policy", 170},
		{"eastguard_agent_map_limit_entries", "eg_policy", 262144},
		{"eastguard_agent_map_limit_entries", "eg_ipcache", 131072},
	} {
		got, ok := gaugeValue(t, a, c.metric, c.m)
		if !ok || got != c.want {
			t.Errorf("%s{map=%q} = %v (present %v), want %v", c.metric, c.m, got, ok, c.want)
		}
	}
	// The ambiguous name is gone: it looked like the limit but was the
	// generation's size.
	if _, ok := gaugeValue(t, a, "eastguard_agent_map_capacity_entries", "eg_policy"); ok {
		t.Errorf("eastguard_agent_map_capacity_entries is still exposed")
	}
}

// gaugeValue reads one sample of a labelled gauge from a's registry.
func gaugeValue(t *testing.T, a *Agent, name, mapName string) (float64, bool) {
	t.Helper()
	fams, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "map" && l.GetValue() == mapName {
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}
