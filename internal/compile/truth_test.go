package compile

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// truthInput: three nodes, host-mode and container workloads, a monitor
// workload, dual-stack and v4-only workloads, and policies using every peer
// kind. The CIDR peers cover managed label sets either completely or not at
// all, so that address-level and identity-level semantics agree (partial
// overlaps are conservative by design and tested on their own).
const truthInput = `
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: h1, labels: {role: node}}
spec: {node: n1, addresses: [10.1.0.1, "fd01::1"]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: web-1, labels: {app: shop, role: web}}
spec: {node: n1, interface: veth-web1, addresses: [10.1.0.10, "fd01::10"]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: db-1, labels: {app: shop, role: db}}
spec: {node: n1, interface: veth-db1, addresses: [10.1.0.20]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: h2, labels: {role: node}}
spec: {node: n2, addresses: [10.2.0.1]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: web-2, labels: {app: shop, role: web}}
spec: {node: n2, interface: veth-web2, addresses: [10.2.0.10, "fd02::10"]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: cache-1, labels: {app: shop, role: cache}}
spec: {node: n2, interface: veth-cache1, addresses: [10.2.0.30], mode: monitor}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: api-1, labels: {app: api, role: api}}
spec: {node: n3, interface: veth-api1, addresses: [10.3.0.10, "fd03::10"]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: gw-1, labels: {role: gw, zone: dmz}}
spec: {node: n3, interface: veth-gw1, addresses: [10.3.0.40]}
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  rules:
    - {name: lb, from: [{world: true}], to: [{selector: {role: web}}], ports: [{port: 443}]}
    - {name: web-db, from: [{selector: {role: web}}], to: [{selector: {role: db}}], ports: [{port: 5432}]}
    - {name: web-cache, from: [{selector: {role: web}}], to: [{selector: {role: cache}}], ports: [{protocol: ANY, port: 6379}]}
    - name: admins
      from: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
      to: [{selector: {role: web}}, {selector: {role: db}}]
      ports: [{port: 22}]
    - name: api-range
      from: [{cidr: 10.3.0.0/16, except: [10.3.0.32/27]}, {cidr: "fd03::/16"}]
      to: [{selector: {app: shop}}]
      ports: [{port: 8000, endPort: 8100}]
    - {name: health, from: [{host: true}], to: [{selector: {app: shop}}], ports: [{port: 8080}]}
    - {name: node-dns, from: [{selector: {app: shop}}], to: [{host: true}], ports: [{protocol: UDP, port: 53}]}
    - {name: ping, from: [{selector: {}}], to: [{selector: {}}], ports: [{protocol: ICMP, type: 8}]}
    - {name: egress-web, from: [{selector: {role: web}}], to: [{world: true}], ports: [{port: 443}]}
    - {name: gw-out, from: [{selector: {role: gw}}], to: [{world: true}]}
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: security}
spec:
  rules:
    - {name: no-telnet, action: deny, from: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}], to: [{selector: {}}], ports: [{port: 23}]}
    - {name: no-db-from-api, action: deny, from: [{selector: {app: api}}], to: [{selector: {role: db}}]}
    - {name: telnet-ok, from: [{selector: {role: web}}], to: [{selector: {}}], ports: [{port: 23}]}
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: dry}
spec:
  mode: monitor
  rules:
    - {name: no-ssh, action: deny, from: [{world: true}, {selector: {}}], to: [{selector: {}}], ports: [{port: 22}]}
    - {name: no-cache-udp, action: deny, from: [{selector: {role: web}}], to: [{selector: {role: cache}}], ports: [{protocol: UDP}]}
    - {name: api-web, from: [{selector: {role: api}}], to: [{selector: {role: web}}], ports: [{port: 9000}]}
    - {name: api-db, from: [{selector: {role: api}}], to: [{selector: {role: db}}], ports: [{port: 5432}]}
`

var truthServices = []string{"22/tcp", "23/tcp", "53/udp", "443/tcp", "5432/tcp", "6379/tcp", "6379/udp", "8000/tcp",
	"8050/tcp", "8080/tcp", "8101/tcp", "9000/tcp", "icmp", "0/icmp", "icmpv6", "47/udp"}

var truthUnmanaged = []string{"192.0.2.10", "192.0.2.200", "198.51.100.5", "2001:db8::5", "10.9.0.1", "10.3.0.50"}

// TestTruthTable compares explain on the compiled rule sets with a naive
// evaluator of the policy text for every (source, destination, service).
func TestTruthTable(t *testing.T) {
	set, res := mustCompile(t, truthInput)
	var warnings []string
	for _, w := range res.Warnings {
		warnings = append(warnings, w.String())
	}
	if want := []string{"test.yaml:71:7: rules[2]: warning: rule is fully shadowed by deny rule security/no-telnet: nothing it allows is ever allowed",
		"test.yaml:82:7: rules[3]: warning: rule is fully shadowed by deny rule security/no-db-from-api: nothing it allows is ever allowed"}; !slices.Equal(warnings, want) {
		t.Fatalf("warnings = %q, want only %q (in particular no partial CIDR overlap)", warnings, want)
	}
	var parties []string
	for _, w := range set.Workloads {
		parties = append(parties, w.Name)
	}
	parties = append(parties, truthUnmanaged...)
	checked := 0
	for _, from := range parties {
		for _, to := range parties {
			if from == to {
				continue
			}
			for _, svc := range truthServices {
				proto, port, err := ParseService(svc)
				if err != nil {
					t.Fatal(err)
				}
				x, err := Explain(set, res, Query{From: from, To: to, Protocol: proto, Port: port})
				if errors.Is(err, ErrNoManagedEnd) || errors.Is(err, ErrNoCommonFamily) {
					continue
				}
				if err != nil {
					t.Fatalf("%s -> %s %s: %v", from, to, svc, err)
				}
				want := referenceFlow(set, x.From, x.To, proto, port)
				where := fmt.Sprintf("%s -> %s %s", x.From, x.To, svc)
				if x.Verdict != want.verdict || !slices.Contains(want.rules, x.Rule) {
					t.Errorf("%s: explain %s %s, reference %s %v%s", where, x.Verdict, x.Rule, want.verdict, want.rules, ends(x))
				}
				// Per end, except the documented over-approximation of a
				// host-mode workload's end through a `host` peer.
				if hostMode(x.From) || hostMode(x.To) {
					continue
				}
				for _, c := range []struct {
					got  *EndDecision
					want *refEnd
				}{{x.Source, want.src}, {x.Destination, want.dst}} {
					if (c.got == nil) != (c.want == nil) {
						t.Errorf("%s: end presence differs", where)
						continue
					}
					if c.got != nil && (c.got.Verdict != c.want.verdict || !slices.Contains(c.want.rules, c.got.RuleName)) {
						t.Errorf("%s: %s end %s %s, reference %s %v", where, c.got.Direction, c.got.Verdict, c.got.RuleName, c.want.verdict, c.want.rules)
					}
				}
				checked++
			}
		}
	}
	if checked < 1000 {
		t.Errorf("only %d flows checked", checked)
	}
}

func hostMode(p Party) bool { return p.Workload != nil && p.Workload.HostMode() }

type refEnd struct {
	verdict ruleset.Verdict
	rules   []string // acceptable deciding rules
}

type refFlow struct {
	verdict  ruleset.Verdict
	rules    []string
	src, dst *refEnd
}

// referenceFlow evaluates the policy text directly: which rules apply to
// this pair and service, and what each managed end makes of them. It shares
// no code with the compiler.
func referenceFlow(set *policy.Set, from, to Party, proto ruleset.Protocol, port uint16) refFlow {
	type applied struct {
		name    string
		verdict ruleset.Verdict
	}
	var rules []applied
	for _, p := range set.Policies {
		for _, r := range p.Rules {
			if !refIn(set, r.From, from, to) || !refIn(set, r.To, to, from) || !refPorts(r.Ports, proto, port) {
				continue
			}
			v := ruleset.VerdictAllowed
			if r.Action == policy.ActionDeny {
				v = ruleset.VerdictDenied
				if p.Mode == policy.ModeMonitor {
					v = ruleset.VerdictWouldDeny
				}
			}
			rules = append(rules, applied{p.Name + "/" + r.Name, v})
		}
	}
	end := func(p Party) *refEnd {
		if p.Workload == nil {
			return nil
		}
		monitor := p.Workload.Mode == policy.ModeMonitor
		names := func(v ruleset.Verdict) []string {
			var out []string
			for _, r := range rules {
				if r.verdict == v {
					out = append(out, r.name)
				}
			}
			return out
		}
		e := &refEnd{verdict: ruleset.VerdictDenied, rules: []string{ruleset.DefaultDenyName}}
		switch allows := names(ruleset.VerdictAllowed); {
		case len(names(ruleset.VerdictDenied)) > 0:
			e.rules = names(ruleset.VerdictDenied)
		case len(names(ruleset.VerdictWouldDeny)) > 0 && (len(allows) > 0 || monitor):
			// A monitor policy's deny reports over an allow; it never opens
			// what the default deny drops.
			e.verdict, e.rules = ruleset.VerdictWouldDeny, names(ruleset.VerdictWouldDeny)
		case len(allows) > 0:
			e.verdict, e.rules = ruleset.VerdictAllowed, allows
		}
		if monitor && e.verdict == ruleset.VerdictDenied {
			e.verdict = ruleset.VerdictWouldDeny
		}
		return e
	}
	f := refFlow{src: end(from), dst: end(to), verdict: ruleset.VerdictAllowed}
	for _, e := range []*refEnd{f.src, f.dst} {
		if e != nil && rank(e.verdict) > rank(f.verdict) {
			f.verdict = e.verdict
		}
	}
	for _, e := range []*refEnd{f.src, f.dst} {
		if e == nil || e.verdict != f.verdict {
			continue
		}
		if f.rules == nil || (slices.Equal(f.rules, []string{ruleset.DefaultDenyName}) && e.rules[0] != ruleset.DefaultDenyName) {
			f.rules = e.rules
		}
	}
	return f
}

// refIn reports whether party x is one of peers, with other the party at
// the rule's other end (host is relative to it).
func refIn(set *policy.Set, peers []policy.Peer, x, other Party) bool {
	for _, p := range peers {
		switch {
		case p.Selector != nil:
			if x.Workload != nil && p.Selector.Matches(x.Workload.Labels) {
				return true
			}
		case p.World:
			if x.Workload == nil {
				return true
			}
		case p.Host:
			if x.Workload != nil && other.Workload != nil && x.Workload.HostMode() && x.Workload.Node == other.Workload.Node {
				return true
			}
		case p.CIDR.IsValid():
			if refInCIDR(p, x.Addr) {
				return true
			}
		}
	}
	return false
}

func refInCIDR(p policy.Peer, a netip.Addr) bool {
	if !p.CIDR.Contains(a) {
		return false
	}
	for _, e := range p.Except {
		if e.Contains(a) {
			return false
		}
	}
	return true
}

func refPorts(ports []policy.PortRule, proto ruleset.Protocol, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		switch {
		case p.Protocol == ruleset.ProtocolAny && p.Port == 0:
			return true
		case p.Protocol == ruleset.ProtocolAny && (proto == ruleset.ProtocolTCP || proto == ruleset.ProtocolUDP):
			if port >= p.Port && port <= max(p.Port, p.EndPort) {
				return true
			}
		case p.Protocol != proto:
		case proto.IsICMP():
			typ, code := uint8(port>>8), uint8(port)
			if (p.ICMPType == nil || *p.ICMPType == typ) && (p.ICMPCode == nil || *p.ICMPCode == code) {
				return true
			}
		case p.Port == 0 || (port >= p.Port && port <= max(p.Port, p.EndPort)):
			return true
		}
	}
	return false
}

func TestParseService(t *testing.T) {
	for in, want := range map[string]string{
		"22/tcp": "TCP 22", "53/UDP": "UDP 53", "icmp": "ICMP 2048", "3:4/icmp": "ICMP 772", "icmpv6": "ICMPv6 32768", "1/icmpv6": "ICMPv6 256",
	} {
		p, port, err := ParseService(in)
		if got := fmt.Sprintf("%s %d", p, port); err != nil || got != want {
			t.Errorf("ParseService(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"tcp", "0/tcp", "70000/tcp", "22", "22/sctp", "300/icmp", "x:1/icmp", ""} {
		if _, _, err := ParseService(bad); err == nil || !strings.Contains(err.Error(), "want") {
			t.Errorf("ParseService(%q) = %v, want an error", bad, err)
		}
	}
}
