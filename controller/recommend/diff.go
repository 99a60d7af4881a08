package recommend

import (
	"cmp"
	"errors"
	"net/netip"
	"slices"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/restapi/servicemap"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Diff compares the observed edges (Observed of edges) with the policy in
// force, set:
//
//   - NotAllowed: every observed edge the policy does not allow, decided
//     exactly as the datapath would (compile.Explain on the compiled rule
//     sets) with every workload without a mode in enforce mode: these
//     break when the workloads switch to enforce. ICMP edges are left
//     out (with a note): the store keeps no ICMP type to decide them by.
//   - Unused: the (workload, workload, protocol, port) edges the allow
//     rules admit (servicemap.PolicyEdges) that no observed edge falls in.
//     Rules whose peers are cidrs or world give no such edge and are not
//     compared.
//
// With opts.Workload, only edges from or to it are compared.
func Diff(set *policy.Set, edges []store.FlowEdge, opts Options) (*apiclient.RecommendDiff, []string, error) {
	ns := &notes{}
	observed := Observed(edges, opts)
	out := &apiclient.RecommendDiff{NotAllowed: []apiclient.DiffEdge{}, Unused: []apiclient.PolicyEdge{}}

	var nodes []string
	for _, e := range observed {
		for _, wl := range []string{e.SrcWorkload, e.DstWorkload} {
			if w, ok := set.Workload(wl); ok && !slices.Contains(nodes, w.Node) {
				nodes = append(nodes, w.Node)
			}
		}
	}
	var res *compile.Result
	if len(nodes) > 0 {
		var err error
		if res, err = compile.Compile(set, compile.Options{Nodes: nodes}); err != nil {
			return nil, nil, err
		}
	}
	type key struct {
		src, dst, proto string
		port            uint16
	}
	index := make(map[key]int)
	for _, e := range observed {
		proto, ok := protocols[e.Protocol]
		if !ok {
			ns.add("%s flows are not compared: the policy language cannot name them alone", e.Protocol)
			continue
		}
		if proto.IsICMP() {
			ns.add("%s flows are not compared: the store keeps no ICMP type to decide them by", e.Protocol)
			continue
		}
		src, dst := endName(e.SrcWorkload, e.SrcAddr), endName(e.DstWorkload, e.DstAddr)
		k := key{src, dst, e.Protocol, e.Port}
		if i, ok := index[k]; ok {
			d := &out.NotAllowed[i]
			d.Flows += e.Flows
			if e.FirstSeen.Before(d.FirstSeen) {
				d.FirstSeen = e.FirstSeen.UTC()
			}
			if e.LastSeen.After(d.LastSeen) {
				d.LastSeen = e.LastSeen.UTC()
			}
			continue
		}
		x, err := compile.Explain(set, res, compile.Query{From: src, To: dst, Protocol: proto, Port: e.Port})
		switch {
		case errors.Is(err, compile.ErrNoManagedEnd):
			continue
		case err != nil:
			// A workload no longer defined, or ends with no common
			// address family: not decidable by the policy in force.
			ns.add("%s -> %s %s/%d not compared: %v", src, dst, e.Protocol, e.Port, err)
			continue
		case x.Verdict == ruleset.VerdictAllowed:
			continue
		}
		index[k] = len(out.NotAllowed)
		out.NotAllowed = append(out.NotAllowed, apiclient.DiffEdge{Src: src, Dst: dst, Protocol: e.Protocol, Port: e.Port,
			Flows: e.Flows, FirstSeen: e.FirstSeen.UTC(), LastSeen: e.LastSeen.UTC(), Verdict: x.Verdict, Rule: x.Rule})
	}
	slices.SortFunc(out.NotAllowed, func(a, b apiclient.DiffEdge) int {
		return cmp.Or(cmp.Compare(a.Src, b.Src), cmp.Compare(a.Dst, b.Dst), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})

	// The observed edges between workloads, by pair: a policy edge is
	// compared with its pair's only.
	pairs := make(map[[2]string][]store.FlowEdge)
	for _, e := range observed {
		if e.SrcWorkload != "" && e.DstWorkload != "" {
			k := [2]string{e.SrcWorkload, e.DstWorkload}
			pairs[k] = append(pairs[k], e)
		}
	}
	pedges, truncated := servicemap.PolicyEdges(set)
	out.Truncated = truncated
	for _, pe := range pedges {
		if opts.Workload != "" && pe.Src != opts.Workload && pe.Dst != opts.Workload {
			continue
		}
		if !slices.ContainsFunc(pairs[[2]string{pe.Src, pe.Dst}], func(e store.FlowEdge) bool { return covers(pe, e) }) {
			out.Unused = append(out.Unused, pe)
		}
	}
	return out, ns.list, nil
}

// endName names an edge's end as Explain takes it: the workload, else
// its address.
func endName(wl string, a netip.Addr) string {
	if wl != "" {
		return wl
	}
	return a.String()
}

// protocols are the store's protocol names the policy language names.
var protocols = map[string]ruleset.Protocol{
	"TCP": ruleset.ProtocolTCP, "UDP": ruleset.ProtocolUDP, "ICMP": ruleset.ProtocolICMP, "ICMPv6": ruleset.ProtocolICMPv6,
}

// covers reports whether an observed edge falls in a policy edge.
func covers(pe apiclient.PolicyEdge, e store.FlowEdge) bool {
	if pe.Src != e.SrcWorkload || pe.Dst != e.DstWorkload {
		return false
	}
	switch {
	case pe.Protocol == "any":
		return true
	case pe.Protocol == ruleset.ProtocolAny.String():
		if e.Protocol != "TCP" && e.Protocol != "UDP" {
			return false
		}
	case pe.Protocol != e.Protocol:
		return false
	}
	if pe.Port == 0 {
		return true
	}
	return e.Port >= pe.Port && e.Port <= max(pe.EndPort, pe.Port)
}
