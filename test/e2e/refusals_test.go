package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/netns"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// TestPrivilegedAgentRefusesClearly: without privileges, or on a kernel without BTF,
// the agent says what is missing and exits 1, having changed nothing.
func TestPrivilegedAgentRefusesClearly(t *testing.T) {
	testutil.RequirePrivileged(t)
	for _, tool := range []string{"setpriv", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s (util-linux) is required: %v", tool, err)
		}
	}
	dir := t.TempDir()
	bin := topo.BuildBinary(t, "agent/cmd/eastguard-agent", dir)
	os.Chmod(dir, 0o755)
	rs := filepath.Join(dir, "rs.json")
	os.WriteFile(rs, []byte(`{"node":"n1"}`), 0o644)
	bpffs := "/sys/fs/bpf/eg-refuse-" + netns.Suffix()
	args := []string{"--node", "n1", "--rule-set", rs, "--bpffs-dir", bpffs, "--state-dir", filepath.Join(dir, "state")}

	cases := []struct {
		name string
		cmd  *exec.Cmd
		want string
	}{
		{
			"no privileges",
			exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--", bin}, args...)...),
			"insufficient privileges: the datapath needs root, CAP_SYS_ADMIN, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
		},
		{
			"kernel without BTF",
			// A private mount namespace where the kernel's BTF is an empty file.
			exec.Command("unshare", "--mount", "--", "sh", "-c",
				`mount --bind /dev/null /sys/kernel/btf/vmlinux && exec "$0" "$@"`, bin, args[0], args[1], args[2], args[3], args[4], args[5], args[6], args[7]),
			"kernel not supported: no kernel BTF",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := tc.cmd.CombinedOutput()
			var ee *exec.ExitError
			if err == nil || !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("output does not say %q:\n%s", tc.want, out)
			}
			if _, err := os.Stat(bpffs); !os.IsNotExist(err) {
				t.Errorf("a refused agent left %s behind", bpffs)
				os.RemoveAll(bpffs)
			}
		})
	}
}
