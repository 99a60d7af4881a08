package e2e

import (
	"bytes"
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
	"github.com/eastguard/eastguard/internal/testutil/netns"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// crossNodePolicy: client on node-b may reach web on node-a on 8080. The
// workload "other" on node-a is not in the policy (no programs on it), so
// only node-b's agent drops client -> other: it tells whether node-b
// enforces.
func crossNodePolicy(web, client *topo.Workload) string { return topo.LabPolicy(false, web, client) }

// agentRow is the part of `egctl agents -o json` this test reads.
type agentRow struct {
	Node           string `json:"node"`
	Connected      bool   `json:"connected"`
	AppliedVersion uint64 `json:"appliedVersion"`
	LatestVersion  uint64 `json:"latestVersion"`
	LastError      string `json:"lastError"`
	AppliedHash    string `json:"appliedHash"`
}

// controlPlane is a controller in its own namespace, linked to each node
// by a veth pair: node i reaches it at 10.250.240.(4i-3).
type controlPlane struct {
	t       *testing.T
	ns      *netns.NS
	bin     map[string]string
	dataDir string
	proc    *topo.Process
	// env and args are added to the controller's environment and flags.
	env  []string
	args []string
}

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

func newControlPlane(t *testing.T, bin map[string]string, nodes ...*topo.Node) *controlPlane {
	t.Helper()
	cp := &controlPlane{t: t, ns: netns.New(t, "ctl"), bin: bin, dataDir: t.TempDir()}
	for _, n := range nodes {
		ctlSide, nodeSide := fmt.Sprintf("eg-c%d", n.Index), "eg-ctl"
		netns.Veth(t, cp.ns, ctlSide, n.NS, nodeSide)
		base := 4*n.Index - 4
		cp.ns.IP(t, "addr", "add", fmt.Sprintf("10.250.240.%d/30", base+1), "dev", ctlSide)
		n.NS.IP(t, "addr", "add", fmt.Sprintf("10.250.240.%d/30", base+2), "dev", nodeSide)
	}
	return cp
}

// addr is the controller's gRPC address as node n reaches it.
func (cp *controlPlane) addr(n *topo.Node) string {
	return fmt.Sprintf("10.250.240.%d:7443", 4*n.Index-3)
}

func (cp *controlPlane) start() {
	cp.t.Helper()
	cmd := cp.ns.Nsenter(cp.t.Context(), cp.bin["eastguard-controller"], append([]string{"--data-dir", cp.dataDir,
		"--grpc-listen", ":7443", "--http-listen", "127.0.0.1:8080", "--log-format", "console"}, cp.args...)...)
	cmd.Env = append(os.Environ(), cp.env...)
	cp.proc = topo.Start(cp.t, "controller", cmd)
	testutil.Eventually(cp.t, 20*time.Second, "the controller to serve", func() error {
		if cp.proc.Exited() {
			cp.t.Fatalf("controller exited:\n%s", cp.proc.Output())
		}
		_, _, err := cp.egctl("agents")
		return err
	})
}

// egctl runs egctl in the controller's namespace with its admin.conf.
func (cp *controlPlane) egctl(args ...string) (stdout, stderr string, err error) {
	cmd := cp.ns.Nsenter(cp.t.Context(), cp.bin["egctl"], args...)
	cmd.Env = append(os.Environ(), "EGCTL_CONFIG="+filepath.Join(cp.dataDir, "admin.conf"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

func (cp *controlPlane) mustEgctl(args ...string) string {
	cp.t.Helper()
	out, errs, err := cp.egctl(args...)
	if err != nil {
		cp.t.Fatalf("egctl %s: %v\n%s%s", strings.Join(args, " "), err, out, errs)
	}
	return out
}

func (cp *controlPlane) agents() (map[string]agentRow, error) {
	out, errs, err := cp.egctl("agents", "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("egctl agents: %v: %s", err, errs)
	}
	var rows []agentRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		return nil, err
	}
	m := make(map[string]agentRow, len(rows))
	for _, r := range rows {
		m[r.Node] = r
	}
	return m, nil
}

// waitSynced waits until every node's agent is connected and has applied
// the latest version (at least minVersion).
func (cp *controlPlane) waitSynced(minVersion uint64, nodes ...string) {
	cp.t.Helper()
	testutil.Eventually(cp.t, 30*time.Second, "agents in sync", func() error {
		rows, err := cp.agents()
		if err != nil {
			return err
		}
		for _, n := range nodes {
			r := rows[n]
			if !r.Connected || r.AppliedVersion < minVersion || r.AppliedVersion != r.LatestVersion {
				return fmt.Errorf("%s: %+v", n, r)
			}
		}
		return nil
	})
}

func (cp *controlPlane) apply(t *testing.T, policy string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	cp.mustEgctl("apply", "-f", f)
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
	cp := newControlPlane(t, bin, nodeA, nodeB)
	for _, n := range []*topo.Node{nodeA, nodeB} {
		t.Cleanup(func() {
			if out, err := exec.Command(bin["eastguard-agent"], "--uninstall", "--bpffs-dir", n.BPFFSDir).CombinedOutput(); err != nil {
				t.Errorf("uninstall %s: %v\n%s", n.Name, err, out)
			}
		})
	}

	topo.MustPass(t, "before any agent: client -> other", client.Dial(other.Addr4, 8080, 2*time.Second))

	cp.start()
	stateDirs := map[*topo.Node]string{nodeA: t.TempDir(), nodeB: t.TempDir()}
	flowLogs := map[*topo.Node]string{nodeA: filepath.Join(t.TempDir(), "flows.jsonl"), nodeB: filepath.Join(t.TempDir(), "flows.jsonl")}
	startAgent := func(n *topo.Node, token string) *topo.Process {
		args := []string{"--node", n.Name, "--controller", cp.addr(n), "--state-dir", stateDirs[n],
			"--bpffs-dir", n.BPFFSDir, "--log-format", "console", "--flow-log", flowLogs[n], "--metrics-listen", "127.0.0.1:9790"}
		if token != "" {
			args = append(args, "--join-token", token)
		}
		return topo.Start(t, "agent-"+n.Name, n.NS.Nsenter(t.Context(), bin["eastguard-agent"], args...))
	}
	token := func(node string) string {
		out := strings.Split(strings.TrimSpace(cp.mustEgctl("token", "create", "--node", node, "--ttl", "10m")), "\n")
		return out[len(out)-1]
	}
	agentA, agentB := startAgent(nodeA, token("node-a")), startAgent(nodeB, token("node-b"))

	// Apply: both ends enforce the cross-node edge.
	cp.apply(t, crossNodePolicy(web, client))
	cp.waitSynced(1, "node-a", "node-b")
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
		rows, aerr := cp.agents()
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
	if _, errs, err := cp.egctl("apply", "-f", bad); err == nil || !strings.Contains(errs, bad+":10:") || !strings.Contains(errs, "99999 is out of range") {
		t.Errorf("invalid apply: %v\n%s", err, errs)
	}
	if rows, err := cp.agents(); err != nil || rows["node-a"].LatestVersion != 1 || rows["node-b"].LatestVersion != 1 {
		t.Errorf("versions after an invalid apply: %+v %v", rows, err)
	}

	// A change reaches both ends.
	cp.apply(t, crossNodePolicy(web, client)+testutil.LabExtraPolicy())
	cp.waitSynced(2, "node-a", "node-b")
	topo.MustPass(t, "after the change: client -> web 9999", client.Dial(web.Addr4, 9999, 2*time.Second))

	// The controller dies: enforcement continues; it comes back and the
	// agents reconnect by themselves.
	cp.proc.Kill()
	topo.MustPass(t, "controller down: client -> web 8080", client.Dial(web.Addr4, 8080, 2*time.Second))
	topo.MustDrop(t, "controller down: client -> web 22", client.Dial(web.Addr4, 22, topo.Quick))
	cp.start()
	cp.waitSynced(2, "node-a", "node-b")

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
	cp.waitSynced(2, "node-a")
	topo.MustDrop(t, "agent-a restarted: client -> web 22", client.Dial(web.Addr4, 22, topo.Quick))

	// An agent starting while the controller is down enforces its last
	// known good rule set, from its state directory: its pins are removed
	// first to prove it.
	cp.proc.Kill()
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
	cp.start()
	cp.waitSynced(2, "node-a", "node-b")

	// Revocation: the controller cuts node-b off; node-b keeps enforcing.
	cp.mustEgctl("agent", "revoke", "node-b")
	testutil.Eventually(t, 20*time.Second, "node-b listed as revoked", func() error {
		rows, err := cp.agents()
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
	if rows, _ := cp.agents(); !rows["node-a"].Connected {
		t.Errorf("node-a lost its stream when node-b was revoked: %+v", rows["node-a"])
	}
}

func found(_ flowRecord, ok bool) bool { return ok }
