package compile

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Query is a flow to explain: from and to are workload names or addresses;
// Port is in the datapath's port space (TCP/UDP destination port, or
// type<<8|code for ICMP).
type Query struct {
	From, To string
	Protocol ruleset.Protocol
	Port     uint16
}

// Party is one end of an explained flow.
type Party struct {
	// Workload is nil for an address no workload owns.
	Workload *policy.Workload
	Addr     netip.Addr
}

func (p Party) String() string {
	if p.Workload == nil {
		return p.Addr.String() + " (unmanaged)"
	}
	return fmt.Sprintf("%s (%s on %s)", p.Workload.Name, p.Addr, p.Workload.Node)
}

// EndDecision is what one managed end decides, exactly as its node's
// datapath would (ruleset.Tables.Decide on the compiled rule set).
type EndDecision struct {
	Node      string
	Workload  string
	Endpoint  ruleset.EndpointID
	Direction ruleset.Direction
	Mode      ruleset.Mode
	// Peer is the other end's identity as this node's ipcache resolves it:
	// world for a managed workload that no rule on the node names (its
	// ipcache holds only what the node's policy names; the verdict is the
	// one its own identity would get), which PeerName then says.
	Peer     ruleset.Identity
	PeerName string
	Verdict  ruleset.Verdict
	Rule     ruleset.RuleID
	RuleName string
}

// Explanation is the verdict on a flow at each managed end, and overall.
type Explanation struct {
	From, To Party
	Protocol ruleset.Protocol
	Port     uint16
	// Source and Destination are nil for an unmanaged end.
	Source, Destination *EndDecision
	// Verdict: denied if either end denies, else would-deny if either end
	// would deny, else allowed. Rule names the deciding rule.
	Verdict ruleset.Verdict
	Rule    string
}

// ErrNoManagedEnd is returned when neither end of a flow is a managed
// workload: nothing of Eastguard's decides it.
var ErrNoManagedEnd = errors.New("neither end is a managed workload")

// ErrNoCommonFamily is returned when the two ends have no addresses of one
// family (or none of the family the protocol needs).
var ErrNoCommonFamily = errors.New("no address of a common family")

// Explain decides a flow with the compiled rule sets of both ends' nodes.
// res must hold the nodes of the managed ends (compile them all, or name
// them in Options.Nodes).
func Explain(set *policy.Set, res *Result, q Query) (*Explanation, error) {
	from, err := resolveParty(set, q.From)
	if err != nil {
		return nil, fmt.Errorf("from: %w", err)
	}
	to, err := resolveParty(set, q.To)
	if err != nil {
		return nil, fmt.Errorf("to: %w", err)
	}
	if from.Workload == nil && to.Workload == nil {
		return nil, ErrNoManagedEnd
	}
	if err := pickAddresses(&from, &to, q.Protocol); err != nil {
		return nil, err
	}
	x := &Explanation{From: from, To: to, Protocol: q.Protocol, Port: q.Port}
	if from.Workload != nil {
		if x.Source, err = decideEnd(res, from.Workload, ruleset.Egress, to, q); err != nil {
			return nil, err
		}
	}
	if to.Workload != nil {
		if x.Destination, err = decideEnd(res, to.Workload, ruleset.Ingress, from, q); err != nil {
			return nil, err
		}
	}
	x.Verdict, x.Rule = combine(x.Source, x.Destination)
	return x, nil
}

// combine gives the overall verdict, and names the rule of the first end
// (source first) that reached it, preferring a named rule to the default
// deny.
func combine(ends ...*EndDecision) (ruleset.Verdict, string) {
	verdict := ruleset.VerdictAllowed
	for _, e := range ends {
		if e != nil && rank(e.Verdict) > rank(verdict) {
			verdict = e.Verdict
		}
	}
	rule := ""
	for _, e := range ends {
		if e == nil || e.Verdict != verdict {
			continue
		}
		if rule == "" || (rule == ruleset.DefaultDenyName && e.Rule != ruleset.RuleDefaultDeny) {
			rule = e.RuleName
		}
	}
	return verdict, rule
}

func rank(v ruleset.Verdict) int {
	switch v {
	case ruleset.VerdictDenied:
		return 3
	case ruleset.VerdictWouldDeny:
		return 2
	case ruleset.VerdictAllowed:
		return 1
	}
	return 0
}

func resolveParty(set *policy.Set, s string) (Party, error) {
	if w, ok := set.Workload(s); ok {
		return Party{Workload: w}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return Party{}, fmt.Errorf("%q is neither a workload name nor an IP address", s)
	}
	a = a.Unmap()
	for i := range set.Workloads {
		if slices.Contains(set.Workloads[i].Addresses, a) {
			return Party{Workload: &set.Workloads[i], Addr: a}, nil
		}
	}
	return Party{Addr: a}, nil
}

// pickAddresses chooses the addresses of workloads given by name: the first
// address of a family both ends have (IPv4 before IPv6), or the family the
// protocol or the other end's address imposes.
func pickAddresses(from, to *Party, proto ruleset.Protocol) error {
	families := []bool{true, false} // is4
	switch {
	case proto == ruleset.ProtocolICMP:
		families = []bool{true}
	case proto == ruleset.ProtocolICMPv6:
		families = []bool{false}
	}
	for _, is4 := range families {
		fa, okf := addrOf(*from, is4)
		ta, okt := addrOf(*to, is4)
		if okf && okt {
			from.Addr, to.Addr = fa, ta
			return nil
		}
	}
	return fmt.Errorf("%w: %s and %s for %s", ErrNoCommonFamily, partyName(*from), partyName(*to), proto)
}

func addrOf(p Party, is4 bool) (netip.Addr, bool) {
	if p.Addr.IsValid() {
		return p.Addr, p.Addr.Is4() == is4
	}
	for _, a := range p.Workload.Addresses {
		if a.Is4() == is4 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func partyName(p Party) string {
	if p.Workload != nil {
		return p.Workload.Name
	}
	return p.Addr.String()
}

func decideEnd(res *Result, w *policy.Workload, dir ruleset.Direction, other Party, q Query) (*EndDecision, error) {
	rs, ok := res.RuleSets[w.Node]
	if !ok {
		return nil, fmt.Errorf("node %s of workload %s was not compiled", w.Node, w.Name)
	}
	var ep ruleset.Endpoint
	found := false
	for _, e := range rs.Endpoints {
		if e.Workload == w.Name {
			ep, found = e, true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("workload %s has no endpoint in the rule set of node %s", w.Name, w.Node)
	}
	peer := ResolveAddr(rs, other.Addr)
	v := res.Tables[w.Node].Decide(ep, dir, peer, q.Protocol, q.Port)
	name := res.Identities[peer]
	if peer == ruleset.IdentityWorld && other.Workload != nil {
		name = fmt.Sprintf("%s (workload %s: no rule on node %s names it)", name, other.Workload.Name, w.Node)
	}
	return &EndDecision{
		Node: w.Node, Workload: w.Name, Endpoint: ep.ID, Direction: dir, Mode: ep.Mode,
		Peer: peer, PeerName: name,
		Verdict: v.Verdict, Rule: v.Rule, RuleName: rs.RuleName(v.Rule),
	}, nil
}

// ResolveAddr returns the identity a rule set's ipcache gives an address:
// the longest matching prefix, or world when none matches (as the datapath's
// LPM lookup does).
func ResolveAddr(rs *ruleset.RuleSet, a netip.Addr) ruleset.Identity { return rs.Resolve(a) }

// ParseService parses a flow's protocol and port as egctl explain takes
// it: "22/tcp", "53/udp", "TYPE/icmp" or "TYPE:CODE/icmp" (and icmpv6), or
// just "icmp" (echo request, 8:0) or "icmpv6" (echo request, 128:0). The
// port is returned in the datapath's port space.
func ParseService(s string) (ruleset.Protocol, uint16, error) {
	num, proto, found := strings.Cut(strings.ToLower(s), "/")
	if !found {
		num, proto = "", num
	}
	switch proto {
	case "tcp", "udp":
		p := ruleset.ProtocolTCP
		if proto == "udp" {
			p = ruleset.ProtocolUDP
		}
		port, err := strconv.ParseUint(num, 10, 16)
		if err != nil || port == 0 {
			return 0, 0, fmt.Errorf("%q: want PORT/%s with a port from 1 to 65535", s, proto)
		}
		return p, uint16(port), nil
	case "icmp", "icmpv6":
		p, typ, code := ruleset.ProtocolICMP, uint64(8), uint64(0)
		if proto == "icmpv6" {
			p, typ = ruleset.ProtocolICMPv6, 128
		}
		if num != "" {
			t, c, hasCode := strings.Cut(num, ":")
			var err1, err2 error
			typ, err1 = strconv.ParseUint(t, 10, 8)
			code = 0
			if hasCode {
				code, err2 = strconv.ParseUint(c, 10, 8)
			}
			if err1 != nil || err2 != nil {
				return 0, 0, fmt.Errorf("%q: want TYPE/%s or TYPE:CODE/%s with numbers from 0 to 255", s, proto, proto)
			}
		}
		return p, ruleset.ICMPPort(uint8(typ), uint8(code)), nil
	}
	return 0, 0, fmt.Errorf("%q: want PORT/tcp, PORT/udp, [TYPE[:CODE]/]icmp or [TYPE[:CODE]/]icmpv6", s)
}

// Nodes returns the nodes whose rule sets Explain needs for q: those of its
// managed ends (unresolvable ends are left for Explain to report).
func (q Query) Nodes(set *policy.Set) []string {
	var nodes []string
	for _, s := range []string{q.From, q.To} {
		if p, err := resolveParty(set, s); err == nil && p.Workload != nil && !slices.Contains(nodes, p.Workload.Node) {
			nodes = append(nodes, p.Workload.Node)
		}
	}
	return nodes
}
