package ruleset

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

// failsafeBase: node-a with a host-mode endpoint (identity host) whose
// policy allows nothing but SSH in and denies every TCP egress, and a
// container "web" (identity 300) that may reach the world on 7443 and a
// remote workload "peer" (identity 400, 10.9.0.7) on 8080. 10.0.0.0/8 is
// a CIDR identity the container may reach on 9000.
func failsafeBase() *RuleSet {
	const host, web = EndpointID(1), EndpointID(2)
	return &RuleSet{
		Node: "node-a",
		Endpoints: []Endpoint{
			{ID: host, Workload: "node-a", Identity: IdentityHost},
			{ID: web, Workload: "web", Interface: "eg-web", Identity: 300},
		},
		IPCache: []IPCacheEntry{
			{Prefix: netip.MustParsePrefix("192.168.1.10/32"), Identity: IdentityHost},
			{Prefix: netip.MustParsePrefix("10.250.1.2/32"), Identity: 300},
			{Prefix: netip.MustParsePrefix("10.9.0.7/32"), Identity: 400},
			{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Identity: 1 << 31},
		},
		Entries: []Entry{
			{Endpoint: host, Direction: Ingress, Peer: IdentityAny, Protocol: ProtocolTCP, Port: 22, Verdict: VerdictAllowed, Rule: 10},
			{Endpoint: host, Direction: Egress, Peer: IdentityAny, Protocol: ProtocolTCP, Verdict: VerdictDenied, Rule: 11},
			{Endpoint: host, Direction: Egress, Peer: IdentityAny, Protocol: ProtocolAny, Verdict: VerdictDenied, Rule: 12},
			{Endpoint: web, Direction: Egress, Peer: IdentityWorld, Protocol: ProtocolTCP, Port: 7443, Verdict: VerdictAllowed, Rule: 20},
			{Endpoint: web, Direction: Egress, Peer: 400, Protocol: ProtocolTCP, Port: 8080, Verdict: VerdictAllowed, Rule: 21},
			{Endpoint: web, Direction: Egress, Peer: 1 << 31, Protocol: ProtocolTCP, Port: 9000, Verdict: VerdictAllowed, Rule: 22},
		},
		Rules: []RuleName{{ID: 10, Name: "p/ssh"}, {ID: 11, Name: "p/no-tcp-out"}, {ID: 12, Name: "p/nothing-out"},
			{ID: 20, Name: "p/web-out"}, {ID: 21, Name: "p/web-peer"}, {ID: 22, Name: "p/web-ten"}},
	}
}

func TestWithFailsafe(t *testing.T) {
	base := failsafeBase()
	baseHash := base.Hash()
	ctl, ctl6 := netip.MustParseAddr("203.0.113.5"), netip.MustParseAddr("2001:db8::5")
	peer := netip.MustParseAddr("10.9.0.7")  // a remote workload's address, also a resolver
	inTen := netip.MustParseAddr("10.1.2.3") // inside the CIDR identity
	resolver := netip.MustParseAddr("198.51.100.53")
	cp := ControlPlane{
		Controller: []netip.Addr{ctl, ctl6, inTen,
			netip.MustParseAddr("192.168.1.10"), // the node's own: left alone
			netip.MustParseAddr("10.250.1.2"),   // a container's: left alone
			netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::ffff:203.0.113.5")},
		Port:      7443,
		Resolvers: []netip.Addr{resolver, peer, netip.MustParseAddr("fe80::1%eth0"), netip.MustParseAddr("127.0.0.53")},
	}
	fs, err := WithFailsafe(base, cp)
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Validate(); err != nil {
		t.Fatalf("completed rule set invalid: %v", err)
	}
	if base.Hash() != baseHash || len(base.Entries) != 6 || len(base.IPCache) != 4 || len(base.Rules) != 6 {
		t.Fatalf("WithFailsafe modified its input")
	}
	if fs.RuleName(RuleFailsafe) != FailsafeName || base.RuleName(RuleFailsafe) != FailsafeName {
		t.Errorf("failsafe rule named %q / %q", fs.RuleName(RuleFailsafe), base.RuleName(RuleFailsafe))
	}
	before, err := Encode(base)
	if err != nil {
		t.Fatal(err)
	}
	after, err := Encode(fs)
	if err != nil {
		t.Fatal(err)
	}
	host, web := fs.Endpoints[0], fs.Endpoints[1]
	failsafe := PolicyValue{VerdictAllowed, RuleFailsafe}

	type flow struct {
		ep    Endpoint
		dir   Direction
		addr  netip.Addr
		proto Protocol
		port  uint16
	}
	decide := func(rs *RuleSet, tab *Tables, f flow) PolicyValue {
		return tab.Decide(f.ep, f.dir, rs.Resolve(f.addr), f.proto, f.port)
	}
	// The host endpoint reaches the control plane, on its ports only,
	// past the policy's denies.
	for _, f := range []flow{
		{host, Egress, ctl, ProtocolTCP, 7443},
		{host, Egress, ctl6, ProtocolTCP, 7443},
		{host, Ingress, ctl, ProtocolTCP, 7443},
		{host, Egress, inTen, ProtocolTCP, 7443},
		{host, Egress, resolver, ProtocolUDP, 53},
		{host, Egress, resolver, ProtocolTCP, 53},
		{host, Egress, peer, ProtocolUDP, 53},
		{host, Egress, netip.MustParseAddr("fe80::1"), ProtocolUDP, 53},
	} {
		if got := decide(fs, after, f); got != failsafe {
			t.Errorf("%s %s %s %d: %+v, want the failsafe", f.dir, f.addr, f.proto, f.port, got)
		}
		if got := decide(base, before, f); got.Verdict != VerdictDenied {
			t.Errorf("without the failsafe: %s %s %s %d: %+v, want denied", f.dir, f.addr, f.proto, f.port, got)
		}
	}
	// Nothing else changes, for any endpoint and any address the
	// failsafe touched or not.
	addrs := append(slices.Clone(cp.Controller), cp.Resolvers...)
	addrs = append(addrs, netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("10.200.0.1"))
	for _, ep := range []Endpoint{host, web} {
		for _, a := range addrs {
			for dir := Ingress; dir <= Egress; dir++ {
				for _, proto := range []Protocol{ProtocolTCP, ProtocolUDP, ProtocolICMP} {
					for _, port := range []uint16{22, 53, 7443, 8080, 9000, 9999} {
						f := flow{ep, dir, a, proto, port}
						got, want := decide(fs, after, f), decide(base, before, f)
						if got == failsafe && ep.ID == host.ID {
							continue // checked above
						}
						if got != want {
							t.Errorf("%s %s %s %s %d: %+v with the failsafe, %+v without", ep.Workload, dir, a, proto, port, got, want)
						}
					}
				}
			}
		}
	}
	// Only the ports above are opened.
	for _, f := range []flow{
		{host, Egress, ctl, ProtocolTCP, 22},
		{host, Egress, ctl, ProtocolUDP, 53},
		{host, Ingress, resolver, ProtocolUDP, 53},
		{host, Egress, resolver, ProtocolTCP, 7443},
		{host, Egress, netip.MustParseAddr("192.0.2.1"), ProtocolTCP, 7443},
	} {
		if got := decide(fs, after, f); got == failsafe {
			t.Errorf("%s %s %s %d: opened by the failsafe", f.dir, f.addr, f.proto, f.port)
		}
	}
	// The node's and the container's addresses keep their identities.
	for a, want := range map[string]Identity{"192.168.1.10": IdentityHost, "10.250.1.2": 300} {
		if got := fs.Resolve(netip.MustParseAddr(a)); got != want {
			t.Errorf("%s resolves to %d, want %d", a, got, want)
		}
	}
	// Same input, same output.
	again, err := WithFailsafe(base, cp)
	if err != nil || again.Hash() != fs.Hash() {
		t.Errorf("WithFailsafe is not deterministic: %v", err)
	}
}

func TestWithFailsafeNothingToDo(t *testing.T) {
	cp := ControlPlane{Controller: []netip.Addr{netip.MustParseAddr("203.0.113.5")}, Port: 7443}
	noHost := failsafeBase()
	noHost.Endpoints = noHost.Endpoints[1:]
	noHost.Entries = noHost.Entries[3:]
	for name, tc := range map[string]struct {
		rs *RuleSet
		cp ControlPlane
	}{
		"no host-mode endpoint": {noHost, cp},
		"no port":               {failsafeBase(), ControlPlane{Controller: cp.Controller}},
		"empty":                 {failsafeBase(), ControlPlane{}},
		"only node addresses":   {failsafeBase(), ControlPlane{Controller: []netip.Addr{netip.MustParseAddr("192.168.1.10")}, Port: 7443}},
	} {
		got, err := WithFailsafe(tc.rs, tc.cp)
		if err != nil || got != tc.rs {
			t.Errorf("%s: got a new rule set (%v), want the input itself", name, err)
		}
	}
}

func TestWithFailsafeRefusesReservedIDs(t *testing.T) {
	cp := ControlPlane{Controller: []netip.Addr{netip.MustParseAddr("203.0.113.5")}, Port: 7443}
	for name, mutate := range map[string]func(*RuleSet){
		"ipcache identity": func(rs *RuleSet) { rs.IPCache[3].Identity = IdentityFailsafeFirst },
		"peer":             func(rs *RuleSet) { rs.Entries[4].Peer = IdentityFailsafeLast },
		"rule": func(rs *RuleSet) {
			rs.Rules[0].ID = RuleFailsafe
			rs.Entries[0].Rule = RuleFailsafe
		},
		"endpoint identity": func(rs *RuleSet) { rs.Endpoints[1].Identity = 200 },
	} {
		rs := failsafeBase()
		mutate(rs)
		if _, err := WithFailsafe(rs, cp); !errors.Is(err, ErrReserved) {
			t.Errorf("%s: %v, want ErrReserved", name, err)
		}
	}
}

// BenchmarkWithFailsafe: the cost the failsafe adds to every apply of a
// large rule set (100,000 ipcache entries, 500,000 entries, 5 addresses).
func BenchmarkWithFailsafe(b *testing.B) {
	rs := &RuleSet{Node: "n", Endpoints: []Endpoint{{ID: 1, Workload: "host", Identity: IdentityHost}}}
	for i := range 100000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		rs.IPCache = append(rs.IPCache, IPCacheEntry{Prefix: netip.PrefixFrom(a, 32), Identity: Identity(256 + i%1000)})
	}
	rs.IPCache = append(rs.IPCache, IPCacheEntry{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Identity: 1 << 31})
	for i := range 500000 {
		rs.Entries = append(rs.Entries, Entry{Endpoint: 1, Direction: Direction(i % 2), Peer: Identity(256 + i%1001),
			Protocol: ProtocolTCP, Port: uint16(1 + i%5000), Verdict: VerdictAllowed, Rule: 1})
	}
	rs.Rules = []RuleName{{ID: 1, Name: "p/r"}}
	cp := ControlPlane{Port: 7443, Controller: []netip.Addr{netip.MustParseAddr("192.0.2.5"), netip.MustParseAddr("10.0.1.7")},
		Resolvers: []netip.Addr{netip.MustParseAddr("198.51.100.53"), netip.MustParseAddr("2001:db8::53"), netip.MustParseAddr("10.0.2.9")}}
	for b.Loop() {
		if _, err := WithFailsafe(rs, cp); err != nil {
			b.Fatal(err)
		}
	}
}
