// Package recommend writes a policy from observed traffic (egctl
// recommend, GET /api/v1/recommend): one allow rule per observed edge
// between groups of workloads, and the comparison of the traffic with the
// policy in force. It computes from what it is given (the workloads, the
// store's aggregated edges, the policy set) and reads nothing itself.
//
// Invariants: it allows nothing the traffic did not show, but for what
// grouping means (a group's selector selects its workloads not seen
// talking; a world prefix the addresses that share it; ICMP every type,
// as the store keeps no ICMP type). Names and labels are data: the YAML
// is written by a YAML encoder and read back by internal/policy before it
// is returned, so no workload name or label can change its structure.
//
// It must not import restapi (which uses it) nor the store's
// implementations.
package recommend

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Prefix lengths world addresses are grouped by: several observed
// addresses in one such prefix become one cidr peer of that prefix, a
// lone address a /32 or /128.
const (
	WorldPrefix4 = 24
	WorldPrefix6 = 64
)

// MaxEdges bounds the store's aggregated edges a recommendation reads
// (the ones with the most flows; the caller says when there were more).
const MaxEdges = 20000

// maxRuleNameLen keeps generated rule names short enough to read (the
// language allows 253).
const maxRuleNameLen = 100

// Options say what to recommend.
type Options struct {
	// GroupBy is the label key workloads are grouped by (app, role,
	// k8s:namespace, ...).
	GroupBy string
	// Workload, when set, keeps only the edges from or to it.
	Workload string
	// IncludeDenied also counts edges the datapath denied; by default
	// only allowed and would-deny ones (the traffic of monitor mode).
	IncludeDenied bool
	// Name is the Policy's name.
	Name string
	// Since and Until are the observed range, for the document's header.
	Since, Until time.Time
}

// Observed returns the edges a recommendation is made from: those of
// the verdicts counted (allowed and would-deny; denied with
// IncludeDenied) and, with Workload, those from or to it.
func Observed(edges []store.FlowEdge, opts Options) []store.FlowEdge {
	var out []store.FlowEdge
	for _, e := range edges {
		if e.Verdict == ruleset.VerdictDenied && !opts.IncludeDenied {
			continue
		}
		if opts.Workload != "" && e.SrcWorkload != opts.Workload && e.DstWorkload != opts.Workload {
			continue
		}
		if e.SrcWorkload == "" && e.DstWorkload == "" {
			continue // nothing of Eastguard's saw it as a workload's
		}
		out = append(out, e)
	}
	return out
}

// side is one end of a recommended rule: its peers, the part of the rule
// name it gives, and its key (the peers' canonical form).
type side struct {
	peers []apiclient.RecommendedPeer
	name  string
	key   string
}

// grouper maps the ends of edges to sides.
type grouper struct {
	groupBy   string
	workloads map[string]*policy.Workload
	// world maps each observed world address to its prefix.
	world map[netip.Addr]netip.Prefix
	notes *notes
}

// workloadSide is the group of w: its groupBy label; without it, its full
// label set (which may also select workloads that have these labels and
// more); without labels, its addresses as /32 and /128 cidrs.
func (g *grouper) workloadSide(w *policy.Workload) (side, bool) {
	if v, ok := w.Labels[g.groupBy]; ok {
		if err := policy.CheckLabel(g.groupBy, v); err != nil {
			g.notes.add("workload %s: label %s left out: %v", w.Name, g.groupBy, err)
			return side{}, false
		}
		sel := map[string]string{g.groupBy: v}
		return side{peers: []apiclient.RecommendedPeer{{Selector: sel}}, name: v, key: "s:" + policy.Labels(sel).String()}, true
	}
	if len(w.Labels) > 0 {
		for k, v := range w.Labels {
			if err := policy.CheckLabel(k, v); err != nil {
				g.notes.add("workload %s: left out, a label is not valid: %v", w.Name, err)
				return side{}, false
			}
		}
		g.notes.add("workload %s has no label %s: selected by its full label set", w.Name, g.groupBy)
		sel := maps.Clone(map[string]string(w.Labels))
		return side{peers: []apiclient.RecommendedPeer{{Selector: sel}}, name: w.Name, key: "s:" + policy.Labels(sel).String()}, true
	}
	g.notes.add("workload %s has no labels: selected by its addresses", w.Name)
	var peers []apiclient.RecommendedPeer
	var keys []string
	for _, a := range w.Addresses {
		p := netip.PrefixFrom(a, a.BitLen())
		peers = append(peers, apiclient.RecommendedPeer{CIDR: p.String()})
		keys = append(keys, p.String())
	}
	return side{peers: peers, name: w.Name, key: "c:" + strings.Join(keys, ",")}, true
}

// end maps one end of an edge to its side.
func (g *grouper) end(wl string, a netip.Addr) (side, bool) {
	if wl != "" {
		w, ok := g.workloads[wl]
		if !ok {
			g.notes.add("workload %s is no longer defined: its flows are left out", wl)
			return side{}, false
		}
		return g.workloadSide(w)
	}
	p, ok := g.world[a.Unmap()]
	if !ok {
		return side{}, false
	}
	return side{peers: []apiclient.RecommendedPeer{{CIDR: p.String()}}, name: "world-" + p.String(), key: "c:" + p.String()}, true
}

// WorldPrefixes maps each address to the prefix it is recommended as:
// its /24 (IPv4) or /64 (IPv6) when at least one other address of addrs
// shares it, else the address alone (/32, /128).
func WorldPrefixes(addrs []netip.Addr) map[netip.Addr]netip.Prefix {
	wide := func(a netip.Addr) netip.Prefix {
		bits := WorldPrefix4
		if a.Is6() {
			bits = WorldPrefix6
		}
		p, _ := a.Prefix(bits)
		return p
	}
	count := make(map[netip.Prefix]map[netip.Addr]bool)
	for _, a := range addrs {
		p := wide(a)
		if count[p] == nil {
			count[p] = make(map[netip.Addr]bool)
		}
		count[p][a] = true
	}
	out := make(map[netip.Addr]netip.Prefix, len(addrs))
	for _, a := range addrs {
		if p := wide(a); len(count[p]) > 1 {
			out[a] = p
		} else {
			out[a] = netip.PrefixFrom(a, a.BitLen())
		}
	}
	return out
}

// PortRanges merges ports into ranges where traffic used every port of
// the range: each run of consecutive ports is one range, a port alone
// stays alone. The answer is sorted.
func PortRanges(ports []uint16) [][2]uint16 {
	ps := slices.Clone(ports)
	slices.Sort(ps)
	ps = slices.Compact(ps)
	var out [][2]uint16
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1][1] < 65535 && out[n-1][1]+1 == p {
			out[n-1][1] = p
			continue
		}
		out = append(out, [2]uint16{p, p})
	}
	return out
}

// notes collects what was left out, each said once.
type notes struct {
	seen map[string]bool
	list []string
}

func (n *notes) add(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	if n.seen == nil {
		n.seen = make(map[string]bool)
	}
	if !n.seen[s] {
		n.seen[s] = true
		n.list = append(n.list, s)
	}
}

// rule is a recommended rule being built.
type rule struct {
	from, to side
	// ports by protocol name (TCP, UDP: destination ports; ICMP,
	// ICMPv6: none).
	ports map[string][]uint16
	ev    apiclient.Evidence
}

func (r *rule) count(e store.FlowEdge) {
	r.ev.Flows += e.Flows
	switch e.Verdict {
	case ruleset.VerdictAllowed:
		r.ev.Allowed += e.Flows
	case ruleset.VerdictWouldDeny:
		r.ev.WouldDeny += e.Flows
	case ruleset.VerdictDenied:
		r.ev.Denied += e.Flows
	}
	first, last := e.FirstSeen, e.LastSeen
	if first.IsZero() {
		first = last
	}
	if r.ev.FirstSeen.IsZero() || first.Before(r.ev.FirstSeen) {
		r.ev.FirstSeen = first.UTC()
	}
	if last.After(r.ev.LastSeen) {
		r.ev.LastSeen = last.UTC()
	}
}

// Recommend writes the policy: one allow rule per pair of groups that
// traffic went between (from the source's group to the destination's),
// with the protocols and ports it used. workloads are the policy's
// workloads; edges the store's aggregation (Observed selects from them).
// The YAML it returns has passed internal/policy's parser and validator;
// an error means it did not, which only a bug can cause.
func Recommend(workloads []policy.Workload, edges []store.FlowEdge, opts Options) (*apiclient.Recommendation, error) {
	out := &apiclient.Recommendation{Since: opts.Since.UTC(), Until: opts.Until.UTC(), GroupBy: opts.GroupBy,
		Workload: opts.Workload, IncludeDenied: opts.IncludeDenied, Rules: []apiclient.RecommendedRule{}, Notes: []string{}}
	ns := &notes{}
	g := &grouper{groupBy: opts.GroupBy, workloads: make(map[string]*policy.Workload, len(workloads)), notes: ns}
	for i := range workloads {
		g.workloads[workloads[i].Name] = &workloads[i]
	}
	observed := Observed(edges, opts)
	var world []netip.Addr
	for _, e := range observed {
		for _, end := range []struct {
			wl string
			a  netip.Addr
		}{{e.SrcWorkload, e.SrcAddr}, {e.DstWorkload, e.DstAddr}} {
			if end.wl == "" && end.a.IsValid() {
				world = append(world, end.a.Unmap())
			}
		}
	}
	g.world = WorldPrefixes(world)

	rules := make(map[[2]string]*rule)
	for _, e := range observed {
		var proto string
		switch e.Protocol {
		case "TCP", "UDP":
			if e.Port == 0 {
				ns.add("%s flows to port 0 left out: a rule cannot name port 0 without allowing every port", e.Protocol)
				continue
			}
			proto = e.Protocol
		case "ICMP", "ICMPv6":
			proto = e.Protocol
		default:
			ns.add("%s flows left out: the policy language names TCP, UDP, ICMP and ICMPv6 only (ANY would allow every protocol)", e.Protocol)
			continue
		}
		from, ok := g.end(e.SrcWorkload, e.SrcAddr)
		if !ok {
			continue
		}
		to, ok := g.end(e.DstWorkload, e.DstAddr)
		if !ok {
			continue
		}
		k := [2]string{from.key, to.key}
		r := rules[k]
		if r == nil {
			r = &rule{from: from, to: to, ports: make(map[string][]uint16)}
			rules[k] = r
		}
		r.ports[proto] = append(r.ports[proto], e.Port)
		r.count(e)
	}
	keys := slices.Collect(maps.Keys(rules))
	slices.SortFunc(keys, func(a, b [2]string) int {
		ra, rb := rules[a], rules[b]
		return cmp.Or(cmp.Compare(ra.from.name, rb.from.name), cmp.Compare(ra.to.name, rb.to.name),
			cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1]))
	})
	used := make(map[string]bool)
	for _, k := range keys {
		r := rules[k]
		rr := apiclient.RecommendedRule{Name: ruleName(r.from.name+"-to-"+r.to.name, used), From: r.from.peers, To: r.to.peers, Evidence: r.ev}
		for _, proto := range []string{"TCP", "UDP", "ICMP", "ICMPv6"} {
			ports, ok := r.ports[proto]
			if !ok {
				continue
			}
			if proto == "ICMP" || proto == "ICMPv6" {
				rr.Ports = append(rr.Ports, apiclient.RecommendedPort{Protocol: proto})
				continue
			}
			for _, pr := range PortRanges(ports) {
				p := apiclient.RecommendedPort{Protocol: proto, Port: pr[0]}
				if pr[1] > pr[0] {
					p.EndPort = pr[1]
				}
				rr.Ports = append(rr.Ports, p)
			}
		}
		out.Rules = append(out.Rules, rr)
	}
	if ns.list != nil {
		out.Notes = ns.list
	}
	if len(out.Rules) == 0 {
		return out, nil
	}
	text, err := Document(opts, out.Rules)
	if err != nil {
		return nil, err
	}
	out.YAML = string(text)
	return out, nil
}

// ruleName makes s a rule name the language accepts (letters, digits,
// '-', '_', '.', starting with a letter or digit), short, and unique
// among used.
func ruleName(s string, used map[string]bool) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			b[i] = '-'
		}
	}
	name := strings.TrimLeft(string(b), "-_.")
	if len(name) > maxRuleNameLen {
		name = name[:maxRuleNameLen]
	}
	if name == "" {
		name = "rule"
	}
	unique := name
	for i := 2; used[unique]; i++ {
		unique = fmt.Sprintf("%s-%d", name, i)
	}
	used[unique] = true
	return unique
}

// The document's shape: the policy language (docs/POLICY.md), in field
// order.
type (
	docYAML struct {
		APIVersion string   `yaml:"apiVersion"`
		Kind       string   `yaml:"kind"`
		Metadata   metaYAML `yaml:"metadata"`
		Spec       specYAML `yaml:"spec"`
	}
	metaYAML struct {
		Name string `yaml:"name"`
	}
	specYAML struct {
		Rules []ruleYAML `yaml:"rules"`
	}
	ruleYAML struct {
		Name  string     `yaml:"name"`
		From  []peerYAML `yaml:"from"`
		To    []peerYAML `yaml:"to"`
		Ports []portYAML `yaml:"ports"`
	}
	peerYAML struct {
		Selector map[string]string `yaml:"selector,omitempty"`
		CIDR     string            `yaml:"cidr,omitempty"`
	}
	portYAML struct {
		Protocol string `yaml:"protocol"`
		Port     uint16 `yaml:"port,omitempty"`
		EndPort  uint16 `yaml:"endPort,omitempty"`
	}
)

// Document writes the Policy of rules as YAML, with a header saying what
// it was recommended from and a comment per rule with its evidence, and
// checks that internal/policy reads it back as valid. Comments hold only
// numbers, times and the (validated) label key: nothing a workload or
// label can choose.
func Document(opts Options, rules []apiclient.RecommendedRule) ([]byte, error) {
	doc := docYAML{APIVersion: policy.APIVersion, Kind: policy.KindPolicy, Metadata: metaYAML{Name: opts.Name}}
	peers := func(ps []apiclient.RecommendedPeer) []peerYAML {
		out := make([]peerYAML, len(ps))
		for i, p := range ps {
			out[i] = peerYAML{Selector: p.Selector, CIDR: p.CIDR}
		}
		return out
	}
	for _, r := range rules {
		ry := ruleYAML{Name: r.Name, From: peers(r.From), To: peers(r.To)}
		for _, p := range r.Ports {
			ry.Ports = append(ry.Ports, portYAML(p))
		}
		doc.Spec.Rules = append(doc.Spec.Rules, ry)
	}
	var root yaml.Node
	if err := root.Encode(doc); err != nil {
		return nil, fmt.Errorf("encode the recommended policy: %w", err)
	}
	scope := "every workload"
	if opts.Workload != "" {
		scope = "one workload's flows"
	}
	root.HeadComment = fmt.Sprintf("Recommended from the flows stored from %s to %s (%s), workloads grouped by label %s.\n"+
		"Review before applying: every rule allows what its group's workloads were seen doing, to every workload of the other group.",
		opts.Since.UTC().Format(time.RFC3339), opts.Until.UTC().Format(time.RFC3339), scope, opts.GroupBy)
	spec := mapValue(&root, "spec")
	seq := mapValue(spec, "rules")
	if seq == nil || len(seq.Content) != len(rules) {
		return nil, fmt.Errorf("encode the recommended policy: unexpected document shape")
	}
	for i, item := range seq.Content {
		ev := rules[i].Evidence
		flows := "flows"
		if ev.Flows == 1 {
			flows = "flow"
		}
		item.HeadComment = fmt.Sprintf("%d %s (%d allowed, %d would-deny, %d denied), first seen %s, last seen %s",
			ev.Flows, flows, ev.Allowed, ev.WouldDeny, ev.Denied, ev.FirstSeen.Format(time.RFC3339), ev.LastSeen.Format(time.RFC3339))
		for _, key := range []string{"from", "to", "ports"} {
			if v := mapValue(item, key); v != nil {
				v.Style = yaml.FlowStyle
			}
		}
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&root); err != nil {
		return nil, fmt.Errorf("encode the recommended policy: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode the recommended policy: %w", err)
	}
	if _, diags := policy.ParseAndValidate("<recommend>", buf.Bytes()); diags.HasErrors() {
		return nil, fmt.Errorf("the recommended policy does not validate: %w", diags.Errors().Err())
	}
	return buf.Bytes(), nil
}

// mapValue returns the value of key in a mapping node (or a document
// node's mapping), or nil.
func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil {
		return nil
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}
