package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// The demo's verdict lines, without colours: "allowed  client -> web:8080".
var demoLine = regexp.MustCompile(`(allowed|denied|failed)\x1b\[0m\s+(\S+)\s+-> (\S+)`)

// TestPrivilegedDemo runs two demos at once: each finishes, neither sees
// the other's namespaces or pins, every probe is allowed or dropped as the
// story says (none fails for another reason, such as a listener not up
// yet), and nothing is left behind.
func TestPrivilegedDemo(t *testing.T) {
	testutil.RequirePrivileged(t)
	bin := t.TempDir()
	for _, pkg := range []string{"agent/cmd/eastguard-agent", "controller/cmd/egctl"} {
		topo.BuildBinary(t, pkg, bin)
	}
	ids := []string{fmt.Sprintf("t%da", os.Getpid()), fmt.Sprintf("t%db", os.Getpid())}
	t.Cleanup(func() {
		for _, id := range ids {
			cmd := exec.Command("deploy/demo/clean.sh")
			cmd.Dir, cmd.Env = "../..", append(os.Environ(), "BIN="+bin, "DEMO_ID="+id)
			cmd.Run()
		}
	})
	outs := make([]string, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			cmd := exec.Command("deploy/demo/demo.sh")
			cmd.Dir, cmd.Env = "../..", append(os.Environ(), "BIN="+bin, "DEMO_ID="+id)
			done := make(chan struct{})
			time.AfterFunc(3*time.Minute, func() {
				select {
				case <-done:
				default:
					cmd.Process.Kill()
				}
			})
			out, err := cmd.CombinedOutput()
			close(done)
			outs[i], errs[i] = string(out), err
		})
	}
	wg.Wait()
	// The story: open, enforced, enforced after kill -9, open after
	// --uninstall. Each matrix is five probes in this order.
	open := "allowed allowed allowed allowed allowed"
	enforced := "allowed denied allowed denied denied"
	want := strings.Join([]string{open, enforced, enforced, open}, " ")
	for i, out := range outs {
		if errs[i] != nil {
			t.Errorf("demo %s: %v\n%s", ids[i], errs[i], out)
			continue
		}
		var got []string
		for _, m := range demoLine.FindAllStringSubmatch(out, -1) {
			got = append(got, m[1])
		}
		if strings.Join(got, " ") != want {
			t.Errorf("demo %s verdicts:\n  %s\nwant\n  %s\n%s", ids[i], strings.Join(got, " "), want, out)
		}
		if !strings.Contains(out, "demo cleaned up") {
			t.Errorf("demo %s did not clean up:\n%s", ids[i], out)
		}
	}
	for _, id := range ids {
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "egdemo-"+id) {
			t.Errorf("demo %s left namespaces:\n%s", id, out)
		}
		if _, err := os.Stat(filepath.Join("/sys/fs/bpf", "eastguard-demo-"+id)); err == nil {
			t.Errorf("demo %s left its pins", id)
		}
	}
}
