package demo_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
	"github.com/eastguard/eastguard/test/demo"
)

// logWriter hands the narration to t.Log, line by line.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if strings.TrimSpace(l) != "" {
			w.t.Log(l)
		}
	}
	return len(p), nil
}

// TestPrivilegedDemo plays `make demo`'s scenario with its assertions:
// the allowed flows present at the controller with the rules that allow
// them, SSH from web-1 to db-1 blocked, exactly one alert delivered to
// the receiver with a valid signature and counting the repeat (count 2),
// both agents at the latest version, and the policy change enforced on
// both nodes.
func TestPrivilegedDemo(t *testing.T) {
	testutil.RequirePrivileged(t)
	dir := t.TempDir()
	bin := map[string]string{}
	for _, pkg := range []string{"controller/cmd/eastguard-controller", "controller/cmd/egctl", "agent/cmd/eastguard-agent"} {
		bin[filepath.Base(pkg)] = topo.BuildBinary(t, pkg, dir)
	}
	res := demo.Run(t, demo.Config{Bin: bin, WorkDir: t.TempDir(), Out: logWriter{t}})
	t.Logf("measured: SSH attempt to signed alert %v, policy change to both nodes %v", res.AlertDelay, res.Propagation)
	if res.AdminToken == "" {
		t.Error("no admin token read from admin.conf")
	}
}
