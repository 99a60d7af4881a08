// Package e2e holds end-to-end tests: real agents (and controllers) as
// separate processes, enforcing real traffic between network namespaces.
// They need root and say so when skipped.
package e2e

import (
	"bufio"
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
)

// flowRecord is the part of the flow log this test reads.
type flowRecord struct {
	Direction   string `json:"direction"`
	Protocol    string `json:"protocol"`
	SrcAddr     string `json:"srcAddr"`
	SrcWorkload string `json:"srcWorkload"`
	DstAddr     string `json:"dstAddr"`
	DstPort     int    `json:"dstPort"`
	DstWorkload string `json:"dstWorkload"`
	Verdict     string `json:"verdict"`
	Rule        string `json:"rule"`
}

func readFlows(t *testing.T, path string) []flowRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []flowRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r flowRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("flow log line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// findFlow returns the first record matching all of want's non-zero fields.
func findFlow(records []flowRecord, want flowRecord) (flowRecord, bool) {
	for _, r := range records {
		if (want.Direction == "" || r.Direction == want.Direction) &&
			(want.Protocol == "" || r.Protocol == want.Protocol) &&
			(want.SrcWorkload == "" || r.SrcWorkload == want.SrcWorkload) &&
			(want.DstWorkload == "" || r.DstWorkload == want.DstWorkload) &&
			(want.DstAddr == "" || r.DstAddr == want.DstAddr) &&
			(want.DstPort == 0 || r.DstPort == want.DstPort) &&
			(want.Verdict == "" || r.Verdict == want.Verdict) &&
			(want.Rule == "" || r.Rule == want.Rule) {
			return r, true
		}
	}
	return flowRecord{}, false
}

// TestPrivilegedDatapathEndToEnd: one node, three workloads, a standalone agent
// enforcing the shop policy on real TCP and UDP, IPv4 and IPv6; the agent
// is killed (enforcement stays), restarted (adopts and takes a change),
// then uninstalled (enforcement goes).
func TestPrivilegedDatapathEndToEnd(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := topo.BuildBinary(t, "agent/cmd/eastguard-agent", t.TempDir())
	node := topo.NewNode(t, "node-a", 1)
	web := node.AddWorkload(t, "web", 1)
	db := node.AddWorkload(t, "db", 2)
	client := node.AddWorkload(t, "client", 3)
	web.Listen(t, 8080, 22, 9999)
	web.ListenUDP(t, 5353, 5354)
	db.Listen(t, 5432, 22)

	policyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(policyDir, "shop.yaml"), []byte(topo.LabPolicy(true, web, db, client)), 0o644); err != nil {
		t.Fatal(err)
	}
	stateDir, flowLog := t.TempDir(), filepath.Join(t.TempDir(), "flows.jsonl")
	startAgent := func() *topo.Process {
		cmd := node.NS.Nsenter(t.Context(), bin, "--node", "node-a", "--policy-dir", policyDir,
			"--bpffs-dir", node.BPFFSDir, "--state-dir", stateDir, "--flow-log", flowLog, "--log-format", "console",
			"--metrics-listen", "127.0.0.1:9790")
		return topo.Start(t, "agent", cmd)
	}
	t.Cleanup(func() {
		out, err := exec.Command(bin, "--uninstall", "--bpffs-dir", node.BPFFSDir).CombinedOutput()
		if err != nil {
			t.Errorf("uninstall: %v\n%s", err, out)
		}
	})

	// Before the agent: everything flows, IPv4 and IPv6.
	testutil.Eventually(t, 10*time.Second, "connectivity before the agent", func() error {
		if err := client.Dial(web.Addr4, 22, time.Second); err != nil {
			return err
		}
		return client.Dial(web.Addr6, 8080, time.Second)
	})
	agent := startAgent()
	waitEnforcing(t, agent, client, web)

	topo.MustPass(t, "client -> web tcp/8080 v4", client.Dial(web.Addr4, 8080, 2*time.Second))
	topo.MustPass(t, "client -> web tcp/8080 v6", client.Dial(web.Addr6, 8080, 2*time.Second))
	topo.MustPass(t, "client -> web udp/5353 v4", client.DialUDP(web.Addr4, 5353, 2*time.Second))
	topo.MustPass(t, "client -> web udp/5353 v6", client.DialUDP(web.Addr6, 5353, 2*time.Second))
	topo.MustPass(t, "web -> db tcp/5432", web.Dial(db.Addr4, 5432, 2*time.Second))
	topo.MustDrop(t, "client -> web tcp/22 (no-ssh)", client.Dial(web.Addr4, 22, topo.Quick))
	topo.MustDrop(t, "client -> web tcp/22 v6", client.Dial(web.Addr6, 22, topo.Quick))
	topo.MustDrop(t, "web -> db tcp/22", web.Dial(db.Addr4, 22, topo.Quick))
	topo.MustDrop(t, "client -> web tcp/9999 (default deny)", client.Dial(web.Addr4, 9999, topo.Quick))
	topo.MustDrop(t, "client -> web udp/5354", client.DialUDP(web.Addr4, 5354, topo.Quick))
	topo.MustDrop(t, "db -> web tcp/8080 (no edge)", db.Dial(web.Addr4, 8080, topo.Quick))
	topo.MustDrop(t, "client -> db tcp/5432 (no edge)", client.Dial(db.Addr4, 5432, topo.Quick))
	// The deny applies at both ends: the client's egress refuses 22 before
	// web sees it. The node itself is not enforced, so its attempt shows
	// web's ingress dropping it by the same rule.
	topo.MustDrop(t, "node -> web tcp/22 v6 (no-ssh at web)", node.Dial(web.Addr6, 22, topo.Quick))

	// The flow log names the deciding rule at each end.
	testutil.Eventually(t, 3*time.Second, "flow records", func() error {
		recs := readFlows(t, flowLog)
		for _, want := range []flowRecord{
			{Direction: "egress", SrcWorkload: "client", DstWorkload: "web", DstPort: 8080, Verdict: "allowed", Rule: "shop/client-to-web"},
			{Direction: "ingress", SrcWorkload: "client", DstWorkload: "web", DstPort: 8080, Verdict: "allowed", Rule: "shop/client-to-web"},
			{Direction: "ingress", Protocol: "UDP", DstWorkload: "web", DstPort: 5353, Verdict: "allowed", Rule: "shop/client-to-web"},
			{Direction: "egress", SrcWorkload: "client", DstWorkload: "web", DstPort: 22, Verdict: "denied", Rule: "shop/no-ssh"},
			{Direction: "ingress", DstWorkload: "web", DstAddr: web.Addr6.String(), DstPort: 22, Verdict: "denied", Rule: "shop/no-ssh"},
			{Direction: "egress", SrcWorkload: "client", DstWorkload: "web", DstPort: 9999, Verdict: "denied", Rule: "default-deny"},
			{Direction: "ingress", SrcWorkload: "web", DstWorkload: "db", DstPort: 5432, Verdict: "allowed", Rule: "shop/web-to-db"},
		} {
			if _, ok := findFlow(recs, want); !ok {
				return fmt.Errorf("no record like %+v among:\n%s", want, dumpFlows(recs))
			}
		}
		return nil
	})

	// The agent's metrics count what just happened.
	testutil.Eventually(t, 3*time.Second, "agent metrics", func() error {
		m, err := node.Get("http://127.0.0.1:9790/metrics")
		if err != nil {
			return err
		}
		for _, want := range []string{
			`eastguard_agent_endpoints{state="enforcing"} 3`,
			`eastguard_agent_flow_events_lost_total 0`,
			`eastguard_agent_map_entries{map="eg_policy"}`,
		} {
			if !strings.Contains(m, want) {
				return fmt.Errorf("/metrics lacks %s", want)
			}
		}
		for _, name := range []string{`eastguard_agent_datapath_verdicts_total{direction="ingress",verdict="denied"}`,
			`eastguard_agent_flow_events_read_total`, `eastguard_agent_flow_records_total`} {
			if v := metricValue(m, name); v <= 0 {
				return fmt.Errorf("%s is %v, want > 0", name, v)
			}
		}
		return nil
	})

	// Kill the agent: enforcement stays exactly as it was.
	agent.Kill()
	topo.MustPass(t, "after kill: client -> web tcp/8080", client.Dial(web.Addr4, 8080, 2*time.Second))
	topo.MustDrop(t, "after kill: client -> web tcp/22", client.Dial(web.Addr4, 22, topo.Quick))
	topo.MustDrop(t, "after kill: client -> web tcp/9999", client.Dial(web.Addr4, 9999, topo.Quick))

	// Restart: it adopts the pins, and a policy change takes effect.
	agent = startAgent()
	testutil.Eventually(t, 10*time.Second, "restarted agent opening the datapath", func() error {
		if !strings.Contains(agent.Output(), "datapath open") {
			return errors.New("no 'datapath open' line yet")
		}
		return nil
	})
	// Three workloads, two hooks each.
	if out := agent.Output(); !strings.Contains(out, `"adopted-links": 6`) {
		t.Errorf("restarted agent did not adopt the 6 pinned links:\n%s", out)
	}
	topo.MustDrop(t, "after restart: client -> web tcp/22", client.Dial(web.Addr4, 22, topo.Quick))
	if err := os.WriteFile(filepath.Join(policyDir, "shop.yaml"), []byte(topo.LabPolicy(true, web, db, client)+testutil.LabExtraPolicy()), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the restarted agent applying a policy change", func() error {
		return client.Dial(web.Addr4, 9999, topo.Quick)
	})
	topo.MustDrop(t, "after change: client -> web tcp/22", client.Dial(web.Addr4, 22, topo.Quick))

	// A clean stop also leaves enforcement in place, and logs no warning
	// or error.
	if err := agent.Stop(10 * time.Second); err != nil {
		t.Errorf("agent stop: %v", err)
	}
	for _, line := range strings.Split(agent.Output(), "\n") {
		if strings.Contains(line, "\tWARN\t") || strings.Contains(line, "\tERROR\t") {
			t.Errorf("the restarted agent logged a warning or an error:\n%s", line)
		}
	}
	topo.MustDrop(t, "after stop: client -> web tcp/22", client.Dial(web.Addr4, 22, topo.Quick))
	topo.MustPass(t, "after stop: client -> web tcp/9999", client.Dial(web.Addr4, 9999, 2*time.Second))

	// Uninstall: everything flows again.
	if out, err := exec.Command(bin, "--uninstall", "--bpffs-dir", node.BPFFSDir).CombinedOutput(); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	topo.MustPass(t, "after uninstall: client -> web tcp/22", client.Dial(web.Addr4, 22, 2*time.Second))
	if _, err := os.Stat(node.BPFFSDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins left after uninstall: %v", err)
	}
}

// waitEnforcing waits until the agent has applied its policy: the denied
// port stops answering.
func waitEnforcing(t *testing.T, agent *topo.Process, client, web *topo.Workload) {
	t.Helper()
	testutil.Eventually(t, 15*time.Second, "the agent to enforce", func() error {
		if agent.Exited() {
			t.Fatalf("agent exited:\n%s", agent.Output())
		}
		if err := client.Dial(web.Addr4, 22, 300*time.Millisecond); !errors.Is(err, topo.ErrNoAnswer) {
			return fmt.Errorf("port 22 still answers (%v)", err)
		}
		return nil
	})
}

func dumpFlows(recs []flowRecord) string {
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "  %+v\n", r)
	}
	return b.String()
}

// metricValue returns the value of a sample line "name value" in a
// Prometheus text exposition, or -1.
func metricValue(exposition, name string) float64 {
	for _, line := range strings.Split(exposition, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return -1
}
