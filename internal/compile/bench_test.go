package compile

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// benchSet builds a realistic cluster: apps of 10 workloads (4 web, 4 api,
// 2 db; every other app dual-stack) spread over one node per 100 workloads,
// a host-mode workload per node, 8 platform workloads (load balancers,
// Prometheus, DNS), and two policies per app (ingress edges; egress to the
// world and, for every tenth app, to a partner CIDR with an except, half of
// them in monitor mode) plus one platform policy (scraping, DNS, a
// universal no-telnet deny). workloads/10 apps need policies/2 == apps.
func benchSet(workloads, policies int) *policy.Set {
	apps := workloads / 10
	if policies != 2*apps {
		panic("benchSet: policies must be workloads/5")
	}
	nodes := max(1, workloads/100)
	set := &policy.Set{}
	addr4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}) }
	addr6 := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	n := 0
	add := func(name string, labels policy.Labels, node int, host, dual bool) {
		n++
		w := policy.Workload{Meta: policy.Meta{Name: name, Labels: labels}, Node: fmt.Sprintf("node-%03d", node), Addresses: []netip.Addr{addr4(n)}}
		if !host {
			w.Interface = fmt.Sprintf("veth%d", n)
		}
		if dual {
			w.Addresses = append(w.Addresses, addr6(n))
		}
		set.Workloads = append(set.Workloads, w)
	}
	for i := range nodes {
		add(fmt.Sprintf("host-%03d", i), policy.Labels{"role": "node"}, i, true, false)
	}
	for i, role := range []string{"lb", "lb", "lb", "lb", "prometheus", "prometheus", "dns", "dns"} {
		add(fmt.Sprintf("%s-%d", role, i), policy.Labels{"role": role}, i%nodes, false, false)
	}
	tiers := []string{"web", "web", "web", "web", "api", "api", "api", "api", "db", "db"}
	for a := range apps {
		env := []string{"prod", "staging"}[a%2]
		for r, tier := range tiers {
			add(fmt.Sprintf("app%04d-%s-%d", a, tier, r), policy.Labels{"app": fmt.Sprintf("app%04d", a), "tier": tier, "env": env}, (a*10+r)%nodes, false, a%2 == 0)
		}
	}

	sel := func(kv ...string) []policy.Peer {
		s := policy.Selector{}
		for i := 0; i+1 < len(kv); i += 2 {
			s[kv[i]] = kv[i+1]
		}
		return []policy.Peer{{Selector: s}}
	}
	tcp := func(port, end uint16) []policy.PortRule {
		return []policy.PortRule{{Protocol: ruleset.ProtocolTCP, Port: port, EndPort: end}}
	}
	world := []policy.Peer{{World: true}}
	for a := range apps {
		app := fmt.Sprintf("app%04d", a)
		set.Policies = append(set.Policies, policy.Policy{Meta: policy.Meta{Name: app + "-ingress"}, Rules: []policy.Rule{
			{Name: "lb-to-web", Action: policy.ActionAllow, From: sel("role", "lb"), To: sel("app", app, "tier", "web"), Ports: tcp(443, 0)},
			{Name: "web-to-api", Action: policy.ActionAllow, From: sel("app", app, "tier", "web"), To: sel("app", app, "tier", "api"), Ports: tcp(8080, 8089)},
			{Name: "api-to-db", Action: policy.ActionAllow, From: sel("app", app, "tier", "api"), To: sel("app", app, "tier", "db"), Ports: tcp(5432, 0)},
			{Name: "health", Action: policy.ActionAllow, From: []policy.Peer{{Host: true}}, To: sel("app", app), Ports: tcp(8081, 0)},
		}})
		egress := policy.Policy{Meta: policy.Meta{Name: app + "-egress"}, Rules: []policy.Rule{
			{Name: "api-out", Action: policy.ActionAllow, From: sel("app", app, "tier", "api"), To: world, Ports: tcp(443, 0)},
			{Name: "no-db-egress", Action: policy.ActionDeny, From: sel("app", app, "tier", "db"), To: world},
		}}
		if a%2 == 1 {
			egress.Mode = policy.ModeMonitor
		}
		if a%10 == 0 {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{203, byte(a / 256), byte(a), 0}), 24)
			egress.Rules = append(egress.Rules, policy.Rule{Name: "partner", Action: policy.ActionAllow, From: sel("app", app, "tier", "api"),
				To:    []policy.Peer{{CIDR: p, Except: []netip.Prefix{netip.PrefixFrom(p.Addr(), 28)}}},
				Ports: tcp(8443, 0)})
		}
		set.Policies = append(set.Policies, egress)
	}
	set.Policies = append(set.Policies, policy.Policy{Meta: policy.Meta{Name: "platform"}, Rules: []policy.Rule{
		{Name: "scrape", Action: policy.ActionAllow, From: sel("role", "prometheus"), To: sel(), Ports: tcp(9090, 0)},
		{Name: "dns", Action: policy.ActionAllow, From: sel(), To: sel("role", "dns"), Ports: []policy.PortRule{{Protocol: ruleset.ProtocolAny, Port: 53}}},
		{Name: "no-telnet", Action: policy.ActionDeny, From: []policy.Peer{{CIDR: netip.MustParsePrefix("0.0.0.0/0")}, {CIDR: netip.MustParsePrefix("::/0")}}, To: sel(), Ports: tcp(23, 0)},
	}})
	set.Sort()
	return set
}

var benchSizes = []struct{ workloads, policies int }{{1000, 200}, {10000, 2000}}

// BenchmarkCompile compiles every node's rule set, including Validate,
// Encode and the size check of each.
func BenchmarkCompile(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(fmt.Sprintf("workloads=%d,policies=%d", sz.workloads, sz.policies), func(b *testing.B) {
			set := benchSet(sz.workloads, sz.policies)
			if diags := set.Validate(); diags.HasErrors() {
				b.Fatal(diags.Err())
			}
			b.ReportAllocs()
			var res *Result
			for b.Loop() {
				var err error
				if res, err = Compile(set, Options{}); err != nil {
					b.Fatal(err)
				}
			}
			entries, ipcache := 0, 0
			for _, rs := range res.RuleSets {
				entries += len(rs.Entries)
				ipcache += len(rs.IPCache)
			}
			b.ReportMetric(float64(len(res.Nodes)), "nodes")
			b.ReportMetric(float64(entries), "entries")
			b.ReportMetric(float64(ipcache), "ipcache-entries")
		})
	}
}

// BenchmarkRecompile measures a recompilation after one workload change
// (one more replica of an app, on one node) and the per-node diffs the
// control plane would send: nodes-changed counts nodes whose policy
// entries or endpoints change; every other node only gets the new
// address in its ipcache.
func BenchmarkRecompile(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(fmt.Sprintf("workloads=%d,policies=%d", sz.workloads, sz.policies), func(b *testing.B) {
			set := benchSet(sz.workloads, sz.policies)
			old, err := Compile(set, Options{})
			if err != nil {
				b.Fatal(err)
			}
			changed := scaleOut(set)
			b.ReportAllocs()
			var touched, items int
			for b.Loop() {
				res, err := Compile(changed, Options{})
				if err != nil {
					b.Fatal(err)
				}
				touched, items = 0, 0
				for _, n := range res.Nodes {
					d := ruleset.Diff(old.RuleSets[n], res.RuleSets[n])
					items += d.Len()
					if len(d.AddEntries)+len(d.DeleteEntries)+len(d.PutEndpoints)+len(d.DeleteEndpoints) > 0 {
						touched++
					}
				}
			}
			b.ReportMetric(float64(touched), "nodes-changed")
			b.ReportMetric(float64(items), "delta-items")
		})
	}
}

// scaleOut returns a copy of set with one more web replica of app0003.
func scaleOut(set *policy.Set) *policy.Set {
	c := *set
	c.Workloads = append([]policy.Workload(nil), set.Workloads...)
	w, _ := set.Workload("app0003-web-0")
	n := *w
	n.Name = "app0003-web-new"
	n.Interface = "veth-new"
	n.Addresses = []netip.Addr{netip.MustParseAddr("10.250.0.1")}
	c.Workloads = append(c.Workloads, n)
	c.Sort()
	return &c
}

// TestRecompileTouchesOnlyAffectedNodes: one more replica of an app changes
// the policy entries of its own node only; every other node's delta is the
// new address in its ipcache.
func TestRecompileTouchesOnlyAffectedNodes(t *testing.T) {
	set := benchSet(1000, 200)
	old, err := Compile(set, Options{Validate: true})
	if err != nil {
		t.Fatal(err)
	}
	changed := scaleOut(set)
	res, err := Compile(changed, Options{})
	if err != nil {
		t.Fatal(err)
	}
	w, _ := changed.Workload("app0003-web-new")
	for _, n := range res.Nodes {
		d := ruleset.Diff(old.RuleSets[n], res.RuleSets[n])
		if n == w.Node {
			if len(d.PutEndpoints) != 1 || len(d.AddEntries) == 0 || len(d.DeleteEntries) != 0 {
				t.Errorf("%s (the new replica's node): delta %d endpoints, +%d/-%d entries", n, len(d.PutEndpoints), len(d.AddEntries), len(d.DeleteEntries))
			}
			continue
		}
		if d.Len() != 1 || len(d.PutIPCache) != 1 || d.PutIPCache[0].Prefix != netip.MustParsePrefix("10.250.0.1/32") {
			t.Errorf("%s: delta of %d items (%+v), want only the new address in the ipcache", n, d.Len(), d)
		}
		got, err := old.RuleSets[n].ApplyDelta(d)
		if err != nil || got.Hash() != res.RuleSets[n].Hash() {
			t.Errorf("%s: applying the delta: %v", n, err)
		}
	}
}
