package integration_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eastguard/eastguard/agent/controlplane"
	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/policyrepo"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
)

// twoNodes: web on node-a, client on node-b, client -> web on 8080.
var twoNodes = testutil.LabPolicy(testutil.Lab{Workloads: []testutil.LabWorkload{
	{Name: "web", Node: "node-a", Interface: "eg1-web", Addrs: []string{"10.250.17.2"}},
	{Name: "client", Node: "node-b", Interface: "eg2-client", Addrs: []string{"10.250.33.2"}},
}})

// adminSSH changes node-a's rule set only: a CIDR peer to web.
const adminSSH = `apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: admin}
spec:
  rules:
    - name: ssh
      from: [{cidr: 192.0.2.0/24}]
      to:   [{selector: {role: web}}]
      ports: [{protocol: TCP, port: 22}]
`

func nodes(res *apiclient.ChangeResult) []string {
	var out []string
	for _, n := range res.Nodes {
		out = append(out, fmt.Sprintf("%s@%d", n.Node, n.Version))
	}
	return out
}

// TestFullSyncThenDeltas: agents get a full rule set on first contact,
// then only deltas, and only the nodes a change affects hear of it.
func TestFullSyncThenDeltas(t *testing.T) {
	h := newHarness(t)
	if got := nodes(h.Apply(twoNodes)); !slices.Equal(got, []string{"node-a@1", "node-b@1"}) {
		t.Fatalf("first apply: nodes %v", got)
	}
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	b := h.startAgent("node-b", h.Token("node-b", time.Hour), nil, nil)
	h.waitApplied(a)
	h.waitApplied(b)
	if full, delta := h.Counter("eastguard_controller_rule_set_pushes_total", "kind", "full"), h.Counter("eastguard_controller_rule_set_pushes_total", "kind", "delta"); full != 2 || delta != 0 {
		t.Errorf("first sync: %v full and %v delta pushes, want 2 and 0", full, delta)
	}
	for _, ag := range []*testAgent{a, b} {
		want := h.AgentStatus(ag.node).LatestHash
		if got := ag.enf.Current().Hash(); got != want {
			t.Errorf("%s enforces hash %s, controller's latest is %s", ag.node, got, want)
		}
	}

	if got := nodes(h.Apply(adminSSH)); !slices.Equal(got, []string{"node-a@2"}) {
		t.Fatalf("second apply changed %v, want node-a only", got)
	}
	st := h.waitApplied(a)
	if st.AppliedVersion != 2 || h.AgentStatus("node-b").AppliedVersion != 1 {
		t.Errorf("after the change: node-a at %d (want 2), node-b at %d (want 1)", st.AppliedVersion, h.AgentStatus("node-b").AppliedVersion)
	}
	if delta := h.Counter("eastguard_controller_rule_set_pushes_total", "kind", "delta"); delta != 1 {
		t.Errorf("%v delta pushes, want 1", delta)
	}
	if got := a.enf.Current().Hash(); got != st.LatestHash {
		t.Errorf("node-a rebuilt hash %s from the delta, controller's is %s", got, st.LatestHash)
	}
	if !slices.Equal(b.enf.applied, []uint64{1}) {
		t.Errorf("node-b applied %v, want only version 1", b.enf.applied)
	}

	// Re-applying the same input changes nothing and pushes nothing.
	res := h.Apply(twoNodes)
	if len(res.Nodes) != 0 || len(res.Unchanged) != 3 {
		t.Errorf("re-apply: %+v", res)
	}
}

// TestApplyFailureKeepsPreviousVersion: an agent that cannot apply a
// version reports the error and keeps the one in force; the next good
// version goes through.
func TestApplyFailureKeepsPreviousVersion(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	a.enf.setFail(errInjected)
	h.Apply(twoNodes, adminSSH)
	testutil.Eventually(t, 10*time.Second, "the failure reported", func() error {
		st := h.AgentStatus("node-a")
		if st.LatestVersion != 2 || !strings.Contains(st.LastError, "version 2 not applied") || !strings.Contains(st.LastError, "eg_policy is full") {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	st := h.AgentStatus("node-a")
	if st.AppliedVersion != 1 || a.enf.version() != 1 || !strings.Contains(st.LastError, "version 1 stays in force") {
		t.Errorf("after a failed apply: %+v, enforcer at %d", st, a.enf.version())
	}
	if n := h.Counter("eastguard_controller_acks_total", "result", "apply_failed"); n != 1 {
		t.Errorf("%v apply_failed acks, want 1 (a refused version is not resent)", n)
	}
	a.enf.setFail(nil)
	// Back to the first policy: version 3.
	if _, err := h.Srv.Policy.Delete(context.Background(), []store.ResourceKey{{Kind: "Policy", Name: "admin"}}, false); err != nil {
		t.Fatal(err)
	}
	st = h.waitApplied(a)
	if st.AppliedVersion != 3 || st.LastError != "" {
		t.Errorf("after a good version: %+v", st)
	}
}

// TestInvalidPolicyChangesNothing: bad input is refused whole with
// positioned diagnostics, and no version moves.
func TestInvalidPolicyChangesNothing(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	bad := strings.Replace(adminSSH, "port: 22", "port: 70000", 1) + "---\n" + strings.Replace(twoNodes, "name: web,", "name: web2,", 1)
	_, err := h.Srv.Policy.Apply(context.Background(), []apiclient.File{{Name: "bad.yaml", Content: bad}}, false)
	var inv *policyrepo.InvalidError
	if !errors.As(err, &inv) {
		t.Fatalf("invalid input: got %v", err)
	}
	want := "bad.yaml:9:37: rules[0].ports[0].port: 70000 is out of range 1-65535"
	if !slices.Contains(inv.Diagnostics, want) {
		t.Errorf("diagnostics %q lack %q", inv.Diagnostics, want)
	}
	// Valid documents next to a duplicate address are refused too.
	dup := strings.Replace(twoNodes, "name: web,", "name: web2,", 1)
	dup = dup[:strings.Index(dup, "---")]
	_, err = h.Srv.Policy.Apply(context.Background(), []apiclient.File{{Name: "dup.yaml", Content: adminSSH + "---\n" + dup}}, false)
	if !errors.As(err, &inv) || !strings.Contains(err.Error(), "dup.yaml:") || !strings.Contains(err.Error(), `already belongs to workload "web"`) {
		t.Errorf("duplicate address: got %v", err)
	}
	st := h.AgentStatus("node-a")
	if st.LatestVersion != 1 || st.AppliedVersion != 1 {
		t.Errorf("after refused input: %+v", st)
	}
	var policies []string
	for _, a := range h.Srv.Nodes.Agents() {
		policies = append(policies, fmt.Sprintf("%s@%d", a.Node, a.LatestVersion))
	}
	if !slices.Equal(policies, []string{"node-a@1", "node-b@1"}) {
		t.Errorf("versions after refused input: %v", policies)
	}
}

// TestRestartLosesNothing: a controller restart keeps resources, versions
// and agents' applied versions; agents reconnect by themselves, are not
// sent what they have, and later changes reach them as deltas.
func TestRestartLosesNothing(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	before := a.client.Streams()

	h.Restart()
	testutil.Eventually(t, 10*time.Second, "the agent to reconnect", func() error {
		if a.client.Streams() <= before || !h.AgentStatus("node-a").Connected {
			return fmt.Errorf("streams %d, status %+v", a.client.Streams(), h.AgentStatus("node-a"))
		}
		return nil
	})
	st := h.AgentStatus("node-a")
	if st.LatestVersion != 1 || st.AppliedVersion != 1 || st.CertExpiry == nil {
		t.Errorf("after restart: %+v", st)
	}
	if n := h.Counter("eastguard_controller_rule_set_pushes_total", "kind", "full"); n != 0 {
		t.Errorf("%v full pushes after restart to an agent that is up to date", n)
	}
	if got := nodes(h.Apply(adminSSH)); !slices.Equal(got, []string{"node-a@2"}) {
		t.Fatalf("apply after restart changed %v", got)
	}
	h.waitApplied(a)
	if n := h.Counter("eastguard_controller_rule_set_pushes_total", "kind", "delta"); n != 1 {
		t.Errorf("%v delta pushes after restart, want 1", n)
	}
	if !slices.Equal(a.enf.applied, []uint64{1, 2}) {
		t.Errorf("agent applied %v, want [1 2]", a.enf.applied)
	}
}

// TestVersionConflict: an agent enforcing a version the controller never
// issued (the controller's data restored from an older backup) makes the
// controller number past it, so versions only grow for the agent.
func TestVersionConflict(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	stale := &ruleset.RuleSet{Node: "node-a", Version: 41}
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), &fakeEnforcer{cur: stale}, nil)
	st := h.waitApplied(a)
	if st.LatestVersion != 42 || a.enf.version() != 42 {
		t.Errorf("after the conflict: %+v, enforcer at %d", st, a.enf.version())
	}
	if h.Logged("never issued") == nil {
		t.Error("no log line about the version conflict")
	}
}

// TestDeltaBaseMismatch: when the agent's rule set is not the one the
// controller computed the delta from, the agent says so and gets a full
// rule set.
func TestDeltaBaseMismatch(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	// The agent's copy drifts (version kept, content changed).
	a.enf.mu.Lock()
	drift := a.enf.cur.Clone()
	drift.Rules = append(drift.Rules, ruleset.RuleName{ID: 999, Name: "drift/x"})
	a.enf.cur = drift
	a.enf.mu.Unlock()
	h.Apply(twoNodes, adminSSH)
	st := h.waitApplied(a)
	if got := a.enf.Current().Hash(); got != st.LatestHash {
		t.Errorf("after the full resync the agent has hash %s, want %s", got, st.LatestHash)
	}
	if n := h.Counter("eastguard_controller_acks_total", "result", "delta_base"); n != 1 {
		t.Errorf("%v delta_base acks, want 1", n)
	}
	if n := h.Counter("eastguard_controller_rule_set_pushes_total", "kind", "full"); n != 2 {
		t.Errorf("%v full pushes, want 2 (first sync, resync)", n)
	}
}

// TestCoalescing: versions committed while an update is in flight are
// skipped; the agent ends on the newest and never goes backwards.
func TestCoalescing(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil)
	h.waitApplied(a)
	for i := range 20 {
		h.Apply(twoNodes, strings.Replace(adminSSH, "port: 22", fmt.Sprintf("port: %d", 2000+i), 1))
	}
	st := h.waitApplied(a)
	if st.LatestVersion != 21 {
		t.Errorf("latest version %d, want 21", st.LatestVersion)
	}
	if !slices.IsSorted(a.enf.applied) || len(a.enf.applied) > 21 {
		t.Errorf("applied versions %v: want increasing, at most one each", a.enf.applied)
	}
}

// TestSlowAgentDoesNotBlockOthers: an agent stuck applying does not delay
// another node's update.
func TestSlowAgentDoesNotBlockOthers(t *testing.T) {
	h := newHarness(t)
	h.Apply(twoNodes)
	gate := &gate{}
	a := h.startAgent("node-a", h.Token("node-a", time.Hour), nil, nil, func(c *controlplane.Config) {
		c.Enforcer = &gatedEnforcer{Enforcer: c.Enforcer, gate: gate}
	})
	b := h.startAgent("node-b", h.Token("node-b", time.Hour), nil, nil)
	h.waitApplied(a)
	h.waitApplied(b)
	release := gate.close()
	h.Apply(strings.Replace(twoNodes, "port: 8080", "port: 8081", 1)) // both nodes change
	h.waitApplied(b)
	if v := a.enf.version(); v != 1 {
		t.Fatalf("node-a at version %d while its apply is held", v)
	}
	close(release)
	h.waitApplied(a)
}

// gate holds applies while closed.
type gate struct {
	mu sync.Mutex
	ch chan struct{}
}

func (g *gate) close() chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ch = make(chan struct{})
	return g.ch
}

func (g *gate) wait() {
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

type gatedEnforcer struct {
	controlplane.Enforcer
	gate *gate
}

func (e *gatedEnforcer) Apply(rs *ruleset.RuleSet) ([]string, error) {
	e.gate.wait()
	return e.Enforcer.Apply(rs)
}
