package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
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

// crossNodePolicy: client on node-b may reach web on node-a on 8080. The
// workload "other" on node-a is not in the policy (no programs on it), so
// only node-b's agent drops client -> other: it tells whether node-b
// enforces.
func crossNodePolicy(web, client *topo.Workload) string { return topo.LabPolicy(false, web, client) }

// buildAll builds the controller, egctl and the agent, by binary name.
func buildAll(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	bin := map[string]string{}
	for _, pkg := range []string{"controller/cmd/eastguard-controller", "controller/cmd/egctl", "agent/cmd/eastguard-agent"} {
		bin[filepath.Base(pkg)] = topo.BuildBinary(t, pkg, dir)
	}
	return bin
}

// TestPrivilegedControlPlaneEndToEnd: a controller and two agents as separate
// processes in network namespaces enforce a cross-node policy, follow its
// changes, survive the controller's and their own deaths, enforce their
// last known good rule set when they start without a controller, and are
// cut off by revocation without losing enforcement.
func TestPrivilegedControlPlaneEndToEnd(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := buildAll(t)
	nodeA, nodeB := topo.NewNode(t, "node-a", 1), topo.NewNode(t, "node-b", 2)
	web := nodeA.AddWorkload(t, "web", 1)
	other := nodeA.AddWorkload(t, "other", 2)
	client := nodeB.AddWorkload(t, "client", 3)
	topo.Link(t, nodeA, nodeB)
	web.Listen(t, 8080, 22, 9999)
	other.Listen(t, 8080)
	cp := harness.NewControlPlane(t, bin, t.TempDir(), nodeA, nodeB)
	for _, n := range []*topo.Node{nodeA, nodeB} {
		t.Cleanup(func() {
			if out, err := exec.Command(bin["eastguard-agent"], "--uninstall", "--bpffs-dir", n.BPFFSDir).CombinedOutput(); err != nil {
				t.Errorf("uninstall %s: %v\n%s", n.Name, err, out)
			}
		})
	}

	topo.MustPass(t, "before any agent: client -> other", client.Dial(other.Addr4, 8080, 2*time.Second))

	cp.Start()
	stateDirs := map[*topo.Node]string{nodeA: t.TempDir(), nodeB: t.TempDir()}
	flowLogs := map[*topo.Node]string{nodeA: filepath.Join(t.TempDir(), "flows.jsonl"), nodeB: filepath.Join(t.TempDir(), "flows.jsonl")}
	startAgent := func(n *topo.Node, token string) *topo.Process {
		args := []string{"--node", n.Name, "--controller", cp.Addr(n), "--state-dir", stateDirs[n],
			"--bpffs-dir", n.BPFFSDir, "--log-format", "console", "--flow-log", flowLogs[n], "--metrics-listen", "127.0.0.1:9790"}
		if token != "" {
			args = append(args, "--join-token", token)
		}
		return topo.Start(t, "agent-"+n.Name, n.NS.Nsenter(t.Context(), bin["eastguard-agent"], args...))
	}
	token := func(node string) string {
		out := strings.Split(strings.TrimSpace(cp.MustEgctl("token", "create", "--node", node, "--ttl", "10m")), "\n")
		return out[len(out)-1]
	}
	agentA, agentB := startAgent(nodeA, token("node-a")), startAgent(nodeB, token("node-b"))

	// Apply: both ends enforce the cross-node edge.
	cp.Apply(crossNodePolicy(web, client))
	cp.WaitSynced(1, "node-a", "node-b")
	topo.MustPass(t, "client -> web 8080", client.Dial(web.Addr4, 8080, 2*time.Second))
	topo.MustDrop(t, "client -> web 22", client.Dial(web.Addr4, 22, topo.Quick))
	topo.MustDrop(t, "client -> web 9999", client.Dial(web.Addr4, 9999, topo.Quick))
	topo.MustDrop(t, "client -> other (node-b's egress)", client.Dial(other.Addr4, 8080, topo.Quick))

	// Each agent's flow log names the workload on its own node (the
	// rule set from the controller carries no other workload's address).
	testutil.Eventually(t, 5*time.Second, "flow records naming the local workload", func() error {
		for n, want := range map[*topo.Node]flowRecord{
			nodeA: {Direction: "ingress", DstWorkload: "web", DstPort: 8080, Verdict: "allowed", Rule: "shop/client-to-web"},
			nodeB: {Direction: "egress", SrcWorkload: "client", DstPort: 8080, Verdict: "allowed", Rule: "shop/client-to-web"},
		} {
			if recs := readFlows(t, flowLogs[n]); !found(findFlow(recs, want)) {
				return fmt.Errorf("%s: no record like %+v among:\n%s", n.Name, want, dumpFlows(recs))
			}
		}
		return nil
	})
	// /status's hash is the one egctl agents reports.
	for _, n := range []*topo.Node{nodeA, nodeB} {
		body, err := n.Get("http://127.0.0.1:9790/status")
		var st struct{ Hash, EffectiveHash string }
		if err == nil {
			err = json.Unmarshal([]byte(body), &st)
		}
		rows, aerr := cp.Agents()
		if err != nil || aerr != nil {
			t.Fatalf("%s: /status %v, agents %v", n.Name, err, aerr)
		}
		if st.Hash == "" || st.Hash != rows[n.Name].AppliedHash || st.EffectiveHash == "" {
			t.Errorf("%s: /status hash %q (effective %q), egctl agents appliedHash %q: want hash = appliedHash", n.Name, st.Hash, st.EffectiveHash, rows[n.Name].AppliedHash)
		}
	}

	// Invalid input changes nothing.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte(strings.Replace(testutil.LabExtraPolicy(), "port: 9999", "port: 99999", 1)), 0o644)
	if _, errs, err := cp.Egctl("apply", "-f", bad); err == nil || !strings.Contains(errs, bad+":10:") || !strings.Contains(errs, "99999 is out of range") {
		t.Errorf("invalid apply: %v\n%s", err, errs)
	}
	if rows, err := cp.Agents(); err != nil || rows["node-a"].LatestVersion != 1 || rows["node-b"].LatestVersion != 1 {
		t.Errorf("versions after an invalid apply: %+v %v", rows, err)
	}

	// A change reaches both ends.
	cp.Apply(crossNodePolicy(web, client) + testutil.LabExtraPolicy())
	cp.WaitSynced(2, "node-a", "node-b")
	topo.MustPass(t, "after the change: client -> web 9999", client.Dial(web.Addr4, 9999, 2*time.Second))

	// The controller dies: enforcement continues; it comes back and the
	// agents reconnect by themselves.
	cp.Proc.Kill()
	topo.MustPass(t, "controller down: client -> web 8080", client.Dial(web.Addr4, 8080, 2*time.Second))
	topo.MustDrop(t, "controller down: client -> web 22", client.Dial(web.Addr4, 22, topo.Quick))
	cp.Start()
	cp.WaitSynced(2, "node-a", "node-b")

	// An agent dies: its pins keep enforcing; restarted without a token,
	// it adopts them and reconnects.
	agentA.Kill()
	topo.MustDrop(t, "agent-a down: other -> web 8080 (web's ingress)", other.Dial(web.Addr4, 8080, topo.Quick))
	agentA = startAgent(nodeA, "")
	testutil.Eventually(t, 20*time.Second, "agent-a adopting its pins", func() error {
		if !strings.Contains(agentA.Output(), `"adopted-links": 2`) {
			return errors.New("no adoption logged yet")
		}
		return nil
	})
	cp.WaitSynced(2, "node-a")
	topo.MustDrop(t, "agent-a restarted: client -> web 22", client.Dial(web.Addr4, 22, topo.Quick))

	// An agent starting while the controller is down enforces its last
	// known good rule set, from its state directory: its pins are removed
	// first to prove it.
	cp.Proc.Kill()
	agentB.Kill()
	if out, err := exec.Command(bin["eastguard-agent"], "--uninstall", "--bpffs-dir", nodeB.BPFFSDir).CombinedOutput(); err != nil {
		t.Fatalf("uninstall node-b: %v\n%s", err, out)
	}
	topo.MustPass(t, "node-b uninstalled: client -> other", client.Dial(other.Addr4, 8080, 2*time.Second))
	agentB = startAgent(nodeB, "")
	testutil.Eventually(t, 20*time.Second, "agent-b enforcing its last known good rule set", func() error {
		if agentB.Exited() {
			t.Fatalf("agent-b exited:\n%s", agentB.Output())
		}
		if err := client.Dial(other.Addr4, 8080, 300*time.Millisecond); !errors.Is(err, topo.ErrNoAnswer) {
			return fmt.Errorf("client -> other still answers (%v)", err)
		}
		return nil
	})
	if !strings.Contains(agentB.Output(), "last known good rule set enforced") {
		t.Errorf("agent-b did not log its last known good rule set")
	}
	topo.MustPass(t, "last known good: client -> web 9999", client.Dial(web.Addr4, 9999, 2*time.Second))
	cp.Start()
	cp.WaitSynced(2, "node-a", "node-b")

	// Revocation: the controller cuts node-b off; node-b keeps enforcing.
	cp.MustEgctl("agent", "revoke", "node-b")
	testutil.Eventually(t, 20*time.Second, "node-b listed as revoked", func() error {
		rows, err := cp.Agents()
		if err != nil {
			return err
		}
		if r := rows["node-b"]; r.Connected || !strings.Contains(r.LastError, "revoked") {
			return fmt.Errorf("%+v", r)
		}
		return nil
	})
	testutil.Eventually(t, 10*time.Second, "agent-b logging the revocation", func() error {
		if !strings.Contains(agentB.Output(), "revoked") {
			return errors.New("not yet")
		}
		return nil
	})
	topo.MustDrop(t, "node-b revoked: client -> other", client.Dial(other.Addr4, 8080, topo.Quick))
	topo.MustPass(t, "node-b revoked: client -> web 8080", client.Dial(web.Addr4, 8080, 2*time.Second))
	if rows, _ := cp.Agents(); !rows["node-a"].Connected {
		t.Errorf("node-a lost its stream when node-b was revoked: %+v", rows["node-a"])
	}
}

func found(_ flowRecord, ok bool) bool { return ok }
