package compile

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// TestAutoInterface: several workloads of one node may say interface: auto
// (each resolves to its own interface on the node); their endpoints carry
// their addresses, sorted, and endpoints with a named interface carry none.
func TestAutoInterface(t *testing.T) {
	const input = `apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: a, labels: {app: a}}
spec: {node: n1, interface: auto, addresses: [fd0e::1, 10.250.1.2]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: b, labels: {app: b}}
spec: {node: n1, interface: auto, addresses: [10.250.1.3]}
---
apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: c, labels: {app: c}}
spec: {node: n1, interface: veth-c, addresses: [10.250.1.4]}
`
	_, res := mustCompile(t, input)
	rs := res.RuleSets["n1"]
	if err := rs.Validate(); err != nil {
		t.Fatal(err)
	}
	want := map[string][]netip.Addr{
		"a": {netip.MustParseAddr("10.250.1.2"), netip.MustParseAddr("fd0e::1")},
		"b": {netip.MustParseAddr("10.250.1.3")},
		"c": nil,
	}
	for _, e := range rs.Endpoints {
		if !slices.Equal(e.Addresses, want[e.Workload]) {
			t.Errorf("endpoint %s: addresses %v, want %v", e.Workload, e.Addresses, want[e.Workload])
		}
		if auto := want[e.Workload] != nil; e.Auto() != auto || (auto && e.Interface != ruleset.InterfaceAuto) {
			t.Errorf("endpoint %s: interface %q", e.Workload, e.Interface)
		}
	}
	if len(rs.Endpoints) != 3 {
		t.Fatalf("endpoints: %+v", rs.Endpoints)
	}
}
