package recommend_test

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/recommend"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

func TestPortRanges(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ports []uint16
		want  [][2]uint16
	}{
		{"one", []uint16{443}, [][2]uint16{{443, 443}}},
		{"two apart", []uint16{443, 80}, [][2]uint16{{80, 80}, {443, 443}}},
		{"a run", []uint16{8002, 8000, 8001}, [][2]uint16{{8000, 8002}}},
		{"a gap splits", []uint16{8000, 8001, 8003, 8004}, [][2]uint16{{8000, 8001}, {8003, 8004}}},
		{"repeats", []uint16{22, 22, 23}, [][2]uint16{{22, 23}}},
		{"the top", []uint16{65534, 65535}, [][2]uint16{{65534, 65535}}},
		{"the bottom and the top", []uint16{1, 65535}, [][2]uint16{{1, 1}, {65535, 65535}}},
		{"none", nil, nil},
	} {
		if got := recommend.PortRanges(tc.ports); !slices.Equal(got, tc.want) {
			t.Errorf("%s: PortRanges(%v) = %v, want %v", tc.name, tc.ports, got, tc.want)
		}
	}
}

func TestWorldPrefixes(t *testing.T) {
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name  string
		addrs []string
		want  map[string]string
	}{
		{"alone", []string{"198.51.100.7"}, map[string]string{"198.51.100.7": "198.51.100.7/32"}},
		{"two in a /24", []string{"198.51.100.7", "198.51.100.9"},
			map[string]string{"198.51.100.7": "198.51.100.0/24", "198.51.100.9": "198.51.100.0/24"}},
		{"the same twice is alone", []string{"198.51.100.7", "198.51.100.7"}, map[string]string{"198.51.100.7": "198.51.100.7/32"}},
		{"different /24s", []string{"198.51.100.7", "198.51.101.7"},
			map[string]string{"198.51.100.7": "198.51.100.7/32", "198.51.101.7": "198.51.101.7/32"}},
		{"IPv6 alone", []string{"2001:db8::1"}, map[string]string{"2001:db8::1": "2001:db8::1/128"}},
		{"IPv6 in a /64", []string{"2001:db8::1", "2001:db8::ffff:1"},
			map[string]string{"2001:db8::1": "2001:db8::/64", "2001:db8::ffff:1": "2001:db8::/64"}},
		{"families apart", []string{"2001:db8::1", "2001:db9::1", "203.0.113.1", "203.0.113.200", "192.0.2.1"},
			map[string]string{"2001:db8::1": "2001:db8::1/128", "2001:db9::1": "2001:db9::1/128",
				"203.0.113.1": "203.0.113.0/24", "203.0.113.200": "203.0.113.0/24", "192.0.2.1": "192.0.2.1/32"}},
	} {
		var addrs []netip.Addr
		for _, s := range tc.addrs {
			addrs = append(addrs, a(s))
		}
		got := recommend.WorldPrefixes(addrs)
		if len(got) != len(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
		for addr, p := range tc.want {
			if got[a(addr)].String() != p {
				t.Errorf("%s: %s -> %s, want %s", tc.name, addr, got[a(addr)], p)
			}
		}
	}
}

// workloadsYAML: two web replicas and an api (app web and api, roles
// frontend), a database, a workload without app and one without labels.
const workloadsYAML = `
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: web-1, labels: {app: web, role: frontend}}
spec: {node: node-a, interface: veth-w1, addresses: [10.0.0.1]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: web-2, labels: {app: web, role: frontend}}
spec: {node: node-a, interface: veth-w2, addresses: [10.0.0.2]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: api-1, labels: {app: api, role: frontend}}
spec: {node: node-a, interface: veth-a1, addresses: [10.0.0.3]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: db-1, labels: {app: db, role: backend}}
spec: {node: node-b, interface: veth-d1, addresses: [10.0.1.1, "fd00::11"]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: batch, labels: {role: jobs}}
spec: {node: node-b, interface: veth-b, addresses: [10.0.1.2]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: bare}
spec: {node: node-b, interface: veth-x, addresses: [10.0.1.3]}
`

func mustSet(t *testing.T, docs ...string) *policy.Set {
	t.Helper()
	set, diags := policy.ParseAndValidate("test.yaml", []byte(strings.Join(docs, "\n---\n")))
	if diags.HasErrors() {
		t.Fatalf("fixture: %v", diags.Errors().Err())
	}
	return set
}

var t0 = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

// edge is a store group: src and dst are workload names, or addresses.
func edge(src, dst, proto string, port uint16, v ruleset.Verdict, flows uint64, ago time.Duration) store.FlowEdge {
	e := store.FlowEdge{Protocol: proto, Port: port, Verdict: v, Flows: flows, FirstSeen: t0.Add(-ago), LastSeen: t0.Add(-ago / 2)}
	if a, err := netip.ParseAddr(src); err == nil {
		e.SrcAddr = a
	} else {
		e.SrcWorkload = src
	}
	if a, err := netip.ParseAddr(dst); err == nil {
		e.DstAddr = a
	} else {
		e.DstWorkload = dst
	}
	return e
}

// ruleView is a rule as the tests compare it.
type ruleView struct {
	from, to, ports string
}

func view(r apiclient.RecommendedRule) ruleView {
	peers := func(ps []apiclient.RecommendedPeer) string {
		var s []string
		for _, p := range ps {
			if p.CIDR != "" {
				s = append(s, p.CIDR)
			} else {
				s = append(s, policy.Labels(p.Selector).String())
			}
		}
		return strings.Join(s, " ")
	}
	var ports []string
	for _, p := range r.Ports {
		s := p.Protocol
		if p.Port != 0 {
			s += "/" + strconv.Itoa(int(p.Port))
		}
		if p.EndPort != 0 {
			s += "-" + strconv.Itoa(int(p.EndPort))
		}
		ports = append(ports, s)
	}
	return ruleView{peers(r.From), peers(r.To), strings.Join(ports, " ")}
}

var observed = []store.FlowEdge{
	edge("web-1", "db-1", "TCP", 5432, ruleset.VerdictWouldDeny, 10, time.Hour),
	edge("web-2", "db-1", "TCP", 5432, ruleset.VerdictWouldDeny, 5, 2*time.Hour),
	edge("web-1", "db-1", "TCP", 5433, ruleset.VerdictAllowed, 1, time.Hour),
	edge("web-1", "db-1", "TCP", 5434, ruleset.VerdictWouldDeny, 1, time.Hour),
	edge("web-1", "db-1", "TCP", 9000, ruleset.VerdictWouldDeny, 1, time.Hour),
	edge("api-1", "db-1", "TCP", 5432, ruleset.VerdictWouldDeny, 3, time.Hour),
	edge("api-1", "db-1", "UDP", 53, ruleset.VerdictWouldDeny, 3, time.Hour),
	edge("api-1", "db-1", "ICMP", 0, ruleset.VerdictWouldDeny, 1, time.Hour),
	edge("batch", "db-1", "TCP", 5432, ruleset.VerdictWouldDeny, 2, time.Hour),
	edge("bare", "db-1", "TCP", 5432, ruleset.VerdictWouldDeny, 2, time.Hour),
	edge("198.51.100.7", "web-1", "TCP", 443, ruleset.VerdictWouldDeny, 4, time.Hour),
	edge("198.51.100.9", "web-2", "TCP", 443, ruleset.VerdictWouldDeny, 4, time.Hour),
	edge("203.0.113.5", "web-1", "TCP", 443, ruleset.VerdictWouldDeny, 1, time.Hour),
	edge("db-1", "2001:db8::5", "TCP", 443, ruleset.VerdictAllowed, 1, time.Hour),
	edge("web-1", "db-1", "TCP", 22, ruleset.VerdictDenied, 7, time.Hour),
	edge("gone", "db-1", "TCP", 5432, ruleset.VerdictWouldDeny, 1, time.Hour),
	edge("web-1", "db-1", "proto-47", 0, ruleset.VerdictWouldDeny, 1, time.Hour),
}

// TestRecommendGrouping: one rule per pair of groups, grouped by the
// label asked for; ranges only where every port was used; world
// addresses by prefix; denied flows only when asked; what cannot be
// written is left out with a note.
func TestRecommendGrouping(t *testing.T) {
	set := mustSet(t, workloadsYAML)
	for _, tc := range []struct {
		name  string
		opts  recommend.Options
		want  []ruleView
		notes []string
	}{
		{"by app", recommend.Options{GroupBy: "app"}, []ruleView{
			{"198.51.100.0/24", "app=web", "TCP/443"},
			{"203.0.113.5/32", "app=web", "TCP/443"},
			{"app=api", "app=db", "TCP/5432 UDP/53 ICMP"},
			{"10.0.1.3/32", "app=db", "TCP/5432"},
			{"role=jobs", "app=db", "TCP/5432"},
			{"app=db", "2001:db8::5/128", "TCP/443"},
			{"app=web", "app=db", "TCP/5432-5434 TCP/9000"},
		}, []string{"workload batch has no label app: selected by its full label set",
			"workload bare has no labels: selected by its addresses", "workload gone is no longer defined",
			"proto-47 flows left out"}},
		{"by role", recommend.Options{GroupBy: "role"}, []ruleView{
			{"198.51.100.0/24", "role=frontend", "TCP/443"},
			{"203.0.113.5/32", "role=frontend", "TCP/443"},
			{"10.0.1.3/32", "role=backend", "TCP/5432"},
			{"role=backend", "2001:db8::5/128", "TCP/443"},
			{"role=frontend", "role=backend", "TCP/5432-5434 TCP/9000 UDP/53 ICMP"},
			{"role=jobs", "role=backend", "TCP/5432"},
		}, nil},
		{"denied included", recommend.Options{GroupBy: "role", IncludeDenied: true}, []ruleView{
			{"198.51.100.0/24", "role=frontend", "TCP/443"},
			{"203.0.113.5/32", "role=frontend", "TCP/443"},
			{"10.0.1.3/32", "role=backend", "TCP/5432"},
			{"role=backend", "2001:db8::5/128", "TCP/443"},
			{"role=frontend", "role=backend", "TCP/22 TCP/5432-5434 TCP/9000 UDP/53 ICMP"},
			{"role=jobs", "role=backend", "TCP/5432"},
		}, nil},
		{"one workload", recommend.Options{GroupBy: "app", Workload: "api-1"}, []ruleView{
			{"app=api", "app=db", "TCP/5432 UDP/53 ICMP"},
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Name, tc.opts.Since, tc.opts.Until = "recommended", t0.Add(-24*time.Hour), t0
			rec, err := recommend.Recommend(set.Workloads, observed, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			var got []ruleView
			for _, r := range rec.Rules {
				got = append(got, view(r))
			}
			slices.SortFunc(got, func(a, b ruleView) int { return strings.Compare(a.from+a.to, b.from+b.to) })
			slices.SortFunc(tc.want, func(a, b ruleView) int { return strings.Compare(a.from+a.to, b.from+b.to) })
			if !slices.Equal(got, tc.want) {
				t.Errorf("rules:\n got %v\nwant %v", got, tc.want)
			}
			for _, n := range tc.notes {
				if !slices.ContainsFunc(rec.Notes, func(s string) bool { return strings.Contains(s, n) }) {
					t.Errorf("notes %q lack %q", rec.Notes, n)
				}
			}
			if _, diags := policy.ParseAndValidate("rec.yaml", []byte(rec.YAML)); diags.HasErrors() {
				t.Errorf("the recommendation does not validate: %v\n%s", diags.Errors().Err(), rec.YAML)
			}
		})
	}
}

// TestRecommendEvidence: each rule's evidence sums its edges' flows by
// verdict, with the first and last seen of them, and is the comment
// above the rule in the YAML.
func TestRecommendEvidence(t *testing.T) {
	set := mustSet(t, workloadsYAML)
	rec, err := recommend.Recommend(set.Workloads, observed, recommend.Options{GroupBy: "app", Name: "recommended",
		Since: t0.Add(-24 * time.Hour), Until: t0})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(rec.Rules, func(r apiclient.RecommendedRule) bool { return r.Name == "web-to-db" })
	if i < 0 {
		t.Fatalf("no rule web-to-db: %+v", rec.Rules)
	}
	ev := rec.Rules[i].Evidence
	want := apiclient.Evidence{Flows: 18, Allowed: 1, WouldDeny: 17, FirstSeen: t0.Add(-2 * time.Hour), LastSeen: t0.Add(-30 * time.Minute)}
	if ev != want {
		t.Errorf("evidence %+v, want %+v", ev, want)
	}
	comment := "# 18 flows (1 allowed, 17 would-deny, 0 denied), first seen 2026-12-01T06:00:00Z, last seen 2026-12-01T07:30:00Z\n    - name: web-to-db\n"
	if !strings.Contains(rec.YAML, comment) {
		t.Errorf("YAML lacks %q:\n%s", comment, rec.YAML)
	}
	if !strings.HasPrefix(rec.YAML, "# Recommended from the flows stored from 2026-11-30T08:00:00Z to 2026-12-01T08:00:00Z") {
		t.Errorf("YAML header:\n%s", rec.YAML)
	}
}

// TestRecommendEnforcesExactly: the recommended policy, applied to the
// workloads in enforce mode, allows every observed edge and denies an
// edge that was not observed (the compiler and explain decide, as the
// datapath does).
func TestRecommendEnforcesExactly(t *testing.T) {
	set := mustSet(t, workloadsYAML)
	rec, err := recommend.Recommend(set.Workloads, observed, recommend.Options{GroupBy: "app", Name: "recommended"})
	if err != nil {
		t.Fatal(err)
	}
	full := mustSet(t, workloadsYAML, rec.YAML)
	res, err := compile.Compile(full, compile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	decide := func(from, to string, proto ruleset.Protocol, port uint16) ruleset.Verdict {
		t.Helper()
		x, err := compile.Explain(full, res, compile.Query{From: from, To: to, Protocol: proto, Port: port})
		if err != nil {
			t.Fatalf("explain %s -> %s %d: %v", from, to, port, err)
		}
		return x.Verdict
	}
	for _, e := range recommend.Observed(observed, recommend.Options{}) {
		if e.SrcWorkload == "gone" || e.Protocol == "proto-47" || e.Protocol == "ICMP" {
			continue
		}
		from, to := e.SrcWorkload, e.DstWorkload
		if from == "" {
			from = e.SrcAddr.String()
		}
		if to == "" {
			to = e.DstAddr.String()
		}
		proto := ruleset.ProtocolTCP
		if e.Protocol == "UDP" {
			proto = ruleset.ProtocolUDP
		}
		if v := decide(from, to, proto, e.Port); v != ruleset.VerdictAllowed {
			t.Errorf("observed %s -> %s %s/%d: %v, want allowed", from, to, e.Protocol, e.Port, v)
		}
	}
	for _, q := range []compile.Query{
		{From: "db-1", To: "web-1", Protocol: ruleset.ProtocolTCP, Port: 5432}, // reverse direction
		{From: "web-1", To: "db-1", Protocol: ruleset.ProtocolTCP, Port: 5435}, // beyond the range
		{From: "web-1", To: "db-1", Protocol: ruleset.ProtocolTCP, Port: 8999}, // between the observed ports
		{From: "web-1", To: "db-1", Protocol: ruleset.ProtocolTCP, Port: 22},   // denied, not included
		{From: "198.51.101.7", To: "web-1", Protocol: ruleset.ProtocolTCP, Port: 443},
		{From: "203.0.113.6", To: "web-1", Protocol: ruleset.ProtocolTCP, Port: 443}, // a lone address is a /32
		{From: "web-1", To: "api-1", Protocol: ruleset.ProtocolTCP, Port: 5432},
	} {
		if v := decide(q.From, q.To, q.Protocol, q.Port); v != ruleset.VerdictDenied {
			t.Errorf("not observed %s -> %s %d: %v, want denied", q.From, q.To, q.Port, v)
		}
	}
}

// TestRecommendHostileLabels: label values and names that mean something
// else in YAML stay strings in the document, and ones the language
// refuses (a newline, a comment, a flow mapping) are left out with a
// note: nothing reaches the document's structure.
func TestRecommendHostileLabels(t *testing.T) {
	a := netip.MustParseAddr
	hostile := []string{"true", "null", "1e3", "0x1F", ".inf", "-", "a:b", "no", "k8s:ns.x/y"}
	var ws []policy.Workload
	var edges []store.FlowEdge
	for i, v := range hostile {
		name := "w" + strconv.Itoa(i)
		ws = append(ws, policy.Workload{Meta: policy.Meta{Name: name, Labels: policy.Labels{"app": v}}, Node: "n",
			Interface: "veth" + strconv.Itoa(i), Addresses: []netip.Addr{a("10.9.0." + strconv.Itoa(i+1))}})
		edges = append(edges, store.FlowEdge{SrcWorkload: name, DstWorkload: "w0", Protocol: "TCP", Port: 80,
			Verdict: ruleset.VerdictWouldDeny, Flows: 1, FirstSeen: t0, LastSeen: t0})
	}
	refused := map[string]string{
		"evil1": "x\n    - name: injected\n      from: [{world: true}]",
		"evil2": "x # comment",
		"evil3": "{a: b}",
	}
	for name, v := range refused {
		ws = append(ws, policy.Workload{Meta: policy.Meta{Name: name, Labels: policy.Labels{"app": v}}, Node: "n",
			Interface: "veth-" + name, Addresses: []netip.Addr{a("10.9.1." + name[4:])}})
		edges = append(edges, store.FlowEdge{SrcWorkload: name, DstWorkload: "w0", Protocol: "TCP", Port: 80,
			Verdict: ruleset.VerdictWouldDeny, Flows: 1, FirstSeen: t0, LastSeen: t0})
	}
	// A hostile workload name without the label: it only names the rule,
	// made a valid name.
	ws = append(ws, policy.Workload{Meta: policy.Meta{Name: "ns/evil: {x}", Labels: policy.Labels{"tier": "z"}}, Node: "n",
		Interface: "veth-e", Addresses: []netip.Addr{a("10.9.2.1")}})
	edges = append(edges, store.FlowEdge{SrcWorkload: "ns/evil: {x}", DstWorkload: "w0", Protocol: "TCP", Port: 80,
		Verdict: ruleset.VerdictWouldDeny, Flows: 1, FirstSeen: t0, LastSeen: t0})

	rec, err := recommend.Recommend(ws, edges, recommend.Options{GroupBy: "app", Name: "recommended"})
	if err != nil {
		t.Fatal(err)
	}
	set, diags := policy.ParseAndValidate("rec.yaml", []byte(rec.YAML))
	if diags.HasErrors() {
		t.Fatalf("does not validate: %v\n%s", diags.Errors().Err(), rec.YAML)
	}
	if len(set.Policies) != 1 || len(set.Workloads) != 0 {
		t.Fatalf("want one policy and nothing else, got %+v", set)
	}
	var froms []string
	for _, r := range set.Policies[0].Rules {
		if len(r.From) != 1 || len(r.To) != 1 || r.To[0].Selector["app"] != "true" || r.From[0].World || r.From[0].CIDR.IsValid() {
			t.Errorf("rule %s: from %+v to %+v", r.Name, r.From, r.To)
			continue
		}
		froms = append(froms, policy.Labels(r.From[0].Selector).String())
	}
	for _, v := range hostile {
		if !slices.Contains(froms, "app="+v) {
			t.Errorf("no rule from app=%q, read back as a string: %q", v, froms)
		}
	}
	if !slices.Contains(froms, "tier=z") {
		t.Errorf("no rule from the hostile name's labels: %q", froms)
	}
	for name := range refused {
		if !slices.ContainsFunc(rec.Notes, func(s string) bool { return strings.HasPrefix(s, "workload "+name+": label app left out") }) {
			t.Errorf("notes %q say nothing of %s", rec.Notes, name)
		}
	}
	if strings.Contains(rec.YAML, "injected") || strings.Contains(rec.YAML, "comment") {
		t.Errorf("a refused label reached the document:\n%s", rec.YAML)
	}
}

// TestRecommendNothing: no observed flow, no document.
func TestRecommendNothing(t *testing.T) {
	set := mustSet(t, workloadsYAML)
	rec, err := recommend.Recommend(set.Workloads, nil, recommend.Options{GroupBy: "app", Name: "recommended"})
	if err != nil || rec.YAML != "" || len(rec.Rules) != 0 || rec.Notes == nil {
		t.Errorf("%+v, %v", rec, err)
	}
}

// TestDiff: observed edges the policy in force does not allow (with the
// verdict and rule it decides them by), and allow edges no flow used.
func TestDiff(t *testing.T) {
	set := mustSet(t, workloadsYAML, `
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: shop}
spec:
  rules:
    - name: web-to-db
      from: [{selector: {app: web}}]
      to: [{selector: {app: db}}]
      ports: [{protocol: TCP, port: 5432, endPort: 5433}]
    - name: jobs-to-db
      from: [{selector: {role: jobs}}]
      to: [{selector: {app: db}}]
      ports: [{protocol: TCP, port: 6000}]
    - name: no-9000
      action: deny
      from: [{selector: {}}]
      to: [{selector: {}}]
      ports: [{protocol: TCP, port: 9000}]
`)
	d, notes, err := recommend.Diff(set, observed, recommend.Options{})
	if err != nil {
		t.Fatal(err)
	}
	type na struct {
		src, dst string
		port     uint16
		flows    uint64
		v        ruleset.Verdict
		rule     string
	}
	var got []na
	for _, e := range d.NotAllowed {
		got = append(got, na{e.Src, e.Dst, e.Port, e.Flows, e.Verdict, e.Rule})
	}
	want := []na{
		{"198.51.100.7", "web-1", 443, 4, ruleset.VerdictDenied, "default-deny"},
		{"198.51.100.9", "web-2", 443, 4, ruleset.VerdictDenied, "default-deny"},
		{"203.0.113.5", "web-1", 443, 1, ruleset.VerdictDenied, "default-deny"},
		{"api-1", "db-1", 5432, 3, ruleset.VerdictDenied, "default-deny"},
		{"api-1", "db-1", 53, 3, ruleset.VerdictDenied, "default-deny"},
		{"bare", "db-1", 5432, 2, ruleset.VerdictDenied, "default-deny"},
		{"batch", "db-1", 5432, 2, ruleset.VerdictDenied, "default-deny"},
		{"db-1", "2001:db8::5", 443, 1, ruleset.VerdictDenied, "default-deny"},
		{"web-1", "db-1", 5434, 1, ruleset.VerdictDenied, "default-deny"},
		{"web-1", "db-1", 9000, 1, ruleset.VerdictDenied, "shop/no-9000"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("not allowed:\n got %v\nwant %v", got, want)
	}
	var unused []string
	for _, e := range d.Unused {
		unused = append(unused, e.Src+">"+e.Dst+":"+e.Protocol+"/"+strconv.Itoa(int(e.Port))+" "+e.Policy+"/"+e.Rule)
	}
	if want := []string{"batch>db-1:TCP/6000 shop/jobs-to-db"}; !slices.Equal(unused, want) {
		t.Errorf("unused %q, want %q", unused, want)
	}
	for _, n := range []string{"ICMP flows are not compared", "proto-47 flows are not compared", "gone -> db-1"} {
		if !slices.ContainsFunc(notes, func(s string) bool { return strings.Contains(s, n) }) {
			t.Errorf("notes %q lack %q", notes, n)
		}
	}
	one, _, err := recommend.Diff(set, observed, recommend.Options{Workload: "batch"})
	if err != nil {
		t.Fatal(err)
	}
	if len(one.NotAllowed) != 1 || one.NotAllowed[0].Src != "batch" || len(one.Unused) != 1 {
		t.Errorf("workload batch: %+v", one)
	}
}
