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

// TestPolicyEdgesCutByDenies: an enforcing deny cuts the ports it takes
// out of an allowed range (and takes an edge away whole when it covers
// it); a monitor policy's deny cuts nothing.
func TestPolicyEdgesCutByDenies(t *testing.T) {
	const doc = `
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: web-1, labels: {app: web}}
spec: {node: node-a, interface: veth-web1, addresses: [10.250.1.2]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: db-1, labels: {app: db}}
spec: {node: node-b, interface: veth-db1, addresses: [10.250.2.2]}
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  rules:
    - name: web-to-db
      from: [{selector: {app: web}}]
      to: [{selector: {app: db}}]
      ports: [{protocol: TCP, port: 5000, endPort: 6000}, {protocol: TCP, port: 22}, {protocol: UDP}]
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: guard}
spec:
  rules:
    - name: no-5432
      action: deny
      from: [{selector: {app: web}}]
      to: [{selector: {app: db}}]
      ports: [{protocol: TCP, port: 5432}, {protocol: TCP, port: 5990, endPort: 6100}, {protocol: UDP, port: 53}]
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: audit}
spec:
  mode: monitor
  rules:
    - name: no-ssh
      action: deny
      from: [{selector: {app: web}}]
      to: [{selector: {app: db}}]
      ports: [{protocol: TCP, port: 22}]
`
	set, diags := policy.ParseAndValidate("edges.yaml", []byte(doc))
	if diags.HasErrors() {
		t.Fatalf("fixture: %v", diags)
	}
	edges, truncated := PolicyEdges(set)
	var got []string
	for _, e := range edges {
		got = append(got, fmt.Sprintf("%s>%s %s/%d-%d", e.Src, e.Dst, e.Protocol, e.Port, e.EndPort))
	}
	want := []string{
		"web-1>db-1 TCP/5000-5431", "web-1>db-1 TCP/5433-5989", // 5432 and 5990-6000 denied
		"web-1>db-1 TCP/22-0",                            // the monitor policy's deny only reports
		"web-1>db-1 UDP/1-52", "web-1>db-1 UDP/54-65535", // every UDP port but 53
	}
	if truncated || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("policy edges\n got %v\nwant %v", got, want)
	}
}
