package servicemap

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/eastguard/eastguard/controller/apiclient"
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

// allowAll is n workloads, w-0 ... w-n-1, labelled tier=a for even and
// tier=b for odd ones, and one rule letting every workload reach every
// other on any port.
func allowAll(n int) *policy.Set {
	set := &policy.Set{}
	for i := range n {
		tier := "a"
		if i%2 == 1 {
			tier = "b"
		}
		set.Workloads = append(set.Workloads, policy.Workload{Meta: policy.Meta{Name: fmt.Sprintf("w-%d", i), Labels: policy.Labels{"tier": tier}}})
	}
	set.Policies = []policy.Policy{{Meta: policy.Meta{Name: "all"}, Rules: []policy.Rule{{Name: "any", Action: policy.ActionAllow,
		From: []policy.Peer{{Selector: policy.Selector{}}}, To: []policy.Peer{{Selector: policy.Selector{}}}}}}}
	return set
}

// expand lists the pairs blocks stand for, as PolicyEdges would name
// them, sorted.
func expand(blocks []apiclient.PolicyBlock) []string {
	var out []string
	for _, b := range blocks {
		for _, s := range b.Srcs {
			for _, d := range b.Dsts {
				out = append(out, fmt.Sprintf("%s>%s %s/%d-%d %s/%s", s, d, b.Protocol, b.Port, b.EndPort, b.Policy, b.Rule))
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestPolicyBlocksCompact: an allow rule with no deny between its
// workloads is one block, however many pairs it admits (the map's answer
// at 1,000 workloads was 4 MB of per-pair edges before).
func TestPolicyBlocksCompact(t *testing.T) {
	blocks, truncated := PolicyBlocks(allowAll(400))
	if truncated || len(blocks) != 1 || len(blocks[0].Srcs) != 400 || len(blocks[0].Dsts) != 400 {
		t.Fatalf("allow-all over 400 workloads: %d blocks (truncated %v), want one of 400 x 400", len(blocks), truncated)
	}
	if b := blocks[0]; b.Protocol != "any" || b.Port != 0 || b.Policy != "all" || b.Rule != "any" {
		t.Errorf("the block: %+v", b)
	}
}

// TestPolicyBlocksMatchEdges: the blocks stand for exactly the pairs
// PolicyEdges lists, with denies cutting some sources' ports (a deny
// from tier=b to w-1 on TCP 22, one from w-2 to everyone on UDP).
func TestPolicyBlocksMatchEdges(t *testing.T) {
	set := allowAll(12)
	set.Policies[0].Rules[0].Ports = []policy.PortRule{{Protocol: ruleset.ProtocolTCP, Port: 20, EndPort: 30}, {Protocol: ruleset.ProtocolUDP}}
	set.Policies = append(set.Policies, policy.Policy{Meta: policy.Meta{Name: "guard"}, Rules: []policy.Rule{
		{Name: "no-ssh", Action: policy.ActionDeny, From: []policy.Peer{{Selector: policy.Selector{"tier": "b"}}},
			To: []policy.Peer{{Selector: policy.Selector{}}}, Ports: []policy.PortRule{{Protocol: ruleset.ProtocolTCP, Port: 22}}},
		{Name: "no-udp", Action: policy.ActionDeny, From: []policy.Peer{{Selector: policy.Selector{"tier": "a"}}},
			To: []policy.Peer{{Selector: policy.Selector{"tier": "b"}}}, Ports: []policy.PortRule{{Protocol: ruleset.ProtocolUDP}}},
	}})
	blocks, truncated := PolicyBlocks(set)
	edges, edgesTruncated := PolicyEdges(set)
	if truncated || edgesTruncated {
		t.Fatalf("truncated: blocks %v, edges %v", truncated, edgesTruncated)
	}
	var want []string
	for _, e := range edges {
		want = append(want, fmt.Sprintf("%s>%s %s/%d-%d %s/%s", e.Src, e.Dst, e.Protocol, e.Port, e.EndPort, e.Policy, e.Rule))
	}
	slices.Sort(want)
	got := expand(blocks)
	if !slices.Equal(got, want) {
		t.Errorf("blocks stand for %d pairs, edges are %d\n got %v\nwant %v", len(got), len(want), got, want)
	}
	// Sources fall in two groups by the denies that select them (tier a,
	// tier b), destinations in two (tier a, tier b): on TCP, four pairs
	// of groups, tier b's sources with 20-21 and 23-30 (two blocks each),
	// tier a's with 20-30; on UDP, three (tier a to tier b is cut whole).
	if len(want) < 144 || len(blocks) != 9 {
		t.Errorf("%d pairs in %d blocks: the fixture does not exercise the grouping", len(want), len(blocks))
	}
	for _, e := range edges {
		if e.Protocol == "TCP" && e.Port <= 22 && (e.EndPort >= 22 || e.Port == 22) && tierOf(e.Src) == "b" {
			t.Errorf("TCP 22 from a tier-b source admitted: %+v", e)
		}
		if e.Protocol == "UDP" && tierOf(e.Src) == "a" && tierOf(e.Dst) == "b" {
			t.Errorf("UDP from tier a to tier b admitted: %+v", e)
		}
	}
}

func tierOf(name string) string {
	var i int
	fmt.Sscanf(name, "w-%d", &i)
	if i%2 == 1 {
		return "b"
	}
	return "a"
}

// TestPolicyBlocksBounded: past MaxPolicyPairs pairs the answer is
// truncated, and the work to find that out is linear in the workloads.
func TestPolicyBlocksBounded(t *testing.T) {
	set := allowAll(400) // 160,000 pairs a rule
	set.Policies[0].Rules = append(set.Policies[0].Rules, set.Policies[0].Rules[0])
	set.Policies[0].Rules[1].Name = "again"
	blocks, truncated := PolicyBlocks(set)
	if !truncated || len(blocks) != 1 || blocks[0].Rule != "any" {
		t.Fatalf("400 x 400 pairs twice: truncated %v, %d blocks; want the first rule's block and truncated", truncated, len(blocks))
	}
	pairs := 0
	for _, b := range blocks {
		pairs += len(b.Srcs) * len(b.Dsts)
	}
	if pairs > MaxPolicyPairs {
		t.Errorf("%d pairs returned, bound %d", pairs, MaxPolicyPairs)
	}
}
