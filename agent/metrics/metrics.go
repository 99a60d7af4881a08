// Package metrics exposes the agent's Prometheus metrics on
// --metrics-listen. Almost everything is read from its source when
// Prometheus scrapes (datapath counters, enforcer status, flow pipeline,
// spool, control plane), so the packet and event paths pay nothing for
// metrics. It must not change anything it reads.
package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/agent/enforcer"
	"github.com/eastguard/eastguard/agent/flows"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Sources are what the metrics read. Nil fields are skipped.
type Sources struct {
	Counters    func() (datapath.Counters, error)
	Status      func() enforcer.Status
	Pipeline    func() flows.PipelineStats
	Spool       func() flows.SpoolStats
	Ring        func() (used, size int)
	Connected   func() bool
	CertExpiry  func() time.Time
	DefaultMode ruleset.Mode
}

// Agent holds the agent's metrics.
type Agent struct {
	reg   *prometheus.Registry
	src   Sources
	apply *prometheus.HistogramVec
	// Datapath drift checks (enforcer.DriftConfig's OnDrift and
	// OnCheck): counted as they happen, not read at scrape time.
	drift        *prometheus.CounterVec
	repairFailed *prometheus.CounterVec
	check        *prometheus.HistogramVec
}

var (
	descVerdicts = prometheus.NewDesc("eastguard_agent_datapath_verdicts_total",
		"Datapath decisions by verdict and direction (relative to the workload): allowed counts new flows admitted, denied packets dropped, would_deny packets monitor mode let through.",
		[]string{"verdict", "direction"}, nil)
	descPackets = prometheus.NewDesc("eastguard_agent_datapath_packets_total",
		"Packets by the path that passed them: established (conntrack), related (ICMP errors of a tracked flow), forwarded (host mode, not the node's own), neighbor (ARP, and IPv6 ND and MLD that cannot leave the link), non_ip, fragments (seen).",
		[]string{"path"}, nil)
	descChecks = prometheus.NewDesc("eastguard_agent_datapath_checks_total",
		"Packets a datapath check decided: malformed, spoofed, no_endpoint (no endpoint on the interface), revalidated (established flows re-checked after a rule-set change).",
		[]string{"check"}, nil)
	descEventsRead = prometheus.NewDesc("eastguard_agent_flow_events_read_total",
		"Flow events read from the datapath's ring buffer.", nil, nil)
	descEventsLost = prometheus.NewDesc("eastguard_agent_flow_events_lost_total",
		"Flow events the datapath could not write because the ring buffer was full.", nil, nil)
	descEventsSuppressed = prometheus.NewDesc("eastguard_agent_flow_events_suppressed_total",
		"Deny events the datapath's per-CPU rate limit suppressed (the drops themselves are counted in verdicts).", nil, nil)
	descCTFull = prometheus.NewDesc("eastguard_agent_conntrack_insert_failures_total",
		"New flows the policy admitted but the datapath refused because a conntrack map was full (established flows go on).", nil, nil)
	descCTRefused = prometheus.NewDesc("eastguard_agent_conntrack_endpoint_quota_refusals_total",
		"New flows refused because their endpoint held its whole share of the conntrack (the other endpoints' new flows still get in).", nil, nil)
	descCTEntries = prometheus.NewDesc("eastguard_agent_conntrack_entries",
		"Conntrack entries at the last GC sweep, by family.", []string{"family"}, nil)
	descCTCapacity = prometheus.NewDesc("eastguard_agent_conntrack_capacity_entries",
		"Conntrack capacity by family: a full map refuses new flows (eastguard_agent_conntrack_insert_failures_total).", []string{"family"}, nil)
	descCTGCDeleted = prometheus.NewDesc("eastguard_agent_conntrack_gc_deleted_total",
		"Expired conntrack entries the agent's GC deleted.", nil, nil)
	descRingUsed = prometheus.NewDesc("eastguard_agent_event_ring_used_bytes",
		"Bytes waiting in the flow event ring buffer.", nil, nil)
	descRingSize = prometheus.NewDesc("eastguard_agent_event_ring_size_bytes",
		"Size of the flow event ring buffer.", nil, nil)
	descVersion = prometheus.NewDesc("eastguard_agent_ruleset_version",
		"Version of the rule set in force (0 for one compiled locally).", nil, nil)
	descApplyFailed = prometheus.NewDesc("eastguard_agent_ruleset_last_apply_failed",
		"1 when the last rule set could not be applied (the previous one stays in force).", nil, nil)
	descMapEntries = prometheus.NewDesc("eastguard_agent_map_entries",
		"Entries used in the rule set's datapath maps.", []string{"map"}, nil)
	descMapAllocated = prometheus.NewDesc("eastguard_agent_map_allocated_entries",
		"Entries the active generation's datapath maps were created with: the rule set's need plus room for incremental updates; every rule set gets maps sized anew, so this is no bound (see eastguard_agent_map_limit_entries).", []string{"map"}, nil)
	descMapLimit = prometheus.NewDesc("eastguard_agent_map_limit_entries",
		"The most entries a datapath map can be grown to, as egctl validate --sizes reports it; a rule set that needs more is refused. eg_ipcache_hosts and eg_ipcache share one limit.", []string{"map"}, nil)
	descEndpoints = prometheus.NewDesc("eastguard_agent_endpoints",
		"Endpoints of the rule set in force, by state: enforcing, or pending (interface not there).", []string{"state"}, nil)
	descGuarded = prometheus.NewDesc("eastguard_agent_guarded_interfaces",
		"Interfaces guarded now (--guard-interfaces): veths no workload claims yet, denied both ways.", nil, nil)
	descFlows = prometheus.NewDesc("eastguard_agent_flow_records_total",
		"Aggregated flow records produced.", nil, nil)
	descVolumeRecords = prometheus.NewDesc("eastguard_agent_flow_volume_records_total",
		"Connection volume records (state active or closed) produced every --flow-update-interval.", nil, nil)
	descUntracked = prometheus.NewDesc("eastguard_agent_flow_untracked_connections_total",
		"Connections seen beyond the most the agent remembers: they get their new-flow record but no volume records.", nil, nil)
	descFlowsLost = prometheus.NewDesc("eastguard_agent_flow_records_lost_total",
		"Flow records dropped: the spool was full, or the controller refused a batch as malformed.", nil, nil)
	descSpoolBytes = prometheus.NewDesc("eastguard_agent_flow_spool_bytes",
		"Flow batches waiting for the controller's acknowledgement, by where they wait.", []string{"where"}, nil)
	descSpoolBatches = prometheus.NewDesc("eastguard_agent_flow_spool_batches",
		"Flow batches waiting for the controller's acknowledgement.", nil, nil)
	descConnected = prometheus.NewDesc("eastguard_agent_controller_connected",
		"1 while the agent's stream to the controller is up.", nil, nil)
	descCertExpiry = prometheus.NewDesc("eastguard_agent_certificate_expiry_timestamp_seconds",
		"When the agent's certificate expires (renewed at 2/3 of its life).", nil, nil)
	descDefaultMode = prometheus.NewDesc("eastguard_agent_default_monitor_mode",
		"1 when the agent's --default-mode is monitor: workloads without a mode are not enforced.", nil, nil)
)

// New registers the agent's metrics, plus the Go and process collectors.
func New(src Sources) *Agent {
	a := &Agent{reg: prometheus.NewRegistry(), src: src}
	a.apply = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "eastguard_agent_ruleset_apply_duration_seconds",
		Help:    "Time to apply a rule set to the kernel, by outcome.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
	}, []string{"outcome"})
	a.drift = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "eastguard_agent_datapath_drift_total",
		Help: "Changes of the agent's kernel objects it did not make, found by its drift checks, by kind: link-detached, prog-replaced, prog-preceded, state-modified, map-replaced, map-modified, pin-removed. Each finding counts once per check it is found in.",
	}, []string{"kind"})
	a.repairFailed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "eastguard_agent_datapath_repair_failures_total",
		Help: "Drift findings the agent could not repair, by kind (the node may not enforce as it should: see the agent's log).",
	}, []string{"kind"})
	for _, k := range datapath.DriftKinds {
		a.drift.WithLabelValues(string(k))
		a.repairFailed.WithLabelValues(string(k))
	}
	a.check = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "eastguard_agent_datapath_check_duration_seconds",
		Help:    "Time of one datapath drift check, cheap (every --datapath-check-interval) or full (every --datapath-full-check-interval).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	}, []string{"check"})
	a.reg.MustRegister(a, a.apply, a.drift, a.repairFailed, a.check, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return a
}

// ObserveDrift counts one drift finding.
func (a *Agent) ObserveDrift(d datapath.Drift) {
	a.drift.WithLabelValues(string(d.Kind)).Inc()
	if d.RepairError != "" {
		a.repairFailed.WithLabelValues(string(d.Kind)).Inc()
	}
}

// ObserveCheck records the time one drift check took.
func (a *Agent) ObserveCheck(full bool, d time.Duration) {
	kind := "cheap"
	if full {
		kind = "full"
	}
	a.check.WithLabelValues(kind).Observe(d.Seconds())
}

// ObserveApply records one rule-set apply (enforcer.Enforcer.Observe).
func (a *Agent) ObserveApply(d time.Duration, err error) {
	outcome := "applied"
	if err != nil {
		outcome = "failed"
	}
	a.apply.WithLabelValues(outcome).Observe(d.Seconds())
}

// Describe implements prometheus.Collector.
func (a *Agent) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVerdicts, descPackets, descChecks, descEventsRead, descEventsLost,
		descEventsSuppressed, descCTFull, descCTRefused, descCTEntries, descCTCapacity, descCTGCDeleted, descRingUsed, descRingSize, descVersion, descApplyFailed, descMapEntries,
		descMapAllocated, descMapLimit, descEndpoints, descGuarded, descFlows, descVolumeRecords, descUntracked, descFlowsLost, descSpoolBytes, descSpoolBatches, descConnected,
		descCertExpiry, descDefaultMode} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads every source now.
func (a *Agent) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if a.src.Counters != nil {
		if c, err := a.src.Counters(); err == nil {
			for _, v := range []ruleset.Verdict{ruleset.VerdictAllowed, ruleset.VerdictDenied, ruleset.VerdictWouldDeny} {
				for _, d := range []ruleset.Direction{ruleset.Ingress, ruleset.Egress} {
					name := map[ruleset.Verdict]string{ruleset.VerdictAllowed: "allowed", ruleset.VerdictDenied: "denied", ruleset.VerdictWouldDeny: "would_deny"}[v]
					counter(descVerdicts, c.Get(datapath.VerdictCounter(v, d)), name, d.String())
				}
			}
			for path, k := range map[string]datapath.Counter{"established": datapath.CounterEstablished, "related": datapath.CounterRelated,
				"forwarded": datapath.CounterForwarded, "neighbor": datapath.CounterNeighbor, "non_ip": datapath.CounterNonIP,
				"fragments": datapath.CounterFragments} {
				counter(descPackets, c.Get(k), path)
			}
			for check, k := range map[string]datapath.Counter{"malformed": datapath.CounterMalformed, "spoofed": datapath.CounterSpoofed,
				"no_endpoint": datapath.CounterNoEndpoint, "revalidated": datapath.CounterRevalidated} {
				counter(descChecks, c.Get(k), check)
			}
			counter(descEventsLost, c.Get(datapath.CounterEventsLost))
			counter(descEventsSuppressed, c.Get(datapath.CounterEventsSuppressed))
			counter(descCTFull, c.Get(datapath.CounterCTFull))
			counter(descCTRefused, c.Get(datapath.CounterCTEndpointFull))
		}
	}
	if a.src.Ring != nil {
		used, size := a.src.Ring()
		gauge(descRingUsed, float64(used))
		gauge(descRingSize, float64(size))
	}
	if a.src.Status != nil {
		st := a.src.Status()
		gauge(descVersion, float64(st.Version))
		failed := 0.0
		if st.LastError != "" {
			failed = 1
		}
		gauge(descApplyFailed, failed)
		if ct := st.Datapath.Conntrack; ct != nil {
			for fam, name := range []string{"ipv4", "ipv6"} {
				gauge(descCTEntries, float64(ct.Entries[fam]), name)
				gauge(descCTCapacity, float64(ct.Capacity[fam]), name)
			}
			counter(descCTGCDeleted, ct.Deleted)
		}
		for _, m := range st.Datapath.Maps {
			gauge(descMapEntries, float64(m.Entries), m.Name)
			gauge(descMapAllocated, float64(m.Capacity), m.Name)
			gauge(descMapLimit, float64(m.Limit), m.Name)
		}
		states := map[datapath.EndpointState]int{datapath.EndpointEnforcing: 0, datapath.EndpointPending: 0}
		for _, e := range st.Datapath.Endpoints {
			states[e.State]++
		}
		for s, n := range states {
			gauge(descEndpoints, float64(n), string(s))
		}
		gauge(descGuarded, float64(st.Datapath.Guarded))
	}
	if a.src.Pipeline != nil {
		p := a.src.Pipeline()
		counter(descEventsRead, p.Events)
		counter(descFlows, p.Flows)
		counter(descVolumeRecords, p.Updates)
		counter(descUntracked, p.Untracked)
	}
	if a.src.Spool != nil {
		s := a.src.Spool()
		counter(descFlowsLost, s.RecordsLost)
		gauge(descSpoolBytes, float64(s.MemoryBytes), "memory")
		gauge(descSpoolBytes, float64(s.DiskBytes), "disk")
		gauge(descSpoolBatches, float64(s.BatchesQueued))
	}
	if a.src.Connected != nil {
		v := 0.0
		if a.src.Connected() {
			v = 1
		}
		gauge(descConnected, v)
	}
	if a.src.CertExpiry != nil {
		if t := a.src.CertExpiry(); !t.IsZero() {
			gauge(descCertExpiry, float64(t.Unix()))
		}
	}
	monitor := 0.0
	if a.src.DefaultMode == ruleset.ModeMonitor {
		monitor = 1
	}
	gauge(descDefaultMode, monitor)
}

// Handler serves /metrics, /healthz and /status (the enforcer's status as
// JSON: what is enforced, pending interfaces, the last error).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		if a.src.Status == nil {
			http.Error(w, "no status", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(a.src.Status())
	})
	return mux
}

// Serve listens on addr until ctx is done.
func (a *Agent) Serve(ctx context.Context, addr string, log *zap.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	log.Info("serving metrics", zap.String("address", ln.Addr().String()))
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
