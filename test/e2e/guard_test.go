package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// TestPrivilegedAgentGuardsUnclaimedVeths: a real agent with
// --guard-interfaces matching every workload veth of the node. The
// workloads its policy names keep their policy (an endpoint always wins
// over the guard); a pod no policy knows yet is denied both ways, its
// attempts reach the flow log as denied by default-deny, and the agent's
// metrics count one guarded interface.
func TestPrivilegedAgentGuardsUnclaimedVeths(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := topo.BuildBinary(t, "agent/cmd/eastguard-agent", t.TempDir())
	node := topo.NewNode(t, "node-a", 1)
	web := node.AddWorkload(t, "web", 1)
	db := node.AddWorkload(t, "db", 2)
	client := node.AddWorkload(t, "client", 3)
	pod := node.AddWorkload(t, "pod", 4) // eg1-pod: in no policy
	web.Listen(t, 8080, 22)
	pod.Listen(t, 8080)
	node.Listen(t, 8080)

	policyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(policyDir, "shop.yaml"), []byte(topo.LabPolicy(true, web, db, client)), 0o644); err != nil {
		t.Fatal(err)
	}
	flowLog := filepath.Join(t.TempDir(), "flows.jsonl")
	cmd := node.NS.Nsenter(t.Context(), bin, "--node", "node-a", "--policy-dir", policyDir,
		"--bpffs-dir", node.BPFFSDir, "--state-dir", t.TempDir(), "--flow-log", flowLog, "--log-format", "console",
		"--metrics-listen", "127.0.0.1:9790", "--guard-interfaces", "eg1-*")
	t.Cleanup(func() {
		if out, err := exec.Command(bin, "--uninstall", "--bpffs-dir", node.BPFFSDir).CombinedOutput(); err != nil {
			t.Errorf("uninstall: %v\n%s", err, out)
		}
	})
	topo.MustPass(t, "node -> pod tcp/8080 before the agent", node.Dial(pod.Addr4, 8080, 3*time.Second))
	agent := topo.Start(t, "agent", cmd)
	waitEnforcing(t, agent, client, web)

	topo.MustPass(t, "client -> web tcp/8080 (its policy)", client.Dial(web.Addr4, 8080, 3*time.Second))
	topo.MustDrop(t, "node -> guarded pod tcp/8080", node.Dial(pod.Addr4, 8080, topo.Quick))
	topo.MustDrop(t, "node -> guarded pod tcp/8080 v6", node.Dial(pod.Addr6, 8080, topo.Quick))
	gw := netip.AddrFrom4([4]byte{10, 250, 16*1 + 4, 1}) // the node's address on the pod's veth (topo)
	topo.MustDrop(t, "guarded pod -> node tcp/8080", pod.Dial(gw, 8080, topo.Quick))
	topo.MustDrop(t, "guarded pod -> web tcp/8080", pod.Dial(web.Addr4, 8080, topo.Quick))

	testutil.Eventually(t, 5*time.Second, "the guard's denied records and metric", func() error {
		recs := readFlows(t, flowLog)
		want := flowRecord{Direction: "ingress", DstAddr: pod.Addr4.String(), DstPort: 8080, Verdict: "denied", Rule: "default-deny"}
		if _, ok := findFlow(recs, want); !ok {
			return fmt.Errorf("no record like %+v among:\n%s", want, dumpFlows(recs))
		}
		m, err := node.Get("http://127.0.0.1:9790/metrics")
		if err != nil {
			return err
		}
		if !strings.Contains(m, "eastguard_agent_guarded_interfaces 1\n") {
			return fmt.Errorf("/metrics: guarded interfaces %v, want 1", metricValue(m, "eastguard_agent_guarded_interfaces"))
		}
		// Veths appearing, guarded and claimed are the agent's own
		// doing: none of it is drift.
		for _, kind := range []string{"link-detached", "prog-replaced", "prog-preceded", "state-modified", "map-replaced", "map-modified", "pin-removed"} {
			name := `eastguard_agent_datapath_drift_total{kind="` + kind + `"}`
			if !strings.Contains(m, name+" 0\n") {
				t.Fatalf("/metrics: %s is %v, want 0", name, metricValue(m, name))
			}
		}
		return nil
	})
}
