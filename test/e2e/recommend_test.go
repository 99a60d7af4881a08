package e2e

import (
	"encoding/json"
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

// recommendWorkloads are the workloads of TestPrivilegedRecommendEndToEnd,
// labelled role=<name>, in mode.
func recommendWorkloads(mode string, ws ...*topo.Workload) string {
	var b strings.Builder
	for _, w := range ws {
		fmt.Fprintf(&b, `apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: %s, labels: {app: lab, role: %s}}
spec: {node: %s, interface: %s, addresses: ["%s", "%s"], mode: %s}
---
`, w.Name, w.Name, w.Node.Name, w.HostIface, w.Addr4, w.Addr6, mode)
	}
	return strings.TrimSuffix(b.String(), "---\n")
}

// TestPrivilegedRecommendEndToEnd: the workflow the README documents.
// Workloads in monitor mode carry traffic (client -> web on 8080 and
// 8081, web -> db on 5432), with no policy at all; egctl recommend writes
// a policy from the stored flows; it is applied and the workloads switch
// to enforce; then exactly the observed connections still work, and
// connections never observed (client -> web:22, client -> db:5432,
// web:8082, db -> web) are dropped.
func TestPrivilegedRecommendEndToEnd(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := buildAll(t)
	nodeA, nodeB := topo.NewNode(t, "node-a", 1), topo.NewNode(t, "node-b", 2)
	web := nodeA.AddWorkload(t, "web", 1)
	db := nodeA.AddWorkload(t, "db", 2)
	client := nodeB.AddWorkload(t, "client", 3)
	topo.Link(t, nodeA, nodeB)
	web.Listen(t, 8080, 8081, 8082, 22)
	db.Listen(t, 5432)
	client.Listen(t, 8080)
	cp := harness.NewControlPlane(t, bin, t.TempDir(), nodeA, nodeB)
	for _, n := range []*topo.Node{nodeA, nodeB} {
		t.Cleanup(func() {
			if out, err := exec.Command(bin["eastguard-agent"], "--uninstall", "--bpffs-dir", n.BPFFSDir).CombinedOutput(); err != nil {
				t.Errorf("uninstall %s: %v\n%s", n.Name, err, out)
			}
		})
	}
	cp.Start()
	for _, n := range []*topo.Node{nodeA, nodeB} {
		topo.Start(t, "agent-"+n.Name, n.NS.Nsenter(t.Context(), bin["eastguard-agent"], "--node", n.Name,
			"--controller", cp.Addr(n), "--join-token", cp.Token(n.Name), "--state-dir", t.TempDir(),
			"--bpffs-dir", n.BPFFSDir, "--log-format", "console"))
	}

	// Observe: monitor mode, no policy. Everything passes and is recorded
	// as would-deny.
	cp.Apply(recommendWorkloads("monitor", web, db, client))
	rows := cp.WaitSynced(1, "node-a", "node-b")
	type conn struct {
		what     string
		from     *topo.Workload
		to       *topo.Workload
		port     int
		observed bool
	}
	conns := []conn{
		{"client -> web:8080", client, web, 8080, true},
		{"client -> web:8081", client, web, 8081, true},
		{"web -> db:5432", web, db, 5432, true},
		{"client -> web:22", client, web, 22, false},
		{"client -> web:8082", client, web, 8082, false},
		{"client -> db:5432", client, db, 5432, false},
		{"db -> web:8080", db, web, 8080, false},
		{"web -> client:8080", web, client, 8080, false},
	}
	for _, c := range conns {
		if c.observed {
			topo.MustPass(t, "monitor mode: "+c.what, c.from.Dial(c.to.Addr4, c.port, 2*time.Second))
		}
	}
	testutil.Eventually(t, 15*time.Second, "the observed flows stored", func() error {
		var flows []struct {
			SrcWorkload string `json:"srcWorkload"`
			DstWorkload string `json:"dstWorkload"`
			DstPort     int    `json:"dstPort"`
		}
		out, errs, err := cp.Egctl("flows", "--verdict", "would-deny", "--limit", "1000", "-o", "json")
		if err != nil {
			return fmt.Errorf("egctl flows: %v: %s", err, errs)
		}
		if err := json.Unmarshal([]byte(out), &flows); err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, f := range flows {
			seen[fmt.Sprintf("%s -> %s:%d", f.SrcWorkload, f.DstWorkload, f.DstPort)] = true
		}
		for _, c := range conns {
			if c.observed && !seen[c.what] {
				return fmt.Errorf("%s not stored yet (stored: %v)", c.what, seen)
			}
		}
		return nil
	})

	// Recommend, review (the test reads it), apply.
	recommended, errs, err := cp.Egctl("recommend", "--since", "1h", "--group-by", "role")
	if err != nil {
		t.Fatalf("egctl recommend: %v\n%s", err, errs)
	}
	t.Logf("egctl recommend --since 1h --group-by role:\n%s", recommended)
	for _, want := range []string{"name: client-to-web", "{protocol: TCP, port: 8080, endPort: 8081}", "name: web-to-db",
		"{protocol: TCP, port: 5432}", "would-deny"} {
		if !strings.Contains(recommended, want) {
			t.Errorf("the recommendation lacks %q", want)
		}
	}
	if strings.Contains(recommended, "port: 22") || strings.Contains(recommended, "8082") {
		t.Errorf("the recommendation allows what no traffic showed:\n%s", recommended)
	}
	file := filepath.Join(t.TempDir(), "recommended.yaml")
	if err := os.WriteFile(file, []byte(recommended), 0o644); err != nil {
		t.Fatal(err)
	}
	cp.MustEgctl("apply", "-f", file)
	// Nothing observed breaks under enforce.
	if diff := cp.MustEgctl("recommend", "--since", "1h", "--diff"); !strings.Contains(diff, "break under enforce): 0") {
		t.Errorf("egctl recommend --diff after applying the recommendation:\n%s", diff)
	}

	// Enforce.
	cp.Apply(recommendWorkloads("enforce", web, db, client))
	cp.WaitSynced(rows["node-a"].LatestVersion+2, "node-a")
	cp.WaitSynced(rows["node-b"].LatestVersion+2, "node-b")
	for _, c := range conns {
		for _, addr := range []struct {
			family string
			dial   func() error
		}{
			{"IPv4", func() error { return c.from.Dial(c.to.Addr4, c.port, dialTimeout(c.observed)) }},
			{"IPv6", func() error { return c.from.Dial(c.to.Addr6, c.port, dialTimeout(c.observed)) }},
		} {
			what := "enforce: " + c.what + " over " + addr.family
			if c.observed {
				topo.MustPass(t, what, addr.dial())
			} else {
				topo.MustDrop(t, what, addr.dial())
			}
		}
	}
}

// dialTimeout: a connection that must pass gets time on a busy machine; one
// that must be dropped only needs long enough to show no answer.
func dialTimeout(pass bool) time.Duration {
	if pass {
		return 2 * time.Second
	}
	return topo.Quick
}
