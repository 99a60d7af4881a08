package policyrepo_test

import (
	"fmt"
	"testing"

	"github.com/eastguard/eastguard/controller/controllertest"
)

// TestSharedIPCacheAcrossRestart: a node's ipcache is stored apart under
// its hash; a version that keeps its node's ipcache refers to the same
// key, and one that changes it to another; the
// rule sets read back after a restart (the ipcache part and the node's
// own, merged) are the versions committed, hash for hash.
func TestSharedIPCacheAcrossRestart(t *testing.T) {
	h := controllertest.New(t)
	workloads := ""
	for i, app := range []string{"a", "a", "b", "c"} {
		workloads += fmt.Sprintf("apiVersion: eastguard.dev/v1\nkind: Workload\nmetadata: {name: w%d, labels: {app: %s}}\n"+
			"spec: {node: node-%d, interface: eg-w%d, addresses: [10.0.0.%d]}\n---\n", i, app, i, i, i+1)
	}
	policy := func(port int, to string) string {
		return fmt.Sprintf("apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  rules:\n"+
			"    - name: r\n      from: [{selector: {app: %s}}]\n      to: [{selector: {app: a}}]\n      ports: [{protocol: TCP, port: %d}]\n", to, port)
	}
	h.Apply(workloads + policy(80, "b"))
	n0 := h.Srv.Nodes.Latest("node-0")
	if n0.Shared == "" || len(n0.RuleSet.IPCache) == 0 {
		t.Fatalf("node-0's ipcache %v stored under key %q, want a key", n0.RuleSet.IPCache, n0.Shared)
	}
	// A new port keeps every ipcache: the same key.
	h.Apply(policy(81, "b"))
	if v := h.Srv.Nodes.Latest("node-0"); v.Num == n0.Num || v.Shared != n0.Shared {
		t.Fatalf("node-0 after a port change: version %d key %q, want a new version with key %q", v.Num, v.Shared, n0.Shared)
	}
	// Another peer app: another ipcache, another key.
	h.Apply(policy(81, "c"))
	changed := h.Srv.Nodes.Latest("node-0")
	if changed.Shared == "" || changed.Shared == n0.Shared {
		t.Fatalf("node-0 after its peers changed: key %q, want a new one (was %q)", changed.Shared, n0.Shared)
	}
	before := map[string][2]any{}
	for i := range 4 {
		v := h.Srv.Nodes.Latest(fmt.Sprint("node-", i))
		before[v.RuleSet.Node] = [2]any{v.Num, v.Hash}
	}
	h.Restart()
	for node, want := range before {
		v := h.Srv.Nodes.Latest(node)
		if v == nil || v.Num != want[0] || v.Hash != want[1] || v.RuleSet.Hash() != v.Hash {
			t.Fatalf("%s after a restart: %+v, want version %v hash %v, its rule set hashing to it", node, v, want[0], want[1])
		}
	}
	if v := h.Srv.Nodes.Latest("node-0"); v.Shared != changed.Shared || len(v.RuleSet.IPCache) != len(changed.RuleSet.IPCache) {
		t.Fatalf("node-0 after a restart: key %q, %d ipcache entries; want %q, %d", v.Shared, len(v.RuleSet.IPCache), changed.Shared, len(changed.RuleSet.IPCache))
	}
}
