package e2e

import (
	"encoding/json"
	"errors"
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
	"github.com/eastguard/eastguard/test/harness"
)

// hostModePolicy makes node-a a host-mode workload whose policy lets in
// SSH and lets out nothing: by the policy alone, the node cannot reach its
// controller.
const hostModePolicy = `apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: node-a-host, labels: {role: node}}
spec: {node: node-a, addresses: [10.250.240.2]}
---
apiVersion: eastguard.dev/v1
kind: Policy
metadata: {name: nodes}
spec:
  rules:
    - {name: ssh-in, from: [{world: true}], to: [{selector: {role: node}}], ports: [{port: 22}]}
`

// TestPrivilegedFailsafeKeepsAgentConnected: applying a host-mode workload
// whose policy does not allow the controller leaves the agent connected
// (its control connection passes by failsafe/control-plane, named so in
// the flow records and /status) while the rest of the node's traffic to
// the controller's host is denied; deleting the workload reaches the agent.
// Then --reset-state forgets the last known good rule set and keeps the
// node's credentials: the agent reconnects without a token.
func TestPrivilegedFailsafeKeepsAgentConnected(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := buildAll(t)
	nodeA := topo.NewNode(t, "node-a", 1)
	web := nodeA.AddWorkload(t, "web", 1)
	cp := harness.NewControlPlane(t, bin, t.TempDir(), nodeA)
	t.Cleanup(func() {
		if out, err := exec.Command(bin["eastguard-agent"], "--uninstall", "--bpffs-dir", nodeA.BPFFSDir).CombinedOutput(); err != nil {
			t.Errorf("uninstall: %v\n%s", err, out)
		}
	})
	// Something else on the controller's host for the node to reach.
	ctlHost := &topo.Workload{Name: "controller-host", NS: cp.NS}
	ctlHost.Listen(t, 9000)
	ctlAddr := netip.MustParseAddr("10.250.240.1")

	cp.Start()
	stateDir, flowLog := t.TempDir(), filepath.Join(t.TempDir(), "flows.jsonl")
	startAgent := func(token string) *topo.Process {
		args := []string{"--node", "node-a", "--controller", cp.Addr(nodeA), "--state-dir", stateDir,
			"--bpffs-dir", nodeA.BPFFSDir, "--flow-log", flowLog, "--metrics-listen", "127.0.0.1:9790", "--log-format", "console"}
		if token != "" {
			args = append(args, "--join-token", token)
		}
		return topo.Start(t, "agent-node-a", nodeA.NS.Nsenter(t.Context(), bin["eastguard-agent"], args...))
	}
	out := strings.Split(strings.TrimSpace(cp.MustEgctl("token", "create", "--node", "node-a", "--ttl", "10m")), "\n")
	agent := startAgent(out[len(out)-1])

	cp.Apply(topo.LabPolicy(false, web))
	cp.WaitSynced(1, "node-a")
	topo.MustPass(t, "no host-mode workload: node -> controller host 9000", nodeA.Dial(ctlAddr, 9000, 2*time.Second))

	// The host-mode workload: the node's own traffic is enforced, its
	// policy allows nothing out, and the agent stays connected.
	cp.Apply(hostModePolicy)
	cp.WaitSynced(2, "node-a")
	topo.MustDrop(t, "host mode: node -> controller host 9000", nodeA.Dial(ctlAddr, 9000, topo.Quick))
	testutil.Eventually(t, 10*time.Second, "the agent's /status showing the failsafe", func() error {
		body, err := nodeA.Get("http://127.0.0.1:9790/status")
		if err != nil {
			return err
		}
		var st struct {
			Version  uint64 `json:"version"`
			Failsafe struct {
				Rule       string   `json:"rule"`
				Controller []string `json:"controller"`
				Enforced   bool     `json:"enforced"`
			} `json:"failsafe"`
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return err
		}
		if st.Version != 2 || !st.Failsafe.Enforced || st.Failsafe.Rule != "failsafe/control-plane" ||
			len(st.Failsafe.Controller) != 1 || st.Failsafe.Controller[0] != cp.Addr(nodeA) {
			return fmt.Errorf("status: %s", body)
		}
		return nil
	})
	// The control connection is reported as the failsafe's, by the agent
	// and by the controller.
	testutil.Eventually(t, 10*time.Second, "a flow record of the control connection", func() error {
		b, err := os.ReadFile(flowLog)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, `"rule":"failsafe/control-plane"`) && strings.Contains(line, `"dstAddr":"10.250.240.1","dstPort":7443`) &&
				strings.Contains(line, `"verdict":"allowed"`) {
				return nil
			}
		}
		return errors.New("none in the flow log yet")
	})
	testutil.Eventually(t, 10*time.Second, "the controller storing the failsafe's flow", func() error {
		out, errs, err := cp.Egctl("flows", "--rule", "failsafe/control-plane", "--node", "node-a", "-o", "json")
		if err != nil {
			return fmt.Errorf("egctl flows: %v: %s", err, errs)
		}
		var rows []struct {
			Rule    string `json:"rule"`
			DstPort uint16 `json:"dstPort"`
		}
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			return err
		}
		if len(rows) == 0 || rows[0].Rule != "failsafe/control-plane" || rows[0].DstPort != 7443 {
			return fmt.Errorf("flows: %s", out)
		}
		return nil
	})

	// Deleting the workload reaches the agent: the node is free again.
	cp.MustEgctl("delete", "workload", "node-a-host")
	cp.WaitSynced(3, "node-a")
	topo.MustPass(t, "host-mode workload deleted: node -> controller host 9000", nodeA.Dial(ctlAddr, 9000, 2*time.Second))

	// --reset-state: the saved rule set goes, the credentials stay; the
	// agent restarted without a token takes the newest rule set again.
	if err := agent.Stop(10 * time.Second); err != nil {
		t.Fatalf("stop the agent: %v", err)
	}
	if out, err := exec.Command(bin["eastguard-agent"], "--reset-state", "--state-dir", stateDir, "--bpffs-dir", nodeA.BPFFSDir).CombinedOutput(); err != nil {
		t.Fatalf("--reset-state: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "ruleset.json")); !os.IsNotExist(err) {
		t.Errorf("ruleset.json after --reset-state: %v", err)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "node.pem")); err != nil {
		t.Errorf("node.pem after --reset-state: %v", err)
	}
	agent = startAgent("")
	cp.WaitSynced(3, "node-a")
	if !strings.Contains(agent.Output(), "no saved rule set") {
		t.Errorf("the restarted agent did not start without a saved rule set:\n%s", agent.Output())
	}
}
