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
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
	"github.com/eastguard/eastguard/test/harness"
)

// TestPrivilegedDatapathTamperRepairedAndAlerted plays a root attacker on
// node-a while its agent runs with a controller: it detaches the tcx
// link of web's interface by id (what `bpftool link detach` does) and
// rewrites the policy map entry that allows client -> web:8080 into a
// deny, in the active generation, through the pins. The agent puts both
// back (the measured times are logged: the check runs every second),
// counts them in eastguard_agent_datapath_drift_total, and the controller
// sends the signed datapath-tampered alert, one per kind, to the webhook.
func TestPrivilegedDatapathTamperRepairedAndAlerted(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := buildAll(t)
	nodeA, nodeB := topo.NewNode(t, "node-a", 1), topo.NewNode(t, "node-b", 2)
	web := nodeA.AddWorkload(t, "web", 1)
	client := nodeB.AddWorkload(t, "client", 3)
	topo.Link(t, nodeA, nodeB)
	web.Listen(t, 8080)
	cp := harness.NewControlPlane(t, bin, t.TempDir(), nodeA, nodeB)
	cp.Env = []string{"EASTGUARD_WEBHOOK_SECRET=" + webhookSecret}
	cp.Args = append(cp.Args, "--webhook-allow-private")
	for _, n := range []*topo.Node{nodeA, nodeB} {
		t.Cleanup(func() {
			if out, err := exec.Command(bin["eastguard-agent"], "--uninstall", "--bpffs-dir", n.BPFFSDir).CombinedOutput(); err != nil {
				t.Errorf("uninstall %s: %v\n%s", n.Name, err, out)
			}
		})
	}
	rc := harness.NewReceiver([]byte(webhookSecret))
	hookURL := cp.ServeWebhook(rc)
	cp.Start()
	for _, n := range []*topo.Node{nodeA, nodeB} {
		out := strings.Split(strings.TrimSpace(cp.MustEgctl("token", "create", "--node", n.Name, "--ttl", "10m")), "\n")
		topo.Start(t, "agent-"+n.Name, n.NS.Nsenter(t.Context(), bin["eastguard-agent"], "--node", n.Name,
			"--controller", cp.Addr(n), "--join-token", out[len(out)-1], "--state-dir", t.TempDir(),
			"--bpffs-dir", n.BPFFSDir, "--log-format", "console", "--metrics-listen", "127.0.0.1:9790"))
	}
	cp.Apply(crossNodePolicy(web, client) + "---\n" + testutil.SSHAlertPolicy(hookURL, ""))
	cp.WaitSynced(1, "node-a", "node-b")
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
	testutil.Eventually(t, 30*time.Second, "the datapath-tampered alerts at the webhook", func() error {
		got, errs := rc.Requests()
		if len(errs) > 0 {
			t.Fatalf("webhook requests that do not verify or parse: %v", errs)
		}
		kinds := map[string]harness.Received{}
		for _, r := range got {
			if r.Payload.Alert.Rule == "datapath-tampered" {
				kinds[r.Payload.Alert.Destination.Name] = r
			}
		}
		for _, kind := range []string{"link-detached", "map-modified"} {
			r, ok := kinds[kind]
			if !ok {
				return fmt.Errorf("no datapath-tampered alert for %s among %d requests", kind, len(got))
			}
			a := r.Payload.Alert
			if r.Payload.Event != "firing" || a.Severity != "critical" || a.Node != "node-a" || a.Source.Name != "node-a" || a.Verdict != "repaired" {
				t.Fatalf("alert for %s: %+v", kind, r.Payload)
			}
			t.Logf("%s alert at the webhook %v after the tampering", kind, r.At.Sub(detached))
		}
		return nil
	})
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
