package servicemap

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// TestWorldCollapsed: a few unmanaged peers are drawn one by one; beyond
// MaxWorldPeers they are one peer, "world", their edges summed.
func TestWorldCollapsed(t *testing.T) {
	groups := func(n int) []store.FlowEdge {
		var out []store.FlowEdge
		for i := range n {
			out = append(out, store.FlowEdge{SrcAddr: netip.AddrFrom4([4]byte{203, 0, byte(i / 250), byte(i % 250)}), DstWorkload: "db-1",
				Protocol: "TCP", Port: 22, Verdict: ruleset.VerdictDenied, Flows: 1, Packets: 2})
		}
		return out
	}
	few := Edges(groups(3))
	if len(few) != 3 || few[0].Src != "world:203.0.0.0" {
		t.Errorf("3 unmanaged peers: %+v", few)
	}
	many := Edges(groups(MaxWorldPeers + 1))
	if len(many) != 1 || many[0].Src != World || many[0].Flows != MaxWorldPeers+1 || many[0].Packets != 2*(MaxWorldPeers+1) {
		t.Errorf("%d unmanaged peers: %+v, want one world edge with their sums", MaxWorldPeers+1, many)
	}
}

// TestPolicyEdgesBounded: an allow-all between 200 workloads (40,000
// edges) stops at MaxPolicyEdges and says so.
func TestPolicyEdgesBounded(t *testing.T) {
	set := &policy.Set{}
	for i := range 200 {
		set.Workloads = append(set.Workloads, policy.Workload{Meta: policy.Meta{Name: fmt.Sprintf("w-%d", i), Labels: policy.Labels{"a": "b"}}})
	}
	set.Policies = []policy.Policy{{Meta: policy.Meta{Name: "all"}, Rules: []policy.Rule{{Name: "any", Action: policy.ActionAllow,
		From: []policy.Peer{{Selector: policy.Selector{}}}, To: []policy.Peer{{Selector: policy.Selector{}}}}}}}
	edges, truncated := PolicyEdges(set)
	if len(edges) != MaxPolicyEdges || !truncated {
		t.Errorf("%d edges, truncated %v; want %d and true", len(edges), truncated, MaxPolicyEdges)
	}
	if edges[0].Protocol != "any" || edges[0].Port != 0 {
		t.Errorf("an allow of every port: %+v", edges[0])
	}
}
