package compile

import (
	"fmt"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// cluster is the workloads most tests share:
//
//	n1: h1 (host mode, {role: node}), web-1 {app: shop, role: web}, db-1 {app: shop, role: db}
//	n2: h2 (host mode, {role: node}), web-2 {app: shop, role: web}, bastion-1 {role: bastion} (monitor)
const cluster = `
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: h1, labels: {role: node}}
spec: {node: n1, addresses: [10.0.1.1, "fd00:1::1"]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: web-1, labels: {app: shop, role: web}}
spec: {node: n1, interface: veth-web1, addresses: [10.0.1.10, "fd00:1::10"]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: db-1, labels: {app: shop, role: db}}
spec: {node: n1, interface: veth-db1, addresses: [10.0.1.20, "fd00:1::20"]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: h2, labels: {role: node}}
spec: {node: n2, addresses: [10.0.2.1, "fd00:2::1"]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: web-2, labels: {app: shop, role: web}}
spec: {node: n2, interface: veth-web2, addresses: [10.0.2.10, "fd00:2::10"]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: bastion-1, labels: {role: bastion}}
spec: {node: n2, interface: veth-bast1, addresses: [10.0.2.30], mode: monitor}
`

// policyDoc wraps rules (YAML list items indented by 4) in a Policy.
func policyDoc(name, mode, rules string) string {
	m := ""
	if mode != "" {
		m = "  mode: " + mode + "\n"
	}
	return "\n---\napiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: " + name + "}\nspec:\n" + m + "  rules:\n" + rules
}

// mustCompileNoFail parses input and compiles it, returning the compile
// error instead of failing.
func mustCompileNoFail(t testing.TB, input string) (*policy.Set, error) {
	t.Helper()
	set, diags := policy.ParseAndValidate("test.yaml", []byte(input))
	if set == nil {
		t.Fatalf("invalid test input:\n%v", diags.Err())
	}
	_, err := Compile(set, Options{Validate: true})
	return set, err
}

func mustCompile(t testing.TB, input string) (*policy.Set, *Result) {
	t.Helper()
	set, diags := policy.ParseAndValidate("test.yaml", []byte(input))
	if set == nil {
		t.Fatalf("invalid test input:\n%v", diags.Err())
	}
	res, err := Compile(set, Options{Validate: true})
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return set, res
}

// flow is an expected explain result: verdict and deciding rule overall,
// and optionally at each end ("-" for no end, "" for don't care).
type flow struct {
	from, to, service string
	verdict, rule     string
	src, dst          string // "verdict rule" at each end
}

func checkFlows(t *testing.T, set *policy.Set, res *Result, flows []flow) {
	t.Helper()
	for _, f := range flows {
		name := fmt.Sprintf("%s -> %s %s", f.from, f.to, f.service)
		proto, port, err := ParseService(f.service)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		x, err := Explain(set, res, Query{From: f.from, To: f.to, Protocol: proto, Port: port})
		if err != nil {
			t.Errorf("%s: Explain: %v", name, err)
			continue
		}
		if got := x.Verdict.String() + " " + x.Rule; got != f.verdict+" "+f.rule {
			t.Errorf("%s: %s, want %s %s%s", name, got, f.verdict, f.rule, ends(x))
		}
		for _, c := range []struct {
			want string
			end  *EndDecision
			what string
		}{{f.src, x.Source, "source"}, {f.dst, x.Destination, "destination"}} {
			switch {
			case c.want == "":
			case c.want == "-" && c.end != nil:
				t.Errorf("%s: %s end decided %s, want no end", name, c.what, c.end.Verdict)
			case c.want != "-" && c.end == nil:
				t.Errorf("%s: no %s end, want %s", name, c.what, c.want)
			case c.want != "-" && c.end.Verdict.String()+" "+c.end.RuleName != c.want:
				t.Errorf("%s: %s end %s %s, want %s", name, c.what, c.end.Verdict, c.end.RuleName, c.want)
			}
		}
	}
}

func ends(x *Explanation) string {
	var b strings.Builder
	for _, e := range []*EndDecision{x.Source, x.Destination} {
		if e != nil {
			fmt.Fprintf(&b, "\n\t%s %s on %s: %s %s (peer %d %s)", e.Workload, e.Direction, e.Node, e.Verdict, e.RuleName, e.Peer, e.PeerName)
		}
	}
	return b.String()
}

func countEntries(rs *ruleset.RuleSet, pred func(ruleset.Entry) bool) int {
	n := 0
	for _, e := range rs.Entries {
		if pred(e) {
			n++
		}
	}
	return n
}
