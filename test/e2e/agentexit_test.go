package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/netns"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// buildStamped builds eastguard-agent as `make build` does, with the
// version stamped in.
func buildStamped(t *testing.T, version string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "eastguard-agent")
	cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+version, "-o", out, "github.com/eastguard/eastguard/agent/cmd/eastguard-agent")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, b)
	}
	return out
}

// warnings returns the WARN and ERROR lines of a JSON log.
func warnings(t *testing.T, log string) []string {
	t.Helper()
	var bad []string
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec struct{ Level string }
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("not a JSON log line: %q", sc.Text())
		}
		if rec.Level != "info" && rec.Level != "debug" {
			bad = append(bad, sc.Text())
		}
	}
	return bad
}

// waitExit waits for p to end by itself and returns its exit status and
// how long it ran from since.
func waitExit(t *testing.T, p *topo.Process, since time.Time, within time.Duration) (int, time.Duration) {
	t.Helper()
	testutil.Eventually(t, within, p.Name+" exiting by itself", func() error {
		if !p.Exited() {
			return errors.New("still running")
		}
		return nil
	})
	return p.Cmd.ProcessState.ExitCode(), time.Since(since)
}

// TestPrivilegedAgentExitsWhenRefused: an agent that the controller
// refuses for good (a spent token, a revoked node) exits 1 by itself,
// saying what to do and whether a rule set stays enforced; an agent
// stopped with SIGTERM exits 0 without a warning or an error in its log;
// the controller lists the agent's stamped version. (Before: refused
// agents ran forever, "the rule set in force stays enforced" even with
// none; a clean stop logged "interface watch failed" as a warning.)
func TestPrivilegedAgentExitsWhenRefused(t *testing.T) {
	testutil.RequirePrivileged(t)
	const node, version = "node-r", "v9.9.9-e2e"
	bin := buildStamped(t, version)
	h := controllertest.New(t)
	// The workloads' interfaces do not exist: the rule set is applied with
	// both pending, and nothing is attached to this host's interfaces.
	h.Apply(testutil.LabPolicy(testutil.Lab{Workloads: []testutil.LabWorkload{
		{Name: "web", Node: node, Interface: "egr-nope-web", Addrs: []string{"10.250.77.2"}},
		{Name: "client", Node: node, Interface: "egr-nope-cli", Addrs: []string{"10.250.77.3"}},
	}}))
	token := h.Token(node, 10*time.Minute)
	bpffs := func() string {
		d := "/sys/fs/bpf/eg-exit-" + netns.Suffix()
		t.Cleanup(func() {
			if out, err := exec.Command(bin, "--uninstall", "--bpffs-dir", d).CombinedOutput(); err != nil {
				t.Errorf("uninstall %s: %v\n%s", d, err, out)
			}
		})
		return d
	}
	bpffsA, stateA := bpffs(), t.TempDir()
	start := func(name, bpffsDir, stateDir, token string) *topo.Process {
		args := []string{"--node", node, "--controller", h.Addr, "--bpffs-dir", bpffsDir, "--state-dir", stateDir}
		if token != "" {
			args = append(args, "--join-token", token)
		}
		return topo.Start(t, name, exec.CommandContext(context.Background(), bin, args...))
	}

	// Joins, applies, reports its version; SIGTERM stops it quietly.
	first := start("agent-first", bpffsA, stateA, token)
	testutil.Eventually(t, 30*time.Second, "the agent applying version 1", func() error {
		if first.Exited() {
			t.Fatalf("agent exited:\n%s", first.Output())
		}
		if st := h.AgentStatus(node); !st.Connected || st.AppliedVersion != 1 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if got := h.AgentStatus(node).AgentVersion; got != version {
		t.Errorf("controller lists agent version %q, want the stamped %q", got, version)
	}
	if err := first.Stop(20 * time.Second); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, first.Output())
	}
	if bad := warnings(t, first.Output()); len(bad) > 0 {
		t.Errorf("a clean stop logged warnings or errors:\n%s", strings.Join(bad, "\n"))
	}

	// The token is spent: a second agent (its own pins, nothing ever
	// applied) is refused and exits 1, saying so.
	began := time.Now()
	second := start("agent-spent-token", bpffs(), t.TempDir(), token)
	code, took := waitExit(t, second, began, 60*time.Second)
	t.Logf("spent token: exit %d after %v", code, took.Round(time.Millisecond))
	out := second.Output()
	if code != 1 {
		t.Errorf("spent token: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{"join refused", "egctl token create --node node-r", "--join-token-file", "nothing is enforced"} {
		if !strings.Contains(out, want) {
			t.Errorf("spent token: the log does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "agent failed") || strings.Contains(out, "stays enforced") {
		t.Errorf("spent token: misleading log:\n%s", out)
	}

	// Revoked: restarted with its saved certificate, the first agent
	// enforces its last known good rule set, is refused, and exits 1.
	if _, err := h.Srv.Agents.Revoke(context.Background(), node); err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	third := start("agent-revoked", bpffsA, stateA, "")
	code, took = waitExit(t, third, began, 60*time.Second)
	t.Logf("revoked: exit %d after %v", code, took.Round(time.Millisecond))
	out = third.Output()
	if code != 1 {
		t.Errorf("revoked: exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{"revoked", "egctl token create --node node-r", "the rule set in force stays enforced", `"policy-version":1`} {
		if !strings.Contains(out, want) {
			t.Errorf("revoked: the log does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "agent failed") {
		t.Errorf("revoked: \"agent failed\" logged:\n%s", out)
	}
}
