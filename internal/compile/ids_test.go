package compile

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/ruleset"
)

func TestAllocateCollisions(t *testing.T) {
	// A range of 8 values for 8 keys forces collisions; the outcome must be
	// a permutation of the range, the same every time.
	keys := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	first := allocate(keys, 100, 107)
	seen := map[uint64]bool{}
	for _, v := range first {
		if v < 100 || v > 107 || seen[v] {
			t.Fatalf("allocate = %v: out of range or duplicate", first)
		}
		seen[v] = true
	}
	for range 5 {
		if again := allocate(keys, 100, 107); !slices.Equal(again, first) {
			t.Fatalf("allocate is not deterministic: %v then %v", first, again)
		}
	}
	// Without a collision a key's value depends on nothing else.
	if allocate([]string{"a"}, 100, 1<<40)[0] != allocate([]string{"a", "zz"}, 100, 1<<40)[0] {
		t.Error("an unrelated key moved a's value")
	}
}

// TestAllocateSkipsReserved: a reserved value is never given out, and only
// the key that would have got it moves.
func TestAllocateSkipsReserved(t *testing.T) {
	keys := []string{"a", "b", "c", "d", "e", "f", "g"}
	for r := uint64(100); r <= 107; r++ {
		got := allocate(keys, 100, 107, r)
		if slices.Contains(got, r) || len(slices.Compact(slices.Sorted(slices.Values(got)))) != len(keys) {
			t.Fatalf("reserving %d: %v", r, got)
		}
	}
	keys = []string{"a", "zz"}
	free := allocate(keys, 100, 1<<40)
	got := allocate(keys, 100, 1<<40, free[0])
	if got[0] == free[0] || got[1] != free[1] {
		t.Errorf("reserving a's value %d: %v, want only a moved (was %v)", free[0], got, free)
	}
	// The failsafe's rule id is reserved for rule names.
	if ids := ruleIDs([]string{"p/r"}); ids[0] == ruleset.RuleFailsafe || ids[0] == ruleset.RuleDefaultDeny {
		t.Errorf("rule id %d is reserved", ids[0])
	}
}

// TestIDsStableAcrossUnrelatedEdits: adding a workload, a label set and a
// rule renumbers no existing identity, endpoint or rule.
func TestIDsStableAcrossUnrelatedEdits(t *testing.T) {
	_, before := mustCompile(t, truthInput)
	edited := truthInput + `
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: aaa-new, labels: {app: brand-new}}
spec: {node: n1, interface: veth-new, addresses: [10.1.0.99]}
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: aaa}
spec:
  rules:
    - {name: new, from: [{selector: {app: brand-new}}], to: [{selector: {role: db}}], ports: [{port: 1}]}
`
	_, after := mustCompile(t, edited)
	for _, n := range before.Nodes {
		b, a := before.RuleSets[n], after.RuleSets[n]
		for _, ep := range b.Endpoints {
			i := slices.IndexFunc(a.Endpoints, func(e ruleset.Endpoint) bool { return e.Workload == ep.Workload })
			if i < 0 || !a.Endpoints[i].Equal(ep) {
				t.Errorf("%s: endpoint of %s changed: %+v", n, ep.Workload, ep)
			}
		}
		for _, c := range b.IPCache {
			if ResolveAddr(a, c.Prefix.Addr()) != c.Identity && c.Prefix.IsSingleIP() {
				t.Errorf("%s: identity of %s changed", n, c.Prefix)
			}
		}
		for _, r := range b.Rules {
			i := slices.IndexFunc(a.Rules, func(x ruleset.RuleName) bool { return x.Name == r.Name })
			if i >= 0 && a.Rules[i].ID != r.ID {
				t.Errorf("%s: rule id of %s changed", n, r.Name)
			}
		}
	}
}

// TestTooManyPortRanges: the datapath holds 32 disjoint port ranges per
// peer and protocol; more fail at compile time, naming node, workloads and
// the rules with ranges.
func TestTooManyPortRanges(t *testing.T) {
	var ports []string
	for i := range ruleset.MaxIntervals + 1 {
		ports = append(ports, fmt.Sprintf("{port: %d, endPort: %d}", 1000+10*i, 1002+10*i))
	}
	set, _ := mustCompileNoFail(t, cluster+policyDoc("p", "", "    - {name: many, from: [{selector: {role: web}}], to: [{selector: {role: db}}], ports: ["+strings.Join(ports, ", ")+"]}\n"))
	_, err := Compile(set, Options{})
	if err == nil {
		t.Fatal("33 disjoint ranges compiled")
	}
	for _, want := range []string{"node n1: endpoint ", "33 disjoint port ranges, the datapath holds at most 32 per peer and protocol", "=db-1", "rules with port ranges: [p/many]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
