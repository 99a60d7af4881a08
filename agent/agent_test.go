package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/agent/enforcer"
	"github.com/eastguard/eastguard/agent/flows"
	"github.com/eastguard/eastguard/agent/metrics"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// fakeDatapath is an enforcer.Datapath without a kernel, on a node with
// one address of its own.
type fakeDatapath struct{ last *datapath.ApplyResult }

var fakeNodeAddr = netip.MustParseAddr("192.168.7.10")

func (d *fakeDatapath) Apply(rs *ruleset.RuleSet) (*datapath.ApplyResult, error) {
	d.last = &datapath.ApplyResult{Generation: 1, Version: rs.Version, Hash: rs.Hash()}
	return d.last, nil
}
func (d *fakeDatapath) NodeAddresses() ([]netip.Addr, error)                       { return []netip.Addr{fakeNodeAddr}, nil }
func (d *fakeDatapath) UpdateIPCache([]ruleset.IPCacheEntry, []netip.Prefix) error { return nil }
func (d *fakeDatapath) WatchAddresses(context.Context) (<-chan struct{}, error)    { return nil, nil }
func (d *fakeDatapath) Check(datapath.CheckOptions) ([]datapath.Drift, error)      { return nil, nil }
func (d *fakeDatapath) CheckRequests() <-chan struct{}                             { return nil }
func (d *fakeDatapath) Status() datapath.Status {
	return datapath.Status{Generation: d.last.Generation, Version: d.last.Version, EffectiveHash: d.last.Hash}
}

// controllerRuleSet is what a controller sends node-a: endpoints and
// identities, no workload addresses but its own.
func controllerRuleSet() *ruleset.RuleSet {
	return &ruleset.RuleSet{
		Node: "node-a", Version: 3,
		Endpoints: []ruleset.Endpoint{{ID: 7, Workload: "web", Interface: "eg1-web", Identity: 300}},
		IPCache: []ruleset.IPCacheEntry{
			{Prefix: netip.MustParsePrefix("10.250.1.2/32"), Identity: 300},
			{Prefix: netip.MustParsePrefix("10.250.3.2/32"), Identity: 400},
		},
		Entries: []ruleset.Entry{{Endpoint: 7, Peer: 400, Direction: ruleset.Ingress, Protocol: ruleset.ProtocolTCP, Port: 8080, Verdict: ruleset.VerdictAllowed, Rule: 1}},
		Rules:   []ruleset.RuleName{{ID: 1, Name: "shop/client-to-web"}},
	}
}

func controllerAgent(t *testing.T) (*Agent, *ruleset.RuleSet) {
	t.Helper()
	a := &Agent{log: zap.NewNop(), enf: enforcer.New(&fakeDatapath{}, nil, zap.NewNop())}
	rs := controllerRuleSet()
	if _, err := (controllerSource{a.enf}).Apply(rs); err != nil {
		t.Fatal(err)
	}
	return a, rs
}

// TestControllerModeFlowLogNamesLocalWorkload: with a controller (no
// address book), the flow log names the workload on this node. (Before:
// srcWorkload and dstWorkload were always empty.)
func TestControllerModeFlowLogNamesLocalWorkload(t *testing.T) {
	a, _ := controllerAgent(t)
	var out bytes.Buffer
	sink := flows.NewLineSink(&out, "node-a", a.flowNames)
	agg := flows.NewAggregator(10)
	agg.Add(&datapath.FlowEvent{
		Time: time.Now(), Src: netip.MustParseAddr("10.250.3.2"), Dst: netip.MustParseAddr("10.250.1.2"),
		SrcPort: 40000, DstPort: 8080, Protocol: ruleset.ProtocolTCP, Endpoint: 7,
		SrcIdentity: 400, DstIdentity: 300, Direction: ruleset.Ingress, Verdict: ruleset.VerdictAllowed, Rule: 1, Length: 60,
	})
	if err := sink.Write(agg.Flush()); err != nil {
		t.Fatal(err)
	}
	var rec struct{ SrcWorkload, DstWorkload, Rule string }
	if err := json.Unmarshal(out.Bytes(), &rec); err != nil {
		t.Fatalf("%q: %v", out.String(), err)
	}
	if rec.DstWorkload != "web" || rec.SrcWorkload != "" || rec.Rule != "shop/client-to-web" {
		t.Errorf("record %s: want dstWorkload web (the local end), srcWorkload empty (remote), the rule named", out.String())
	}
}

// TestStatusHashIsTheCompiledOne: /status's hash is the hash of the rule
// set as compiled and received, the one the controller and egctl agents
// report (appliedHash); the hash with the node's addresses added is
// effectiveHash. (Before: "hash" was the effective one, so the two never
// matched.)
func TestStatusHashIsTheCompiledOne(t *testing.T) {
	a, rs := controllerAgent(t)
	srv := httptest.NewServer(metrics.New(metrics.Sources{Status: a.enf.Status}).Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw bytes.Buffer
	raw.ReadFrom(resp.Body)
	var st struct {
		Hash, EffectiveHash string
		Datapath            map[string]any
	}
	if err := json.Unmarshal(raw.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	effective := enforcer.WithNodeAddresses(rs, []netip.Addr{fakeNodeAddr}).Hash()
	if st.Hash != rs.Hash() {
		t.Errorf("/status hash %s, want the compiled rule set's %s", st.Hash, rs.Hash())
	}
	if st.EffectiveHash != effective || effective == rs.Hash() {
		t.Errorf("/status effectiveHash %s, want %s (node addresses added)", st.EffectiveHash, effective)
	}
	if _, ok := st.Datapath["hash"]; ok || st.Datapath["effectiveHash"] != effective {
		t.Errorf("/status datapath %v: its hash is the effective one and must be called effectiveHash", st.Datapath)
	}
	if strings.Count(raw.String(), `"hash"`) != 1 {
		t.Errorf("/status has more than one \"hash\":\n%s", raw.String())
	}
}
