package e2e

import (
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
	"github.com/eastguard/eastguard/test/harness"
)

// TestPrivilegedLiveExplain: egctl explain --live against real agents: each
// end's agent looks the flow up in its kernel maps and agrees with the
// controller (allowed and denied), the lookups admit nothing (the denied
// port still drops), and a
// node whose agent is stopped is reported offline while the other end
// still answers.
func TestPrivilegedLiveExplain(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := buildAll(t)
	nodeA, nodeB := topo.NewNode(t, "node-a", 1), topo.NewNode(t, "node-b", 2)
	web := nodeA.AddWorkload(t, "web", 1)
	client := nodeB.AddWorkload(t, "client", 3)
	topo.Link(t, nodeA, nodeB)
	cp := harness.NewControlPlane(t, bin, t.TempDir(), nodeA, nodeB)
	for _, n := range []*topo.Node{nodeA, nodeB} {
		t.Cleanup(func() {
			if out, err := exec.Command(bin["eastguard-agent"], "--uninstall", "--bpffs-dir", n.BPFFSDir).CombinedOutput(); err != nil {
				t.Errorf("uninstall %s: %v\n%s", n.Name, err, out)
			}
		})
	}
	cp.Start()
	agents := map[string]*topo.Process{}
	for _, n := range []*topo.Node{nodeA, nodeB} {
		agents[n.Name] = topo.Start(t, "agent-"+n.Name, n.NS.Nsenter(t.Context(), bin["eastguard-agent"],
			"--node", n.Name, "--controller", cp.Addr(n), "--state-dir", t.TempDir(), "--bpffs-dir", n.BPFFSDir,
			"--log-format", "console", "--join-token", cp.Token(n.Name)))
	}
	cp.Apply(crossNodePolicy(web, client))
	cp.WaitSynced(1, "node-a", "node-b")

	explain := func(port string) (liveExplanation, string, int) {
		t.Helper()
		out, errs, err := cp.Egctl("explain", "--live", "--from", "client", "--to", "web", "--port", port, "-o", "json")
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("egctl explain --live: %v\n%s", err, errs)
		}
		var x liveExplanation
		if err := json.Unmarshal([]byte(out), &x); err != nil {
			t.Fatalf("egctl explain --live -o json: %v\n%s%s", err, out, errs)
		}
		return x, out, code
	}
	for _, c := range []struct {
		port, verdict, rule string
		code                int
	}{
		{"8080/tcp", "allowed", "shop/client-to-web", 0},
		{"22/tcp", "denied", "default-deny", 3},
	} {
		x, out, code := explain(c.port)
		if code != c.code || x.Verdict != c.verdict || x.Live == nil || x.Live.Differs || len(x.Live.Ends) != 2 {
			t.Fatalf("%s: exit %d (want %d):\n%s", c.port, code, c.code, out)
		}
		for _, e := range x.Live.Ends {
			if e.Status != "in-sync" || e.Agent == nil || e.Agent.Verdict != c.verdict || e.Agent.Interfaces != 1 ||
				e.Agent.AppliedVersion != 1 || e.Agent.Generation == 0 {
				t.Errorf("%s: %s end: %s", c.port, e.End, out)
			}
		}
	}
	// The lookups ran no packet, so they admitted nothing: SSH is still
	// dropped.
	topo.MustDrop(t, "client -> web 22", client.Dial(web.Addr4, 22, topo.Quick))

	// The text form names both ends.
	out := cp.MustEgctl("explain", "--live", "--from", "client", "--to", "web", "--port", "8080/tcp")
	for _, w := range []string{"live:        source client on node-b: in-sync", "live:        destination web on node-a: in-sync"} {
		if !strings.Contains(out, w) {
			t.Errorf("egctl explain --live lacks %q:\n%s", w, out)
		}
	}

	// node-b's agent stops: its end is offline, node-a's still answers.
	if err := agents["node-b"].Stop(10 * time.Second); err != nil {
		t.Fatalf("stop node-b's agent: %v", err)
	}
	testutil.Eventually(t, 20*time.Second, "node-b offline in the live answer", func() error {
		x, out, _ := explain("8080/tcp")
		for _, e := range x.Live.Ends {
			want := "in-sync"
			if e.Node == "node-b" {
				want = "offline"
			}
			if e.Status != want {
				return errors.New(out)
			}
		}
		return nil
	})
}

// liveExplanation is what the test reads of egctl explain --live -o json
// (the documented JSON shape, not the Go type: the test runs the binary).
type liveExplanation struct {
	Verdict string `json:"verdict"`
	Live    *struct {
		Differs bool `json:"differs"`
		Ends    []struct {
			End    string `json:"end"`
			Node   string `json:"node"`
			Status string `json:"status"`
			Agent  *struct {
				AppliedVersion uint64 `json:"appliedVersion"`
				Generation     uint32 `json:"generation"`
				Interfaces     int    `json:"interfaces"`
				Verdict        string `json:"verdict"`
				Rule           string `json:"rule"`
			} `json:"agent"`
		} `json:"ends"`
	} `json:"live"`
}
