// Package testutil holds test helpers shared by the agent's and the
// controller's tests. It must not be imported by non-test code.
package testutil

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// RequirePrivileged skips t, saying why, unless the process may load and
// attach eBPF programs and manage network namespaces. CI runs as root, so
// there these tests always run.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	caps := effectiveCaps()
	const sysAdmin, netAdmin, perfmon, bpf = 21, 12, 38, 39
	has := func(c uint) bool { return caps&(1<<c) != 0 }
	if has(sysAdmin) && has(netAdmin) {
		return
	}
	if has(bpf) && has(netAdmin) && has(perfmon) && has(sysAdmin) {
		return
	}
	t.Skipf("skipped: needs root (or CAP_SYS_ADMIN+CAP_NET_ADMIN+CAP_BPF+CAP_PERFMON) for eBPF and network namespaces; effective capabilities are %#x. Run the tests as root (CI does).", caps)
}

func effectiveCaps() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return n
		}
	}
	return 0
}
