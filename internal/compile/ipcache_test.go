package compile

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// TestScopedIPCacheDecidesAsClusterWide: a node's ipcache holds only the
// managed addresses its policy needs (scopedManaged), and every verdict
// on every endpoint for every managed address is the one a cluster-wide
// ipcache (every address with its label identity) gives. The inputs have
// no world peer on some nodes, so addresses are left out there; truthInput
// without its world rules adds CIDRs with excepts, host peers, monitor
// denies and a wildcard.
func TestScopedIPCacheDecidesAsClusterWide(t *testing.T) {
	var noWorld []string
	for _, line := range strings.Split(truthInput, "\n") {
		if !strings.Contains(line, "world: true") {
			noWorld = append(noWorld, line)
		}
	}
	inputs := map[string]string{
		"truth-without-world": strings.Join(noWorld, "\n"),
		"selectors-and-cidr": cluster + policyDoc("p", "", `    - {name: web-db, from: [{selector: {role: web}}], to: [{selector: {role: db}}], ports: [{port: 5432}]}
    - {name: ssh, from: [{cidr: 10.0.2.0/24}], to: [{selector: {role: node}}], ports: [{port: 22}]}
    - {name: no-bastion, action: deny, from: [{selector: {role: bastion}}], to: [{selector: {app: shop}}]}
`),
		"one-node-allows-world": cluster + policyDoc("p", "", `    - {name: web-db, from: [{selector: {role: web}}], to: [{selector: {role: db}}], ports: [{port: 5432}]}
    - {name: lb, from: [{world: true}], to: [{selector: {role: bastion}}], ports: [{port: 443}]}
`),
	}
	ports := []uint16{22, 23, 53, 443, 5432, 6379, 8050, 8080, 9000}
	for name, input := range inputs {
		t.Run(name, func(t *testing.T) {
			set, res := mustCompile(t, input)
			m := newModel(set)
			left := 0
			for _, node := range res.Nodes {
				rs, tables := res.RuleSets[node], res.Tables[node]
				for _, oa := range m.addrs {
					w := &m.ws[oa.workload]
					global := m.labelSets[m.wLabel[oa.workload]].id
					if w.Node == node && w.HostMode() {
						global = ruleset.IdentityHost
					}
					got := rs.Resolve(oa.addr)
					if got != global {
						left++
						if w.Node == node {
							t.Errorf("node %s: own workload %s's %s resolves to %d, want %d", node, w.Name, oa.addr, got, global)
						}
						if got != ruleset.IdentityWorld {
							t.Errorf("node %s: %s (of %s) left out but resolves to %d, not world", node, oa.addr, w.Name, got)
						}
					}
					for _, ep := range rs.Endpoints {
						for _, dir := range []ruleset.Direction{ruleset.Ingress, ruleset.Egress} {
							for _, p := range []ruleset.Protocol{ruleset.ProtocolTCP, ruleset.ProtocolUDP} {
								for _, port := range ports {
									scoped := tables.Decide(ep, dir, got, p, port)
									whole := tables.Decide(ep, dir, global, p, port)
									if scoped != whole {
										t.Errorf("node %s, %s %s, %s %s/%d: scoped ipcache (%d) decides %+v, cluster-wide (%d) %+v",
											node, ep.Workload, dir, oa.addr, p, port, got, scoped, global, whole)
									}
								}
							}
						}
					}
				}
			}
			// (truthInput names every workload: its ping rule is {} to {}.)
			if name == "selectors-and-cidr" && left == 0 {
				t.Errorf("no address was left out of any node's ipcache: the scoping does nothing here")
			}
		})
	}
}

// TestScopedIPCacheContents names what each node of a small cluster
// holds: its own addresses, those of the identities its rules name, the
// managed ones inside its CIDR prefixes, and all of them on a node that
// names world.
func TestScopedIPCacheContents(t *testing.T) {
	input := cluster + policyDoc("p", "", `    - {name: web-db, from: [{selector: {role: web}}], to: [{selector: {role: db}}], ports: [{port: 5432}]}
    - {name: ssh, from: [{cidr: 10.0.2.0/28}], to: [{selector: {role: db}}], ports: [{port: 22}]}
`) + "\n---\napiVersion: eastguard.dev/v1\nkind: Workload\nmetadata: {name: edge, labels: {role: edge}}\nspec: {node: n3, interface: veth-edge, addresses: [10.0.3.10]}\n" +
		policyDoc("edge", "", "    - {name: in, from: [{world: true}], to: [{selector: {role: edge}}], ports: [{port: 443}]}\n")
	set, diags := policy.ParseAndValidate("test.yaml", []byte(input))
	if set == nil {
		t.Fatal(diags.Err())
	}
	res, err := Compile(set, Options{Validate: true})
	if err != nil {
		t.Fatal(err)
	}
	prefixes := func(node string) []string {
		var out []string
		for _, c := range res.RuleSets[node].IPCache {
			out = append(out, c.Prefix.String())
		}
		return out
	}
	// n1: its own (h1, web-1, db-1); web-2 (a web, db-1's peer); 10.0.2.1
	// and 10.0.2.10, inside the ssh rule's 10.0.2.0/28, and the prefix.
	want := []string{"10.0.1.1/32", "10.0.1.10/32", "10.0.1.20/32", "10.0.2.0/28", "10.0.2.1/32", "10.0.2.10/32",
		"fd00:1::1/128", "fd00:1::10/128", "fd00:1::20/128", "fd00:2::10/128"}
	if got := prefixes("n1"); !slices.Equal(got, want) {
		t.Errorf("n1's ipcache %v, want %v", got, want)
	}
	// n2: its own, and db-1 (web-2's peer); not h1 nor web-1.
	want = []string{"10.0.1.20/32", "10.0.2.1/32", "10.0.2.10/32", "10.0.2.30/32", "fd00:1::20/128", "fd00:2::1/128", "fd00:2::10/128"}
	if got := prefixes("n2"); !slices.Equal(got, want) {
		t.Errorf("n2's ipcache %v, want %v", got, want)
	}
	// n3 names world: every managed address, so none is taken for world.
	var all []string
	for _, w := range set.Workloads {
		for _, a := range w.Addresses {
			all = append(all, netip.PrefixFrom(a, a.BitLen()).String())
		}
	}
	slices.SortFunc(all, func(a, b string) int {
		return comparePrefix(netip.MustParsePrefix(a), netip.MustParsePrefix(b))
	})
	if got := prefixes("n3"); !slices.Equal(got, all) {
		t.Errorf("n3's ipcache %v, want every managed address %v", got, all)
	}
}

// TestExplainNamesALeftOutPeer: explain says which workload a peer that
// resolves to world on the deciding node is, and decides it as its own
// identity would be decided.
func TestExplainNamesALeftOutPeer(t *testing.T) {
	set, res := mustCompile(t, cluster+policyDoc("p", "", "    - {name: web-db, from: [{selector: {role: web}}], to: [{selector: {role: db}}], ports: [{port: 5432}]}\n"))
	x, err := Explain(set, res, Query{From: "bastion-1", To: "db-1", Protocol: ruleset.ProtocolTCP, Port: 5432})
	if err != nil {
		t.Fatal(err)
	}
	d := x.Destination
	if d.Peer != ruleset.IdentityWorld || d.PeerName != "world (workload bastion-1: no rule on node n1 names it)" {
		t.Errorf("db-1's end: peer %d %q, want world naming bastion-1", d.Peer, d.PeerName)
	}
	if d.Verdict != ruleset.VerdictDenied || d.RuleName != ruleset.DefaultDenyName {
		t.Errorf("db-1's end: %s by %s, want denied by %s", d.Verdict, d.RuleName, ruleset.DefaultDenyName)
	}
}
