// Package servicemap builds the dashboard's views of the policy against
// the traffic: the service map (observed edges from the flow store's
// aggregation, the edges the policy's allow rules admit) and which
// workloads each rule of a policy selects. It computes from what it is
// given (a policy set, aggregated flows) and reads nothing itself.
//
// Invariants: every answer is bounded (MaxEdges, MaxPolicyEdges,
// MaxPolicyPairs; beyond
// them the answer says it is truncated); names and labels are passed
// through as data, never interpreted.
//
// It must not import restapi (which uses it) nor the store's
// implementations.
package servicemap

import (
	"cmp"
	"encoding/binary"
	"maps"
	"net/netip"
	"slices"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Bounds of a map.
const (
	// MaxEdges bounds the observed edges (the ones with most flows are
	// kept).
	MaxEdges = 20000
	// MaxPolicyEdges bounds the edges the policy admits, one by one
	// (PolicyEdges); MaxPolicyPairs the pairs of workloads the blocks of
	// PolicyBlocks stand for in all (the page expands them).
	MaxPolicyEdges = 20000
	MaxPolicyPairs = 250000
	// MaxWorldPeers: with more distinct unmanaged addresses than this
	// among the edges, they are all drawn as one peer, "world".
	MaxWorldPeers = 100
)

// World is the peer that stands for every unmanaged address.
const World = "world"

// Workloads lists the set's workloads, sorted by name.
func Workloads(set *policy.Set) []apiclient.MapWorkload {
	out := make([]apiclient.MapWorkload, 0, len(set.Workloads))
	for _, w := range set.Workloads {
		labels := maps.Clone(map[string]string(w.Labels))
		if labels == nil {
			labels = map[string]string{}
		}
		out = append(out, apiclient.MapWorkload{Name: w.Name, Node: w.Node, Labels: labels})
	}
	slices.SortFunc(out, func(a, b apiclient.MapWorkload) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Edges turns the store's groups into the map's edges: unmanaged ends are
// "world:<addr>", or "world" for all of them when there are more than
// MaxWorldPeers distinct ones (groups that then coincide are summed).
func Edges(groups []store.FlowEdge) []apiclient.MapEdge {
	world := make(map[netip.Addr]bool)
	for _, g := range groups {
		if g.SrcWorkload == "" {
			world[g.SrcAddr] = true
		}
		if g.DstWorkload == "" {
			world[g.DstAddr] = true
		}
	}
	collapse := len(world) > MaxWorldPeers
	name := func(wl string, a netip.Addr) string {
		switch {
		case wl != "":
			return wl
		case collapse || !a.IsValid():
			return World
		}
		return World + ":" + a.String()
	}
	type key struct {
		src, dst, proto string
		port            uint16
		verdict         ruleset.Verdict
	}
	index := make(map[key]int)
	out := make([]apiclient.MapEdge, 0, len(groups))
	for _, g := range groups {
		k := key{name(g.SrcWorkload, g.SrcAddr), name(g.DstWorkload, g.DstAddr), g.Protocol, g.Port, g.Verdict}
		if i, ok := index[k]; ok {
			e := &out[i]
			e.Flows, e.Packets, e.Bytes = e.Flows+g.Flows, e.Packets+g.Packets, e.Bytes+g.Bytes
			if g.LastSeen.After(e.LastSeen) {
				e.LastSeen = g.LastSeen
			}
			continue
		}
		index[k] = len(out)
		out = append(out, apiclient.MapEdge{Src: k.src, Dst: k.dst, Protocol: g.Protocol, Port: g.Port, Verdict: g.Verdict,
			Flows: g.Flows, Packets: g.Packets, Bytes: g.Bytes, LastSeen: g.LastSeen.UTC()})
	}
	return out
}

// selected returns the workloads the selector peers of peers select, in
// the set's order.
func selected(set *policy.Set, peers []policy.Peer) []*policy.Workload {
	var out []*policy.Workload
	for i := range set.Workloads {
		w := &set.Workloads[i]
		for _, p := range peers {
			if p.Selector != nil && p.Selector.Matches(w.Labels) {
				out = append(out, w)
				break
			}
		}
	}
	return out
}

// selects reports whether a selector of peers selects w.
func selects(peers []policy.Peer, w *policy.Workload) bool {
	for _, p := range peers {
		if p.Selector != nil && p.Selector.Matches(w.Labels) {
			return true
		}
	}
	return false
}

// subtract returns what of pr a deny rule's ports leave: nothing, pr
// itself, or for a port range the sub-ranges outside the deny's ranges.
// A nil pr (every protocol and port) is left whole unless the deny takes
// every port; ICMP is left whole or not at all.
func subtract(pr *policy.PortRule, deny []policy.PortRule) []*policy.PortRule {
	if deny == nil {
		return nil
	}
	if pr == nil {
		return []*policy.PortRule{pr}
	}
	left := []*policy.PortRule{pr}
	for i := range deny {
		d := &deny[i]
		if d.Protocol != pr.Protocol {
			continue
		}
		if pr.Protocol.IsICMP() {
			if d.ICMPType == nil || (pr.ICMPType != nil && *d.ICMPType == *pr.ICMPType && (d.ICMPCode == nil ||
				(pr.ICMPCode != nil && *d.ICMPCode == *pr.ICMPCode))) {
				return nil
			}
			continue
		}
		if d.Port == 0 {
			return nil // every port of the protocol
		}
		dlo, dhi := d.Port, max(d.EndPort, d.Port)
		var next []*policy.PortRule
		for _, l := range left {
			lo, hi := l.Port, max(l.EndPort, l.Port)
			if l.Port == 0 { // the allow's every port
				lo, hi = 1, 65535
			}
			if dhi < lo || dlo > hi {
				next = append(next, l)
				continue
			}
			if lo < dlo {
				next = append(next, portRange(l, lo, dlo-1))
			}
			if hi > dhi {
				next = append(next, portRange(l, dhi+1, hi))
			}
		}
		if left = next; len(left) == 0 {
			return nil
		}
	}
	return left
}

// portRange is a copy of pr for ports lo to hi.
func portRange(pr *policy.PortRule, lo, hi uint16) *policy.PortRule {
	c := *pr
	c.Port, c.EndPort = lo, 0
	if hi > lo {
		c.EndPort = hi
	}
	return &c
}

// PolicyEdges returns the (workload, workload, protocol, port) edges the
// allow rules admit, with their policy and rule: each allow rule's
// from-selected workloads times its to-selected ones, times its ports,
// less what the deny rules of enforcing policies take (a monitor
// policy's deny only reports): a port range a deny covers in part is cut
// into the ranges that remain. Peers that are not selectors (cidr, world,
// host) give no edge: the map draws workloads. Two cases stay coarse: an
// allow of every protocol and port stays one "any" edge whatever a deny
// takes out of it (the map cannot draw "everything but"), and a workload
// in monitor mode keeps the denies' cuts (they say what it would drop).
// egctl explain (GET /api/v1/explain) is the exact answer for one flow.
// Bounded by MaxPolicyEdges; truncated says edges were left out.
func PolicyEdges(set *policy.Set) (edges []apiclient.PolicyEdge, truncated bool) {
	edges = []apiclient.PolicyEdge{}
	complete := admitted(set, MaxPolicyPairs, func(p *policy.Policy, r *policy.Rule, pr *policy.PortRule, srcs, dsts []*policy.Workload) bool {
		for _, src := range srcs {
			for _, dst := range dsts {
				if len(edges) >= MaxPolicyEdges {
					return false
				}
				e := apiclient.PolicyEdge{Src: src.Name, Dst: dst.Name, Policy: p.Name, Rule: r.Name}
				e.Protocol, e.Port, e.EndPort = portsOf(pr)
				edges = append(edges, e)
			}
		}
		return true
	})
	return edges, !complete
}

// PolicyBlocks is PolicyEdges written compactly, as the map's answer
// carries it: every source of a block to every destination of it, on
// its protocol and ports. An allow rule between two apps of 50 replicas
// is one block of 50 and 50 names, not 2,500 edges (the map's answer at
// 1,000 workloads was 4 MB of them). Bounded by MaxPolicyPairs pairs in
// all; truncated says blocks were left out.
func PolicyBlocks(set *policy.Set) (blocks []apiclient.PolicyBlock, truncated bool) {
	blocks = []apiclient.PolicyBlock{}
	complete := admitted(set, MaxPolicyPairs, func(p *policy.Policy, r *policy.Rule, pr *policy.PortRule, srcs, dsts []*policy.Workload) bool {
		b := apiclient.PolicyBlock{Srcs: names(srcs), Dsts: names(dsts), Policy: p.Name, Rule: r.Name}
		b.Protocol, b.Port, b.EndPort = portsOf(pr)
		blocks = append(blocks, b)
		return true
	})
	return blocks, !complete
}

func names(ws []*policy.Workload) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.Name
	}
	return out
}

// portsOf is how an edge names a port rule: protocol, first port (0:
// every port) and last port of a range (0: not a range); "any" for nil.
func portsOf(pr *policy.PortRule) (protocol string, port, endPort uint16) {
	if pr == nil {
		return "any", 0, 0
	}
	if pr.EndPort > pr.Port {
		endPort = pr.EndPort
	}
	return pr.Protocol.String(), pr.Port, endPort
}

// admitted calls visit with what each allow rule admits, in the set's
// order: for each of the rule's port rules (nil: every protocol and
// port) less the denies' cuts, blocks of sources and destinations that
// every pair of admits on those same ports. It stops, returning false,
// when visit does or when the blocks stand for more than maxPairs pairs
// of workloads in all.
//
// The work is linear in the workloads, not in their pairs: which denies
// cut a pair depends only on which denies select its source (in their
// from) and which select its destination (in their to), so sources and
// destinations are grouped by those, and each pair of groups is one
// block per port rule left. With no deny between them, a rule is one
// block.
func admitted(set *policy.Set, maxPairs int, visit func(p *policy.Policy, r *policy.Rule, pr *policy.PortRule, srcs, dsts []*policy.Workload) bool) bool {
	var denies []*policy.Rule
	for pi := range set.Policies {
		p := &set.Policies[pi]
		if p.Monitor() {
			continue
		}
		for ri := range p.Rules {
			if p.Rules[ri].Action == policy.ActionDeny {
				denies = append(denies, &p.Rules[ri])
			}
		}
	}
	// remaining returns what of pr the denies (indices into denies, in
	// order) leave ([]: nothing; nil pr, every port: itself unless a deny
	// takes every port).
	remaining := func(cut []int, pr *policy.PortRule) []*policy.PortRule {
		left := []*policy.PortRule{pr}
		for _, i := range cut {
			var next []*policy.PortRule
			for _, l := range left {
				next = append(next, subtract(l, denies[i].Ports)...)
			}
			if left = next; len(left) == 0 {
				break
			}
		}
		return left
	}
	pairs := 0
	for pi := range set.Policies {
		p := &set.Policies[pi]
		for ri := range p.Rules {
			r := &p.Rules[ri]
			if r.Action != policy.ActionAllow {
				continue
			}
			srcGroups := groupByDenies(selected(set, r.From), len(denies), func(i int, w *policy.Workload) bool { return selects(denies[i].From, w) })
			dstGroups := groupByDenies(selected(set, r.To), len(denies), func(i int, w *policy.Workload) bool { return selects(denies[i].To, w) })
			ports := make([]*policy.PortRule, 0, max(len(r.Ports), 1))
			for i := range r.Ports {
				ports = append(ports, &r.Ports[i])
			}
			if r.Ports == nil {
				ports = append(ports, nil)
			}
			for _, allowed := range ports {
				for _, sg := range srcGroups {
					for _, dg := range dstGroups {
						for _, pr := range remaining(intersect(sg.denies, dg.denies), allowed) {
							if pairs += len(sg.members) * len(dg.members); pairs > maxPairs {
								return false
							}
							if !visit(p, r, pr, sg.members, dg.members) {
								return false
							}
						}
					}
				}
			}
		}
	}
	return true
}

// denyGroup is the workloads that the same denies select (on one side).
type denyGroup struct {
	denies  []int // ascending
	members []*policy.Workload
}

// groupByDenies splits ws by which of the n denies select them, groups
// in the order of their first member, members in ws's order.
func groupByDenies(ws []*policy.Workload, n int, sel func(i int, w *policy.Workload) bool) []*denyGroup {
	var groups []*denyGroup
	index := map[string]*denyGroup{}
	var key []byte
	for _, w := range ws {
		var ds []int
		key = key[:0]
		for i := range n {
			if sel(i, w) {
				ds = append(ds, i)
				key = binary.AppendUvarint(key, uint64(i))
			}
		}
		g := index[string(key)]
		if g == nil {
			g = &denyGroup{denies: ds}
			index[string(key)] = g
			groups = append(groups, g)
		}
		g.members = append(g.members, w)
	}
	return groups
}

// intersect returns the indices in both ascending lists.
func intersect(a, b []int) []int {
	var out []int
	for i, j := 0, 0; i < len(a) && j < len(b); {
		switch {
		case a[i] < b[j]:
			i++
		case a[i] > b[j]:
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

// RuleSelects names what a rule's from and to select: the workloads of
// its selectors, sorted, and its other peers ("cidr:<prefix>", "world",
// "host").
func RuleSelects(set *policy.Set, r *policy.Rule) apiclient.RuleSelects {
	names := func(peers []policy.Peer) []string {
		out := []string{}
		for _, w := range selected(set, peers) {
			out = append(out, w.Name)
		}
		slices.Sort(out)
		out = slices.Compact(out)
		for _, p := range peers {
			switch {
			case p.CIDR.IsValid():
				out = append(out, "cidr:"+p.CIDR.String())
			case p.World:
				out = append(out, World)
			case p.Host:
				out = append(out, "host")
			}
		}
		return out
	}
	return apiclient.RuleSelects{From: names(r.From), To: names(r.To)}
}
