package compile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Counts are the sizes of a rule set as compiled (before Encode resolves
// overlaps into map entries).
type Counts struct {
	Endpoints int `json:"endpoints" yaml:"endpoints"`
	IPCache   int `json:"ipcache" yaml:"ipcache"`
	Entries   int `json:"entries" yaml:"entries"`
	Rules     int `json:"rules" yaml:"rules"`
}

// NodeView is a node's compiled rule set as egctl compile shows it: the
// rule set, its hash, its counts, and the datapath map entries it needs
// against the limits.
type NodeView struct {
	Node       string                 `json:"node"`
	Hash       string                 `json:"hash"`
	Counts     Counts                 `json:"counts"`
	MapEntries ruleset.Size           `json:"mapEntries"`
	Limits     ruleset.Limits         `json:"limits"`
	Endpoints  []ruleset.Endpoint     `json:"endpoints"`
	IPCache    []ruleset.IPCacheEntry `json:"ipcache"`
	Entries    []ruleset.Entry        `json:"entries"`
	Rules      []ruleset.RuleName     `json:"rules"`
}

// View returns the view of one compiled node.
func (r *Result) View(node string, limits ruleset.Limits) (*NodeView, error) {
	rs, ok := r.RuleSets[node]
	if !ok {
		return nil, fmt.Errorf("node %q: %w", node, ErrUnknownNode)
	}
	if limits == (ruleset.Limits{}) {
		limits = ruleset.DefaultLimits()
	}
	return &NodeView{
		Node: node, Hash: rs.Hash(),
		Counts:     Counts{len(rs.Endpoints), len(rs.IPCache), len(rs.Entries), len(rs.Rules)},
		MapEntries: r.Sizes[node], Limits: limits,
		Endpoints: rs.Endpoints, IPCache: rs.IPCache, Entries: rs.Entries, Rules: rs.Rules,
	}, nil
}

// JSON renders the view as indented JSON with the rule set's own field
// names.
func (v *NodeView) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render rule set of %s: %w", v.Node, err)
	}
	return append(b, '\n'), nil
}

// YAML renders the view for people: one flow-style line per item, with a
// comment naming identities, workloads and rules.
func (v *NodeView) YAML(identities map[ruleset.Identity]string) ([]byte, error) {
	endpoints := make(map[ruleset.EndpointID]string, len(v.Endpoints))
	names := make(map[ruleset.RuleID]string, len(v.Rules))
	for _, e := range v.Endpoints {
		endpoints[e.ID] = e.Workload
	}
	for _, r := range v.Rules {
		names[r.ID] = r.Name
	}
	ident := func(id ruleset.Identity) string {
		if s, ok := identities[id]; ok {
			return s
		}
		return "identity " + strconv.FormatUint(uint64(id), 10)
	}

	doc := yMap(
		"node", yStr(v.Node), "",
		"hash", yStr(v.Hash), "",
		"counts", yFlow(yMap(
			"endpoints", yInt(v.Counts.Endpoints), "", "ipcache", yInt(v.Counts.IPCache), "",
			"entries", yInt(v.Counts.Entries), "", "rules", yInt(v.Counts.Rules), "")), "as compiled",
		"mapEntries", yFlow(yMap(
			"endpoints", yInt(v.MapEntries.Endpoints), "", "ipcache", yInt(v.MapEntries.IPCache), "",
			"policy", yInt(v.MapEntries.Policy), "", "policyRanges", yInt(v.MapEntries.PolicyRanges), "")), "datapath map entries needed",
		"limits", yFlow(yMap(
			"endpoints", yInt(v.Limits.Endpoints), "", "ipcache", yInt(v.Limits.IPCache), "",
			"policy", yInt(v.Limits.Policy), "", "policyRanges", yInt(v.Limits.PolicyRanges), "")), "",
	)
	var eps, ipc, ents, rules []*yaml.Node
	for _, e := range v.Endpoints {
		m := yMap("id", yInt(int(e.ID)), "", "workload", yStr(e.Workload), "")
		if e.Interface != "" {
			m.Content = append(m.Content, yStr("interface"), yStr(e.Interface))
		}
		m.Content = append(m.Content, yStr("identity"), yInt(int(e.Identity)), yStr("mode"), yStr(e.Mode.String()))
		comment := ident(e.Identity)
		if e.HostMode() {
			comment = "host mode"
		}
		eps = append(eps, yComment(yFlow(m), comment))
	}
	for _, c := range v.IPCache {
		ipc = append(ipc, yComment(yFlow(yMap("prefix", yStr(c.Prefix.String()), "", "identity", yInt(int(c.Identity)), "")), ident(c.Identity)))
	}
	for _, e := range v.Entries {
		m := yMap("endpoint", yInt(int(e.Endpoint)), "", "direction", yStr(e.Direction.String()), "",
			"peer", yInt(int(e.Peer)), "", "protocol", yStr(e.Protocol.String()), "")
		if e.Port != 0 {
			m.Content = append(m.Content, yStr("port"), yInt(int(e.Port)))
		}
		if e.EndPort != 0 {
			m.Content = append(m.Content, yStr("endPort"), yInt(int(e.EndPort)))
		}
		if e.ICMPType != nil {
			m.Content = append(m.Content, yStr("icmpType"), yInt(int(*e.ICMPType)))
		}
		if e.ICMPCode != nil {
			m.Content = append(m.Content, yStr("icmpCode"), yInt(int(*e.ICMPCode)))
		}
		m.Content = append(m.Content, yStr("verdict"), yStr(e.Verdict.String()), yStr("rule"), yInt(int(e.Rule)))
		arrow := "<-"
		if e.Direction == ruleset.Egress {
			arrow = "->"
		}
		ents = append(ents, yComment(yFlow(m), fmt.Sprintf("%s %s %s: %s", endpoints[e.Endpoint], arrow, ident(e.Peer), names[e.Rule])))
	}
	for _, r := range v.Rules {
		rules = append(rules, yFlow(yMap("id", yInt(int(r.ID)), "", "name", yStr(r.Name), "")))
	}
	doc.Content = append(doc.Content,
		yStr("endpoints"), ySeq(eps), yStr("ipcache"), ySeq(ipc),
		yStr("entries"), ySeq(ents), yStr("rules"), ySeq(rules))

	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("render rule set of %s: %w", v.Node, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render rule set of %s: %w", v.Node, err)
	}
	return buf.Bytes(), nil
}

func yStr(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: s} }
func yInt(n int) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(n)}
}
func yFlow(n *yaml.Node) *yaml.Node { n.Style = yaml.FlowStyle; return n }
func yComment(n *yaml.Node, c string) *yaml.Node {
	n.LineComment = c
	return n
}

func ySeq(items []*yaml.Node) *yaml.Node {
	n := &yaml.Node{Kind: yaml.SequenceNode, Content: items}
	if len(items) == 0 {
		n.Style = yaml.FlowStyle
	}
	return n
}

// mapping builds a mapping from key, value, comment triples.
func yMap(kvc ...any) *yaml.Node {
	m := &yaml.Node{Kind: yaml.MappingNode}
	for i := 0; i+2 < len(kvc); i += 3 {
		k := yStr(kvc[i].(string))
		v := kvc[i+1].(*yaml.Node)
		if c, _ := kvc[i+2].(string); c != "" {
			v.LineComment = c
		}
		m.Content = append(m.Content, k, v)
	}
	return m
}
