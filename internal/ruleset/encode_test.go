package ruleset

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// reference decides a flow by scanning every entry: the strongest verdict
// among the matching entries, the lowest rule id among those with it. It is
// deliberately naive and shares no code with Encode.
func reference(entries []Entry, ep EndpointID, dir Direction, peer Identity, proto Protocol, port uint16) (PolicyValue, bool) {
	var best PolicyValue
	found, allowed := false, false
	rank := func(v PolicyValue) int {
		if v.Rule == RuleFailsafe && v.Verdict == VerdictAllowed {
			return 4 // the agent's failsafe beats every deny
		}
		return map[Verdict]int{VerdictAllowed: 1, VerdictWouldDeny: 2, VerdictDenied: 3}[v.Verdict]
	}
	for _, e := range entries {
		if e.Endpoint != ep || e.Direction != dir {
			continue
		}
		if e.Peer != IdentityAny && e.Peer != peer {
			continue
		}
		if e.Protocol != ProtocolAny {
			if e.Protocol != proto {
				continue
			}
			lo, hi := e.PortRange()
			if port < lo || port > hi {
				continue
			}
		}
		v := PolicyValue{e.Verdict, e.Rule}
		allowed = allowed || e.Verdict == VerdictAllowed
		if !found || rank(v) > rank(best) ||
			(rank(v) == rank(best) && v.Rule < best.Rule) {
			best, found = v, true
		}
	}
	// A monitor deny reports, it never opens: with nothing allowing the
	// flow, the default deny decides.
	if found && best.Verdict == VerdictWouldDeny && !allowed {
		return PolicyValue{VerdictDenied, RuleDefaultDeny}, true
	}
	return best, found
}

func u8(v uint8) *uint8 { return &v }

func TestEncodeCases(t *testing.T) {
	const ep, peerA, peerB = EndpointID(1), Identity(300), Identity(301)
	tcp := func(peer Identity, lo, hi uint16, v Verdict, rule RuleID) Entry {
		return Entry{Endpoint: ep, Direction: Ingress, Peer: peer, Protocol: ProtocolTCP, Port: lo, EndPort: hi, Verdict: v, Rule: rule}
	}
	anyProto := func(peer Identity, v Verdict, rule RuleID) Entry {
		return Entry{Endpoint: ep, Direction: Ingress, Peer: peer, Protocol: ProtocolAny, Verdict: v, Rule: rule}
	}
	type probe struct {
		peer  Identity
		proto Protocol
		port  uint16
		want  PolicyValue
		found bool
	}
	allow := func(r RuleID) PolicyValue { return PolicyValue{VerdictAllowed, r} }
	deny := func(r RuleID) PolicyValue { return PolicyValue{VerdictDenied, r} }
	cases := []struct {
		name    string
		entries []Entry
		probes  []probe
	}{
		{
			name:    "exact allow, nothing else",
			entries: []Entry{tcp(peerA, 5432, 0, VerdictAllowed, 1)},
			probes: []probe{
				{peerA, ProtocolTCP, 5432, allow(1), true},
				{peerA, ProtocolTCP, 5433, PolicyValue{}, false},
				{peerB, ProtocolTCP, 5432, PolicyValue{}, false},
				{peerA, ProtocolUDP, 5432, PolicyValue{}, false},
			},
		},
		{
			name: "any-peer deny beats a peer allow on the same port",
			entries: []Entry{
				tcp(peerA, 22, 0, VerdictAllowed, 1),
				tcp(IdentityAny, 22, 0, VerdictDenied, 2),
			},
			probes: []probe{{peerA, ProtocolTCP, 22, deny(2), true}},
		},
		{
			name: "any-port any-peer deny beats a range allow",
			entries: []Entry{
				tcp(peerA, 1000, 2000, VerdictAllowed, 1),
				tcp(IdentityAny, 0, 0, VerdictDenied, 2),
			},
			probes: []probe{{peerA, ProtocolTCP, 1500, deny(2), true}, {peerB, ProtocolTCP, 80, deny(2), true}},
		},
		{
			name: "a deny hole inside an allowed range",
			entries: []Entry{
				tcp(peerA, 1000, 2000, VerdictAllowed, 1),
				tcp(IdentityAny, 1500, 0, VerdictDenied, 2),
			},
			probes: []probe{
				{peerA, ProtocolTCP, 1000, allow(1), true},
				{peerA, ProtocolTCP, 1499, allow(1), true},
				{peerA, ProtocolTCP, 1500, deny(2), true},
				{peerA, ProtocolTCP, 1501, allow(1), true},
				{peerA, ProtocolTCP, 2001, PolicyValue{}, false},
				{peerB, ProtocolTCP, 1500, deny(2), true},
				{peerB, ProtocolTCP, 1000, PolicyValue{}, false},
			},
		},
		{
			name: "peer any-protocol deny beats an any-peer port allow",
			entries: []Entry{
				tcp(IdentityAny, 80, 0, VerdictAllowed, 1),
				anyProto(peerA, VerdictDenied, 2),
			},
			probes: []probe{
				{peerA, ProtocolTCP, 80, deny(2), true},
				{peerB, ProtocolTCP, 80, allow(1), true},
				{peerA, ProtocolUDP, 53, deny(2), true},
			},
		},
		{
			name: "any-peer any-protocol deny beats everything",
			entries: []Entry{
				tcp(peerA, 80, 0, VerdictAllowed, 1),
				anyProto(peerA, VerdictAllowed, 2),
				anyProto(IdentityAny, VerdictDenied, 3),
			},
			probes: []probe{
				{peerA, ProtocolTCP, 80, deny(3), true},
				{peerA, ProtocolTCP, 81, deny(3), true},
				{peerA, ProtocolUDP, 1, deny(3), true},
			},
		},
		{
			name: "monitor deny beats allow, enforced deny beats monitor deny",
			entries: []Entry{
				tcp(peerA, 22, 0, VerdictAllowed, 1),
				tcp(IdentityAny, 22, 0, VerdictWouldDeny, 2),
				tcp(peerA, 23, 0, VerdictWouldDeny, 3),
				tcp(IdentityAny, 23, 0, VerdictDenied, 4),
			},
			probes: []probe{
				{peerA, ProtocolTCP, 22, PolicyValue{VerdictWouldDeny, 2}, true},
				{peerA, ProtocolTCP, 23, deny(4), true},
			},
		},
		{
			name: "a monitor deny with no allow beneath it never opens: default deny",
			entries: []Entry{
				tcp(peerA, 22, 0, VerdictWouldDeny, 1),
				tcp(IdentityAny, 0, 0, VerdictWouldDeny, 2),
				tcp(peerB, 80, 0, VerdictAllowed, 3),
				anyProto(peerB, VerdictWouldDeny, 4),
			},
			probes: []probe{
				{peerA, ProtocolTCP, 22, deny(0), true},
				{peerA, ProtocolTCP, 23, deny(0), true},
				{peerB, ProtocolTCP, 80, PolicyValue{VerdictWouldDeny, 2}, true},
				{peerB, ProtocolTCP, 81, deny(0), true},
				{peerB, ProtocolUDP, 53, deny(0), true},
			},
		},
		{
			name: "equal verdicts: lowest rule id decides",
			entries: []Entry{
				tcp(peerA, 80, 0, VerdictAllowed, 7),
				tcp(peerA, 0, 0, VerdictAllowed, 3),
			},
			probes: []probe{{peerA, ProtocolTCP, 80, allow(3), true}},
		},
		{
			name: "ICMP type with any code, and one exact code",
			entries: []Entry{
				{Endpoint: ep, Direction: Ingress, Peer: peerA, Protocol: ProtocolICMP, ICMPType: u8(8), Verdict: VerdictAllowed, Rule: 1},
				{Endpoint: ep, Direction: Ingress, Peer: IdentityAny, Protocol: ProtocolICMP, ICMPType: u8(8), ICMPCode: u8(5), Verdict: VerdictDenied, Rule: 2},
			},
			probes: []probe{
				{peerA, ProtocolICMP, ICMPPort(8, 0), allow(1), true},
				{peerA, ProtocolICMP, ICMPPort(8, 5), deny(2), true},
				{peerA, ProtocolICMP, ICMPPort(0, 0), PolicyValue{}, false},
				{peerA, ProtocolICMPv6, ICMPPort(8, 0), PolicyValue{}, false},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := &RuleSet{Entries: tc.entries}
			tab, err := Encode(rs)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			for _, p := range tc.probes {
				got, ok := tab.Lookup(ep, Ingress, p.peer, p.proto, p.port)
				if ok != p.found || got != p.want {
					t.Errorf("Lookup(peer %d, %s, %d) = %+v, %v; want %+v, %v", p.peer, p.proto, p.port, got, ok, p.want, p.found)
				}
				ref, rok := reference(tc.entries, ep, Ingress, p.peer, p.proto, p.port)
				if rok != ok || ref != got {
					t.Errorf("reference(peer %d, %s, %d) = %+v, %v; encoded lookup says %+v, %v", p.peer, p.proto, p.port, ref, rok, got, ok)
				}
			}
		})
	}
}

// TestEncodeMatchesReference checks Encode+Lookup against the naive
// evaluator on random overlapping rule sets, at every interesting port.
func TestEncodeMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	peers := []Identity{IdentityAny, IdentityWorld, 300, 301, 302}
	protos := []Protocol{ProtocolAny, ProtocolTCP, ProtocolUDP, ProtocolICMP}
	verdicts := []Verdict{VerdictAllowed, VerdictAllowed, VerdictDenied, VerdictWouldDeny}
	for iter := range 400 {
		var entries []Entry
		for i := range 1 + rng.IntN(14) {
			e := Entry{
				Endpoint:  EndpointID(1 + rng.IntN(2)),
				Direction: Direction(rng.IntN(2)),
				Peer:      peers[rng.IntN(len(peers))],
				Protocol:  protos[rng.IntN(len(protos))],
				Verdict:   verdicts[rng.IntN(len(verdicts))],
				Rule:      RuleID(1 + i),
			}
			if rng.IntN(8) == 0 {
				e.Verdict, e.Rule = VerdictAllowed, RuleFailsafe
			}
			switch {
			case e.Protocol.HasPorts():
				switch rng.IntN(3) {
				case 0: // every port
				case 1:
					e.Port = uint16(20 + rng.IntN(20))
				case 2:
					e.Port = uint16(20 + rng.IntN(20))
					e.EndPort = e.Port + uint16(rng.IntN(15))
				}
			case e.Protocol.IsICMP():
				if rng.IntN(3) > 0 {
					e.ICMPType = u8(uint8(rng.IntN(3)))
					if rng.IntN(2) == 0 {
						e.ICMPCode = u8(uint8(rng.IntN(3)))
					}
				}
			}
			entries = append(entries, e)
		}
		tab, err := Encode(&RuleSet{Entries: entries})
		if err != nil {
			t.Fatalf("iteration %d: Encode: %v", iter, err)
		}
		for ep := EndpointID(1); ep <= 2; ep++ {
			for dir := Ingress; dir <= Egress; dir++ {
				for _, peer := range peers[1:] {
					for _, proto := range []Protocol{ProtocolTCP, ProtocolUDP, ProtocolICMP, 47} {
						ports := []uint16{0, 1, 65535}
						for p := uint16(15); p < 60; p++ {
							ports = append(ports, p)
						}
						if proto == ProtocolICMP {
							ports = nil
							for ty := range uint8(4) {
								for code := range uint8(4) {
									ports = append(ports, ICMPPort(ty, code))
								}
							}
						}
						if proto == 47 {
							ports = []uint16{0}
						}
						for _, port := range ports {
							got, ok := tab.Lookup(ep, dir, peer, proto, port)
							want, wok := reference(entries, ep, dir, peer, proto, port)
							if ok != wok || got != want {
								t.Fatalf("iteration %d: ep %d %s peer %d %s port %d: encoded %+v %v, reference %+v %v\nentries: %+v",
									iter, ep, dir, peer, proto, port, got, ok, want, wok, entries)
							}
						}
					}
				}
			}
		}
	}
}

func TestEncodeTooManyRanges(t *testing.T) {
	var entries []Entry
	for i := range MaxIntervals + 1 {
		entries = append(entries, Entry{Endpoint: 1, Peer: 300, Protocol: ProtocolTCP,
			Port: uint16(1000 + 10*i), EndPort: uint16(1002 + 10*i), Verdict: VerdictAllowed, Rule: 1})
	}
	_, err := Encode(&RuleSet{Entries: entries})
	if err == nil {
		t.Fatal("Encode accepted 33 disjoint ranges for one peer")
	}
	want := "endpoint 1 ingress TCP from identity 300: 33 disjoint port ranges, the datapath holds at most 32 per peer and protocol"
	if err.Error() != want {
		t.Errorf("error = %q\nwant    %q", err, want)
	}
}

func TestEncodeOnlyExactShape(t *testing.T) {
	// The common case must cost one probe: only the exact-peer shape bit.
	tab, err := Encode(&RuleSet{Entries: []Entry{
		{Endpoint: 1, Direction: Ingress, Peer: 300, Protocol: ProtocolTCP, Port: 5432, Verdict: VerdictAllowed, Rule: 1},
		{Endpoint: 1, Direction: Ingress, Peer: 301, Protocol: ProtocolTCP, Port: 443, Verdict: VerdictAllowed, Rule: 2},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got := tab.Shapes[ShapeKey{1, Ingress}]; got != ShapeExactPeer {
		t.Errorf("shape = %06b, want only ShapeExactPeer", got)
	}
	if len(tab.Exact) != 2 || len(tab.Ranges) != 0 {
		t.Errorf("tables: %d exact, %d ranges; want 2, 0", len(tab.Exact), len(tab.Ranges))
	}
}

func TestSizeCheck(t *testing.T) {
	err := Size{Policy: 11}.Check(Limits{Endpoints: 1, IPCache: 1, Policy: 10, PolicyRanges: 1})
	var full *MapFullError
	if !errors.As(err, &full) || !errors.Is(err, ErrMapFull) {
		t.Fatalf("Check = %v, want a MapFullError", err)
	}
	if want := "map eg_policy is full: the rule set needs 11 entries, the limit is 10"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if err := (Size{Policy: 10}).Check(Limits{Policy: 10}); err != nil {
		t.Errorf("Check at the limit = %v, want nil", err)
	}
}

func validRuleSet() *RuleSet {
	return &RuleSet{
		Node: "node-a",
		Endpoints: []Endpoint{
			{ID: 1, Workload: "web-1", Interface: "veth-web1", Identity: 300},
			{ID: 2, Workload: "node-a", Identity: 301},
		},
		IPCache: []IPCacheEntry{
			{Prefix: netip.MustParsePrefix("10.250.1.2/32"), Identity: 300},
			{Prefix: netip.MustParsePrefix("10.250.0.1/32"), Identity: 301},
			{Prefix: netip.MustParsePrefix("fd0e::/16"), Identity: 400},
		},
		Entries: []Entry{{Endpoint: 1, Direction: Ingress, Peer: 400, Protocol: ProtocolTCP, Port: 80, Verdict: VerdictAllowed, Rule: 1}},
		Rules:   []RuleName{{ID: 1, Name: "shop/web"}},
	}
}

func TestValidate(t *testing.T) {
	if err := validRuleSet().Validate(); err != nil {
		t.Fatalf("valid rule set: %v", err)
	}
	cases := []struct {
		name   string
		mutate func(*RuleSet)
		want   string
	}{
		{"no node", func(rs *RuleSet) { rs.Node = "" }, "node: empty node name"},
		{"two host endpoints", func(rs *RuleSet) { rs.Endpoints[0].Interface = "" }, "both in host mode"},
		{"endpoint without address", func(rs *RuleSet) { rs.Endpoints[1].Identity = 999 }, "no ipcache prefix has its identity 999"},
		{"host bits", func(rs *RuleSet) { rs.IPCache[2].Prefix = netip.MustParsePrefix("fd0e::1/16") }, "has host bits set (want fd0e::/16)"},
		{"mapped v4", func(rs *RuleSet) { rs.IPCache[2].Prefix = netip.MustParsePrefix("::ffff:10.0.0.0/104") }, "IPv4-mapped"},
		{"unknown endpoint", func(rs *RuleSet) { rs.Entries[0].Endpoint = 9 }, "entries[0]: unknown endpoint 9"},
		{"unknown rule", func(rs *RuleSet) { rs.Entries[0].Rule = 5 }, "rule id 5 is not in the rule table"},
		{"default deny rule", func(rs *RuleSet) { rs.Entries[0].Rule = 0 }, "rule id 0 is the default deny"},
		{"bad range", func(rs *RuleSet) { rs.Entries[0].EndPort = 79 }, "endPort 79 needs a port <= it"},
		{"ports on ICMP", func(rs *RuleSet) { rs.Entries[0].Protocol = ProtocolICMP }, "ports are only valid with TCP or UDP"},
		{"ICMP type on TCP", func(rs *RuleSet) { rs.Entries[0].ICMPType = u8(3) }, "ICMP type and code are only valid with ICMP"},
		{"duplicate prefix", func(rs *RuleSet) { rs.IPCache = append(rs.IPCache, rs.IPCache[0]) }, "duplicate prefix 10.250.1.2/32"},
		{"duplicate prefix in a sorted ipcache", func(rs *RuleSet) {
			rs.Canonicalize()
			rs.IPCache = slices.Insert(rs.IPCache, 1, rs.IPCache[0])
		}, "ipcache[1]: duplicate prefix"},
		{"reserved identity", func(rs *RuleSet) { rs.Endpoints[0].Identity = IdentityWorld }, "identity 1 is reserved"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := validRuleSet()
			tc.mutate(rs)
			err := rs.Validate()
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestHashIgnoresOrderAndVersion(t *testing.T) {
	a := validRuleSet()
	b := validRuleSet()
	b.Version = 42
	b.IPCache[0], b.IPCache[2] = b.IPCache[2], b.IPCache[0]
	if a.Hash() != b.Hash() {
		t.Error("hash depends on slice order or version")
	}
	b.Entries[0].Port = 81
	if a.Hash() == b.Hash() {
		t.Error("hash did not change with an entry")
	}
}
