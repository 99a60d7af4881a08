package recommend_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/recommend"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// benchWorld is 1,000 workloads of 100 apps on 10 nodes, a policy of one
// allow rule per app (app i to app i+1 on 8000-8009), and MaxEdges
// observed edges: workload pairs of neighbouring apps on 8000-8019, and a
// tenth of them from world addresses.
func benchWorld(b *testing.B) (*policy.Set, []store.FlowEdge) {
	b.Helper()
	set := &policy.Set{}
	for i := range 1000 {
		set.Workloads = append(set.Workloads, policy.Workload{
			Meta: policy.Meta{Name: fmt.Sprintf("w%d", i), Labels: policy.Labels{"app": fmt.Sprintf("a%d", i%100)}},
			Node: fmt.Sprintf("n%d", i%10), Interface: fmt.Sprintf("veth%d", i),
			Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})}})
	}
	for a := range 100 {
		set.Policies = append(set.Policies, policy.Policy{Meta: policy.Meta{Name: fmt.Sprintf("p%d", a)}, Rules: []policy.Rule{{
			Name: "r", Action: policy.ActionAllow,
			From:  []policy.Peer{{Selector: policy.Selector{"app": fmt.Sprintf("a%d", a)}}},
			To:    []policy.Peer{{Selector: policy.Selector{"app": fmt.Sprintf("a%d", (a+1)%100)}}},
			Ports: []policy.PortRule{{Protocol: ruleset.ProtocolTCP, Port: 8000, EndPort: 8009}}}}})
	}
	if diags := set.Validate(); diags.HasErrors() {
		b.Fatal(diags.Errors().Err())
	}
	now := time.Now()
	edges := make([]store.FlowEdge, 0, recommend.MaxEdges)
	for i := 0; len(edges) < recommend.MaxEdges; i++ {
		src, dst := i%1000, (i%1000+1)%1000
		e := store.FlowEdge{SrcWorkload: fmt.Sprintf("w%d", src), DstWorkload: fmt.Sprintf("w%d", dst), Protocol: "TCP",
			Port: uint16(8000 + (i/1000)%20), Verdict: ruleset.VerdictWouldDeny, Flows: 3, FirstSeen: now, LastSeen: now}
		if i%10 == 0 {
			e.SrcWorkload, e.SrcAddr = "", netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})
		}
		edges = append(edges, e)
	}
	return set, edges
}

// BenchmarkRecommend: a recommendation from MaxEdges edges, and its diff
// with the policy in force (the diff compiles the nodes and explains
// every distinct observed edge).
func BenchmarkRecommend(b *testing.B) {
	set, edges := benchWorld(b)
	opts := recommend.Options{GroupBy: "app", Name: "recommended"}
	b.Run("recommend", func(b *testing.B) {
		for b.Loop() {
			rec, err := recommend.Recommend(set.Workloads, edges, opts)
			if err != nil || len(rec.Rules) == 0 {
				b.Fatal(err)
			}
		}
	})
	b.Run("diff", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := recommend.Diff(set, edges, opts); err != nil {
				b.Fatal(err)
			}
		}
	})
}
