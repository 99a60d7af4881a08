package e2e

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
	"github.com/eastguard/eastguard/test/harness"
)

// tamperEnv is two nodes (web on node-a, client on node-b) with agents
// joined to a controller whose webhook receiver checks signatures.
type tamperEnv struct {
	cp           *harness.ControlPlane
	rc           *harness.Receiver
	nodeA, nodeB *topo.Node
	web, client  *topo.Workload
	agentA       *topo.Process
}

func newTamperEnv(t *testing.T, controllerArgs ...string) *tamperEnv {
	t.Helper()
	testutil.RequirePrivileged(t)
	bin := buildAll(t)
	e := &tamperEnv{nodeA: topo.NewNode(t, "node-a", 1), nodeB: topo.NewNode(t, "node-b", 2)}
	e.web = e.nodeA.AddWorkload(t, "web", 1)
	e.client = e.nodeB.AddWorkload(t, "client", 3)
	topo.Link(t, e.nodeA, e.nodeB)
	e.web.Listen(t, 8080)
	e.cp = harness.NewControlPlane(t, bin, t.TempDir(), e.nodeA, e.nodeB)
	e.cp.Env = []string{"EASTGUARD_WEBHOOK_SECRET=" + webhookSecret}
	e.cp.Args = append(append(e.cp.Args, "--webhook-allow-private"), controllerArgs...)
	for _, n := range []*topo.Node{e.nodeA, e.nodeB} {
		t.Cleanup(func() {
			if out, err := exec.Command(bin["eastguard-agent"], "--uninstall", "--bpffs-dir", n.BPFFSDir).CombinedOutput(); err != nil {
				t.Errorf("uninstall %s: %v\n%s", n.Name, err, out)
			}
		})
	}
	e.rc = harness.NewReceiver([]byte(webhookSecret))
	hookURL := e.cp.ServeWebhook(e.rc)
	e.cp.Start()
	for _, n := range []*topo.Node{e.nodeA, e.nodeB} {
		out := strings.Split(strings.TrimSpace(e.cp.MustEgctl("token", "create", "--node", n.Name, "--ttl", "10m")), "\n")
		p := topo.Start(t, "agent-"+n.Name, n.NS.Nsenter(t.Context(), bin["eastguard-agent"], "--node", n.Name,
			"--controller", e.cp.Addr(n), "--join-token", out[len(out)-1], "--state-dir", t.TempDir(),
			"--bpffs-dir", n.BPFFSDir, "--log-format", "console", "--metrics-listen", "127.0.0.1:9790"))
		if n == e.nodeA {
			e.agentA = p
		}
	}
	e.cp.Apply(crossNodePolicy(e.web, e.client) + "---\n" + testutil.SSHAlertPolicy(hookURL, ""))
	e.cp.WaitSynced(1, "node-a", "node-b")
	return e
}

// waitNodeAlert waits for the signed firing alert of rule and destination
// (a kind) at the webhook, and returns it.
func (e *tamperEnv) waitNodeAlert(t *testing.T, rule, kind string) harness.Received {
	t.Helper()
	var got harness.Received
	testutil.Eventually(t, 90*time.Second, "the "+rule+" alert ("+kind+") at the webhook", func() error {
		rs, errs := e.rc.Requests()
		if len(errs) > 0 {
			t.Fatalf("webhook requests that do not verify or parse: %v", errs)
		}
		for _, r := range rs {
			if r.Payload.Alert.Rule == rule && r.Payload.Alert.Destination.Name == kind {
				got = r
				return nil
			}
		}
		return fmt.Errorf("not among %d requests", len(rs))
	})
	return got
}

// TestPrivilegedDatapathTamperRepairedAndAlerted plays a root attacker on
// node-a while its agent runs with a controller: it detaches the tcx
// link of web's interface by id (what `bpftool link detach` does) and
// rewrites the policy map entry that allows client -> web:8080 into a
// deny, in the active generation, through the pins. The agent puts both
// back (the measured times are logged: the check runs every second),
// counts them in eastguard_agent_datapath_drift_total, and the controller
// sends the signed datapath-tampered alert, one per kind, to the webhook.
func TestPrivilegedDatapathTamperRepairedAndAlerted(t *testing.T) {
	e := newTamperEnv(t)
	nodeA, web, client := e.nodeA, e.web, e.client
	topo.MustPass(t, "client -> web:8080 before tampering", client.Dial(web.Addr4, 8080, 2*time.Second))

	// The attacker: web's ingress link detached...
	var ifindex int
	var programs func() ([]ebpf.ProgramID, link.ID, error)
	if err := nodeA.NS.Do(func() error {
		ifi, err := net.InterfaceByName(web.HostIface)
		if err != nil {
			return err
		}
		ifindex = ifi.Index
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	programs = func() ([]ebpf.ProgramID, link.ID, error) {
		var ids []ebpf.ProgramID
		var ingressLink link.ID
		err := nodeA.NS.Do(func() error {
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
				if err != nil {
					return err
				}
				for _, p := range res.Programs {
					ids = append(ids, p.ID)
					if id, ok := p.LinkID(); ok && at == ebpf.AttachTCXIngress {
						ingressLink = id
					}
				}
			}
			return nil
		})
		return ids, ingressLink, err
	}
	before, ingressLink, err := programs()
	if err != nil || len(before) != 2 || ingressLink == 0 {
		t.Fatalf("programs on %s: %v, ingress link %d, %v", web.HostIface, before, ingressLink, err)
	}
	// ... and the policy entry of client -> web:8080 (web's ingress)
	// turned into a deny.
	policy, key, allowed := policyEntry(t, nodeA.BPFFSDir, 8080)
	denied := slices.Clone(allowed)
	denied[4] = uint8(ruleset.VerdictDenied)
	l, err := link.NewFromID(ingressLink)
	if err != nil {
		t.Fatal(err)
	}
	detached := time.Now()
	if err := l.Detach(); err != nil {
		t.Fatalf("detach link %d: %v", ingressLink, err)
	}
	l.Close()
	if err := policy.Update(key, denied, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	rewritten := time.Now()

	var linkBack, entryBack time.Duration
	testutil.Eventually(t, 30*time.Second, "the link and the policy entry repaired", func() error {
		if linkBack == 0 {
			ids, _, err := programs()
			if err != nil {
				return err
			}
			if len(ids) == 2 {
				linkBack = time.Since(detached)
			}
		}
		if entryBack == 0 {
			var v []byte
			if err := policy.Lookup(key, &v); err != nil {
				return err
			}
			if slices.Equal(v, allowed) {
				entryBack = time.Since(rewritten)
			}
		}
		if linkBack == 0 || entryBack == 0 {
			return fmt.Errorf("link back after %v, entry back after %v (0: not yet)", linkBack, entryBack)
		}
		return nil
	})
	t.Logf("detached link re-attached %v after the detach; policy entry rewritten %v after the change (check every 1s)", linkBack, entryBack)
	topo.MustPass(t, "client -> web:8080 after the repair", client.Dial(web.Addr4, 8080, 2*time.Second))

	testutil.Eventually(t, 15*time.Second, "the drift counted", func() error {
		m, err := nodeA.Get("http://127.0.0.1:9790/metrics")
		if err != nil {
			return err
		}
		for _, kind := range []string{"link-detached", "map-modified"} {
			if v := metricValue(m, `eastguard_agent_datapath_drift_total{kind="`+kind+`"}`); v < 1 {
				return fmt.Errorf("drift of kind %s counted %v times", kind, v)
			}
		}
		return nil
	})

	// One signed, critical alert per kind at the webhook, saying repaired.
	for _, kind := range []string{"link-detached", "map-modified"} {
		r := e.waitNodeAlert(t, "datapath-tampered", kind)
		a := r.Payload.Alert
		if r.Payload.Event != "firing" || a.Severity != "critical" || a.Node != "node-a" || a.Source.Name != "node-a" || a.Verdict != "repaired" {
			t.Errorf("alert for %s: %+v", kind, r.Payload)
		}
		t.Logf("%s alert at the webhook %v after the tampering", kind, r.At.Sub(detached))
	}
}

// TestPrivilegedSilentAgentAlerted: node-a's agent frozen (SIGSTOP), its
// connection stays up (the kernel keeps the socket) but it sends
// nothing; the controller (heartbeat 1s) closes the stream once it has
// been silent for three of the agent's heartbeats (10 s) and one of its
// own, and the signed agent-silent alert reaches the webhook.
func TestPrivilegedSilentAgentAlerted(t *testing.T) {
	e := newTamperEnv(t, "--heartbeat", "1s")
	pid := e.agentA.Cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	r := e.waitNodeAlert(t, "agent-silent", "silent")
	a := r.Payload.Alert
	if r.Payload.Event != "firing" || a.Severity != "critical" || a.Node != "node-a" || a.Source.Name != "node-a" ||
		a.Verdict != "stream closed" || !strings.Contains(a.Decider, "no message from the agent") {
		t.Errorf("alert: %+v", r.Payload)
	}
	t.Logf("agent-silent alert at the webhook %v after the agent was frozen", r.At.Sub(stopped))
	if rs, _ := e.rc.Requests(); slices.ContainsFunc(rs, func(r harness.Received) bool { return r.Payload.Alert.Node == "node-b" }) {
		t.Errorf("an alert for node-b, whose agent runs: %+v", rs)
	}
}

// policyEntry opens the active generation's policy map of the agent
// pinned under dir, from its pins as an attacker would, and finds web's
// ingress entry allowing TCP to port: the map, the key and the value, as
// bytes (struct eg_policy_key: endpoint u32, peer u32, direction u8,
// protocol u8, port u16; eg_policy_value: rule u32, verdict u8, pad).
func policyEntry(t *testing.T, dir string, port uint16) (*ebpf.Map, []byte, []byte) {
	t.Helper()
	state, err := ebpf.LoadPinnedMap(filepath.Join(dir, "eg_state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer state.Close()
	var word []byte
	if err := state.Lookup(uint32(0), &word); err != nil {
		t.Fatal(err)
	}
	outer, err := ebpf.LoadPinnedMap(filepath.Join(dir, "eg_policy"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer outer.Close()
	var inner *ebpf.Map
	if err := outer.Lookup(binary.LittleEndian.Uint32(word)&1, &inner); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inner.Close() })
	var k, v []byte
	it := inner.Iterate()
	for it.Next(&k, &v) {
		if k[8] == uint8(ruleset.Ingress) && k[9] == uint8(ruleset.ProtocolTCP) && binary.LittleEndian.Uint16(k[10:]) == port && v[4] == uint8(ruleset.VerdictAllowed) {
			return inner, slices.Clone(k), slices.Clone(v)
		}
	}
	t.Fatalf("no policy entry allowing TCP to port %d: %v", port, errors.Join(it.Err()))
	return nil, nil, nil
}
