package compile

import (
	"slices"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/ruleset"
)

const (
	denied  = "denied"
	allowed = "allowed"
	would   = "would-deny"
	dd      = "default-deny"
)

// TestSemantics has one case per numbered semantic rule of docs/POLICY.md, and
// the cases that are easy to get wrong besides (mixed v4/v6, CIDR except, port ranges,
// monitor policies, the empty selector, world and host peers).
func TestSemantics(t *testing.T) {
	webToDB := "    - name: web-to-db\n      from: [{selector: {role: web}}]\n      to: [{selector: {role: db}}]\n      ports: [{protocol: TCP, port: 5432}]\n"
	cases := []struct {
		name   string
		policy string
		flows  []flow
	}{
		{
			name:   "1 default deny: no rule, every new connection is dropped both ways",
			policy: "",
			flows: []flow{
				{from: "web-1", to: "db-1", service: "5432/tcp", verdict: denied, rule: dd, src: "denied default-deny", dst: "denied default-deny"},
				{from: "db-1", to: "203.0.113.9", service: "443/tcp", verdict: denied, rule: dd, dst: "-"},
				{from: "203.0.113.9", to: "db-1", service: "22/tcp", verdict: denied, rule: dd, src: "-"},
			},
		},
		{
			name: "2 deny beats allow, whatever policy it is in",
			policy: policyDoc("a-allow", "", webToDB) +
				policyDoc("z-deny", "", "    - name: no-db\n      action: deny\n      from: [{selector: {app: shop}}]\n      to: [{selector: {role: db}}]\n"),
			flows: []flow{
				{from: "web-1", to: "db-1", service: "5432/tcp", verdict: denied, rule: "z-deny/no-db", src: "denied z-deny/no-db", dst: "denied z-deny/no-db"},
			},
		},
		{
			name:   "3 one rule gives both ends; a rule for one end only is not enough",
			policy: policyDoc("p", "", webToDB+"    - name: world-to-db\n      from: [{world: true}]\n      to: [{selector: {role: db}}]\n      ports: [{port: 6432}]\n"),
			flows: []flow{
				{from: "web-1", to: "db-1", service: "5432/tcp", verdict: allowed, rule: "p/web-to-db", src: "allowed p/web-to-db", dst: "allowed p/web-to-db"},
				{from: "web-2", to: "db-1", service: "5432/tcp", verdict: allowed, rule: "p/web-to-db", src: "allowed p/web-to-db", dst: "allowed p/web-to-db"},
				{from: "web-1", to: "db-1", service: "5433/tcp", verdict: denied, rule: dd},
				// world is unmanaged addresses only: web-1 has no egress and db-1's ingress does not take it.
				{from: "web-1", to: "db-1", service: "6432/tcp", verdict: denied, rule: dd, src: "denied default-deny", dst: "denied default-deny"},
				{from: "198.51.100.7", to: "db-1", service: "6432/tcp", verdict: allowed, rule: "p/world-to-db", src: "-"},
			},
		},
		{
			name:   "4 replies are conntrack's: the compiler adds no reverse entries",
			policy: policyDoc("p", "", webToDB),
			flows: []flow{
				{from: "db-1", to: "web-1", service: "40000/tcp", verdict: denied, rule: dd},
			},
		},
		{
			name:   "5 the node's own address is only allowed when a rule says so, and only its own node",
			policy: policyDoc("p", "", "    - name: health\n      from: [{host: true}]\n      to: [{selector: {role: web}}]\n      ports: [{port: 8080}]\n"),
			flows: []flow{
				{from: "h1", to: "web-1", service: "8080/tcp", verdict: allowed, rule: "p/health", src: "allowed p/health", dst: "allowed p/health"},
				{from: "h2", to: "web-2", service: "8080/tcp", verdict: allowed, rule: "p/health"},
				{from: "h2", to: "web-1", service: "8080/tcp", verdict: denied, rule: dd},
				{from: "h1", to: "web-1", service: "8081/tcp", verdict: denied, rule: dd},
				{from: "h1", to: "db-1", service: "8080/tcp", verdict: denied, rule: dd},
			},
		},
		{
			name: "6 monitor never drops: a monitor workload reports would-deny, a monitor policy's deny turns allows into would-deny",
			policy: policyDoc("p", "", webToDB+"    - name: web-to-bastion\n      from: [{selector: {role: web}}]\n      to: [{selector: {role: bastion}}]\n      ports: [{port: 22}]\n") +
				policyDoc("dry", "monitor", "    - name: no-db\n      action: deny\n      from: [{selector: {role: web}}]\n      to: [{selector: {role: db}}]\n"),
			flows: []flow{
				{from: "web-1", to: "db-1", service: "5432/tcp", verdict: would, rule: "dry/no-db", src: "would-deny dry/no-db", dst: "would-deny dry/no-db"},
				// The monitor policy must not open what default deny drops.
				{from: "web-1", to: "db-1", service: "5433/tcp", verdict: denied, rule: dd},
				{from: "web-2", to: "bastion-1", service: "22/tcp", verdict: allowed, rule: "p/web-to-bastion"},
				{from: "web-2", to: "bastion-1", service: "23/tcp", verdict: denied, rule: dd, src: "denied default-deny", dst: "would-deny default-deny"},
				{from: "198.51.100.7", to: "bastion-1", service: "22/tcp", verdict: would, rule: dd, src: "-", dst: "would-deny default-deny"},
			},
		},
		{
			name:   "7 every verdict names policy/rule or default-deny",
			policy: policyDoc("shop", "", webToDB),
			flows: []flow{
				{from: "web-1", to: "db-1", service: "5432/tcp", verdict: allowed, rule: "shop/web-to-db"},
				{from: "web-1", to: "db-1", service: "22/tcp", verdict: denied, rule: dd},
			},
		},
		{
			name: "mixed IPv4 and IPv6: an identity covers both families; a v6 CIDR admits v6 only",
			policy: policyDoc("p", "", webToDB+"    - name: v6-clients\n      from: [{cidr: \"2001:db8::/32\"}]\n      to: [{selector: {role: web}}]\n      ports: [{port: 443}]\n"+
				"    - name: ping6\n      from: [{selector: {role: web}}]\n      to: [{selector: {role: db}}]\n      ports: [{protocol: ICMPv6, type: 128}]\n"),
			flows: []flow{
				{from: "fd00:2::10", to: "fd00:1::20", service: "5432/tcp", verdict: allowed, rule: "p/web-to-db"},
				{from: "10.0.2.10", to: "10.0.1.20", service: "5432/tcp", verdict: allowed, rule: "p/web-to-db"},
				{from: "2001:db8::1", to: "web-1", service: "443/tcp", verdict: allowed, rule: "p/v6-clients"},
				{from: "192.0.2.1", to: "web-1", service: "443/tcp", verdict: denied, rule: dd},
				{from: "web-1", to: "db-1", service: "icmpv6", verdict: allowed, rule: "p/ping6"},
				{from: "web-1", to: "db-1", service: "129/icmpv6", verdict: denied, rule: dd},
				{from: "web-1", to: "db-1", service: "icmp", verdict: denied, rule: dd},
			},
		},
		{
			name:   "CIDR with except",
			policy: policyDoc("p", "", "    - name: admins\n      from: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25, 192.0.2.64/26]}]\n      to: [{selector: {role: web}}]\n      ports: [{port: 22}]\n"),
			flows: []flow{
				{from: "192.0.2.1", to: "web-1", service: "22/tcp", verdict: allowed, rule: "p/admins"},
				{from: "192.0.2.64", to: "web-1", service: "22/tcp", verdict: denied, rule: dd},
				{from: "192.0.2.200", to: "web-1", service: "22/tcp", verdict: denied, rule: dd},
				{from: "192.0.3.1", to: "web-1", service: "22/tcp", verdict: denied, rule: dd},
			},
		},
		{
			name: "CIDR covers managed workloads too, and its except excludes them",
			policy: policyDoc("p", "", "    - name: from-net\n      from: [{cidr: 10.0.0.0/16, except: [10.0.1.16/28]}, {cidr: \"fd00::/16\"}]\n      to: [{selector: {role: db}}]\n      ports: [{port: 5432}]\n"+
				"    - name: no-telnet\n      action: deny\n      from: [{cidr: 0.0.0.0/0}, {cidr: \"::/0\"}]\n      to: [{selector: {}}]\n      ports: [{port: 23}]\n"+
				"    - name: telnet\n      from: [{selector: {}}]\n      to: [{selector: {}}]\n      ports: [{port: 23}]\n"),
			flows: []flow{
				{from: "web-2", to: "db-1", service: "5432/tcp", verdict: allowed, rule: "p/from-net"},
				{from: "h1", to: "db-1", service: "5432/tcp", verdict: allowed, rule: "p/from-net"},
				// db-1's v4 address is in the except (10.0.1.16/28), its v6 one inside
				// fd00::/16: partly inside, so outside for an allow (and a warning).
				{from: "db-1", to: "db-1", service: "5432/tcp", verdict: denied, rule: dd},
				{from: "web-1", to: "db-1", service: "23/tcp", verdict: denied, rule: "p/no-telnet", src: "denied p/no-telnet", dst: "denied p/no-telnet"},
				{from: "198.51.100.1", to: "db-1", service: "23/tcp", verdict: denied, rule: "p/no-telnet"},
			},
		},
		{
			name:   "port ranges",
			policy: policyDoc("p", "", "    - name: range\n      from: [{selector: {role: web}}]\n      to: [{selector: {role: db}}]\n      ports: [{port: 8000, endPort: 8100}, {protocol: ANY, port: 53}]\n"),
			flows: []flow{
				{from: "web-1", to: "db-1", service: "8000/tcp", verdict: allowed, rule: "p/range"},
				{from: "web-1", to: "db-1", service: "8100/tcp", verdict: allowed, rule: "p/range"},
				{from: "web-1", to: "db-1", service: "8101/tcp", verdict: denied, rule: dd},
				{from: "web-1", to: "db-1", service: "8050/udp", verdict: denied, rule: dd},
				{from: "web-1", to: "db-1", service: "53/udp", verdict: allowed, rule: "p/range"},
				{from: "web-1", to: "db-1", service: "53/tcp", verdict: allowed, rule: "p/range"},
			},
		},
		{
			name:   "monitor policy: its allows allow, its denies only report",
			policy: policyDoc("dry", "monitor", webToDB+"    - name: no-ssh\n      action: deny\n      from: [{world: true}, {selector: {}}]\n      to: [{selector: {}}]\n      ports: [{port: 22}]\n"),
			flows: []flow{
				{from: "web-1", to: "db-1", service: "5432/tcp", verdict: allowed, rule: "dry/web-to-db"},
				{from: "web-1", to: "db-1", service: "22/tcp", verdict: denied, rule: dd},
				{from: "198.51.100.1", to: "bastion-1", service: "22/tcp", verdict: would, rule: "dry/no-ssh", dst: "would-deny dry/no-ssh"},
			},
		},
		{
			name:   "empty selector is every managed workload, never an unmanaged address",
			policy: policyDoc("p", "", "    - name: all\n      from: [{selector: {}}]\n      to: [{selector: {role: db}}]\n      ports: [{port: 9100}]\n"),
			flows: []flow{
				{from: "web-2", to: "db-1", service: "9100/tcp", verdict: allowed, rule: "p/all"},
				{from: "bastion-1", to: "db-1", service: "9100/tcp", verdict: allowed, rule: "p/all"},
				{from: "h2", to: "db-1", service: "9100/tcp", verdict: allowed, rule: "p/all"},
				{from: "h1", to: "db-1", service: "9100/tcp", verdict: allowed, rule: "p/all"},
				{from: "198.51.100.1", to: "db-1", service: "9100/tcp", verdict: denied, rule: dd},
			},
		},
		{
			name: "world peer: unmanaged addresses, including those inside CIDR prefixes of other rules",
			policy: policyDoc("p", "", "    - name: out\n      from: [{selector: {role: web}}]\n      to: [{world: true}]\n      ports: [{port: 443}]\n"+
				"    - name: partners\n      from: [{selector: {role: web}}]\n      to: [{cidr: 203.0.113.0/24}]\n      ports: [{port: 8443}]\n"),
			flows: []flow{
				{from: "web-1", to: "198.51.100.1", service: "443/tcp", verdict: allowed, rule: "p/out"},
				{from: "web-1", to: "203.0.113.5", service: "443/tcp", verdict: allowed, rule: "p/out"},
				{from: "web-1", to: "203.0.113.5", service: "8443/tcp", verdict: allowed, rule: "p/partners"},
				{from: "web-1", to: "198.51.100.1", service: "8443/tcp", verdict: denied, rule: dd},
				{from: "web-1", to: "db-1", service: "443/tcp", verdict: denied, rule: dd},
				{from: "web-1", to: "2001:db8::1", service: "443/tcp", verdict: allowed, rule: "p/out"},
			},
		},
		{
			name:   "host peer as destination: workloads may reach their own node only",
			policy: policyDoc("p", "", "    - name: to-node\n      from: [{selector: {role: web}}]\n      to: [{host: true}]\n      ports: [{protocol: UDP, port: 53}]\n"),
			flows: []flow{
				{from: "web-1", to: "h1", service: "53/udp", verdict: allowed, rule: "p/to-node"},
				{from: "web-1", to: "h2", service: "53/udp", verdict: denied, rule: dd},
				{from: "db-1", to: "h1", service: "53/udp", verdict: denied, rule: dd},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			set, res := mustCompile(t, cluster+tc.policy)
			checkFlows(t, set, res, tc.flows)
		})
	}
}

// TestNoReverseEntries backs semantics 4 of docs/POLICY.md: replies ride on conntrack, so an
// edge produces exactly one egress and one ingress entry per end and peer.
func TestNoReverseEntries(t *testing.T) {
	_, res := mustCompile(t, cluster+policyDoc("p", "", "    - name: r\n      from: [{selector: {role: web}}]\n      to: [{selector: {role: db}}]\n      ports: [{port: 5432}]\n"))
	rs := res.RuleSets["n1"]
	var webEP, dbEP ruleset.EndpointID
	for _, e := range rs.Endpoints {
		switch e.Workload {
		case "web-1":
			webEP = e.ID
		case "db-1":
			dbEP = e.ID
		}
	}
	if n := countEntries(rs, func(e ruleset.Entry) bool { return e.Endpoint == webEP && e.Direction == ruleset.Ingress }); n != 0 {
		t.Errorf("web-1 has %d ingress entries, want 0", n)
	}
	if n := countEntries(rs, func(e ruleset.Entry) bool { return e.Endpoint == dbEP && e.Direction == ruleset.Egress }); n != 0 {
		t.Errorf("db-1 has %d egress entries, want 0", n)
	}
	if n := len(rs.Entries); n != 2 {
		t.Errorf("n1 has %d entries, want 2 (web-1 egress, db-1 ingress)", n)
	}
}

func TestPartialCIDRWarning(t *testing.T) {
	_, res := mustCompile(t, cluster+policyDoc("p", "", "    - name: v4-only\n      from: [{cidr: 10.0.0.0/8}]\n      to: [{selector: {role: bastion}}]\n      ports: [{port: 22}]\n"+
		"    - name: deny-v4\n      action: deny\n      from: [{cidr: 10.0.0.0/8}]\n      to: [{selector: {role: bastion}}]\n      ports: [{port: 2222}]\n"))
	var got []string
	for _, w := range res.Warnings {
		got = append(got, w.String())
	}
	for _, want := range []string{
		"test.yaml:38:7: rules[0].from: warning: label set {app=shop,role=web} (workloads web-1, web-2) has 2 of 4 addresses inside the rule's CIDRs; treated as outside (an allow never grants more than it says)",
		"test.yaml:42:7: rules[1].from: warning: label set {app=shop,role=web} (workloads web-1, web-2) has 2 of 4 addresses inside the rule's CIDRs; treated as inside (a deny never grants more than it says)",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("missing warning\n  %s\namong\n  %s", want, strings.Join(got, "\n  "))
		}
	}
}
