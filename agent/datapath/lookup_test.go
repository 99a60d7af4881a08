package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
)

var lookupServices = []string{"22/tcp", "23/tcp", "53/udp", "443/tcp", "5432/tcp", "6379/tcp", "6379/udp",
	"8000/tcp", "8050/tcp", "8100/tcp", "8101/tcp", "9000/tcp", "icmp", "0/icmp", "icmpv6", "47/udp"}

var lookupUnmanaged = []string{"192.0.2.10", "192.0.2.200", "198.51.100.5", "2001:db8::5", "10.9.0.1", "10.3.0.50", "fd03::99"}

// TestPrivilegedLookupMatchesModel loads each node's rule set of the
// mixed.yaml fixture into a real datapath and compares Lookup, which reads
// the kernel's maps, with ruleset.Tables.Decide (the model the compiler's
// explain uses) for every endpoint, direction, peer and service: IPv4 and
// IPv6, allowed, denied, monitor, ranges and CIDRs. It also checks that
// lookups leave conntrack and the counters as they were.
func TestPrivilegedLookupMatchesModel(t *testing.T) {
	testutil.RequirePrivileged(t)
	set, diags, err := policy.Load(testutil.PolicyFixture("mixed.yaml"))
	if err != nil || set == nil {
		t.Fatalf("load fixture: %v %v", err, diags.Err())
	}
	res, err := compile.Compile(set, compile.Options{Validate: true})
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	var peers []netip.Addr
	for _, w := range set.Workloads {
		peers = append(peers, w.Addresses...)
	}
	for _, s := range lookupUnmanaged {
		peers = append(peers, netip.MustParseAddr(s))
	}
	seen := map[string]bool{}
	checked := 0
	for _, node := range res.Nodes {
		t.Run(node, func(t *testing.T) {
			rs, tables := res.RuleSets[node], res.Tables[node]
			ifaces := []string{"up0"}
			for _, e := range rs.Endpoints {
				if e.Interface != "" {
					ifaces = append(ifaces, e.Interface)
				}
			}
			h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, ifaces...)
			h.apply(rs)
			before := h.counters()
			for _, ep := range rs.Endpoints {
				for _, dir := range []ruleset.Direction{ruleset.Ingress, ruleset.Egress} {
					for _, peer := range peers {
						for _, svc := range lookupServices {
							proto, port, err := compile.ParseService(svc)
							if err != nil {
								t.Fatal(err)
							}
							if proto == ruleset.ProtocolICMP && !peer.Is4() || proto == ruleset.ProtocolICMPv6 && peer.Is4() {
								continue
							}
							got, err := h.d.Lookup(LookupQuery{Endpoint: ep.ID, Direction: dir, Peer: peer, Protocol: proto, Port: port})
							if err != nil {
								t.Fatalf("Lookup %s %s %s %s: %v", ep.Workload, dir, peer, svc, err)
							}
							pid := rs.Resolve(peer)
							want := tables.Decide(ep, dir, pid, proto, port)
							where := fmt.Sprintf("%s %s peer %s %s", ep.Workload, dir, peer, svc)
							if got.PeerIdentity != pid || got.Verdict != want.Verdict || got.Rule != want.Rule ||
								got.Interfaces < 1 || got.Mode != ep.Mode || got.Identity != ep.Identity {
								t.Errorf("%s: kernel %+v, model identity %d %s rule %d (mode %s)", where, got, pid, want.Verdict, want.Rule, ep.Mode)
							}
							seen[want.Verdict.String()] = true
							name := rs.RuleName(want.Rule)
							seen[name] = true
							if peer.Is6() {
								seen["v6 "+want.Verdict.String()] = true
							}
							checked++
						}
					}
				}
			}
			// The veths are up, so the kernel's own neighbour discovery and
			// MLD reach the programs meanwhile (neighbor, non-IP): every
			// other counter must stay as it was.
			after := h.counters()
			for _, c := range []Counter{CounterNeighbor, CounterNonIP} {
				before[c], after[c] = 0, 0
			}
			if after != before {
				t.Errorf("lookups changed the counters: %v, then %v", before.ByName(), after.ByName())
			}
			for _, m := range []*ebpf.Map{h.d.objs.EgCt4, h.d.objs.EgCt6} {
				var k []byte
				if err := m.NextKey(nil, &k); !errors.Is(err, ebpf.ErrKeyNotExist) {
					t.Errorf("lookups left a conntrack entry in %s (err %v)", m, err)
				}
			}
			// An endpoint no interface carries gets the no-endpoint
			// default: the datapath's default mode, denied.
			got, err := h.d.Lookup(LookupQuery{Endpoint: 999999, Direction: ruleset.Ingress, Peer: peers[0], Protocol: ruleset.ProtocolTCP, Port: 22})
			if err != nil || got.Interfaces != 0 || got.Verdict != ruleset.VerdictDenied || got.Rule != ruleset.RuleDefaultDeny {
				t.Errorf("unknown endpoint: %+v, %v; want no interface, denied by the default", got, err)
			}
		})
	}
	// The comparison covered what it claims to.
	for _, want := range []string{"allowed", "denied", "would-deny", "v6 allowed", "v6 denied",
		"shop/api-range", "shop/egress-web", "security/no-telnet", "dry/no-ssh", ruleset.DefaultDenyName} {
		if !seen[want] {
			t.Errorf("no lookup decided %q; seen %v", want, slices.Sorted(func(yield func(string) bool) {
				for k := range seen {
					if !yield(k) {
						return
					}
				}
			}))
		}
	}
	if checked < 1000 {
		t.Errorf("only %d lookups compared", checked)
	}
}

// TestPrivilegedLookupNoRuleSet: before any Apply there is nothing to look
// up in, and Lookup says so rather than inventing a verdict.
func TestPrivilegedLookupNoRuleSet(t *testing.T) {
	h := newHarness(t, Config{}, "web0")
	_, err := h.d.Lookup(LookupQuery{Endpoint: 1, Peer: netip.MustParseAddr("10.250.0.1"), Protocol: ruleset.ProtocolTCP, Port: 22})
	if !errors.Is(err, ErrNoRuleSet) {
		t.Fatalf("Lookup before Apply: %v, want ErrNoRuleSet", err)
	}
}

// BenchmarkLookup is one live-explain lookup on the agent: eg_state, the
// five inner maps opened, the endpoint table scanned (16,384 slots), the
// ipcache and policy probes.
func BenchmarkLookup(b *testing.B) {
	h := newHarness(b, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0", "stray0")
	h.apply(shopRuleSet())
	q := LookupQuery{Endpoint: 1, Direction: ruleset.Ingress, Peer: netip.MustParseAddr("10.250.9.9"), Protocol: ruleset.ProtocolTCP, Port: 443}
	for b.Loop() {
		if _, err := h.d.Lookup(q); err != nil {
			b.Fatal(err)
		}
	}
}
