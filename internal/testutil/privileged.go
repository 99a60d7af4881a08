// Package testutil holds test helpers shared by the agent's and the
// controller's tests. It must not be imported by non-test code.
package testutil

import (
	"os"
	"testing"

	"github.com/eastguard/eastguard/internal/caps"
)

// RequirePrivileged skips t, saying why, unless the process may load and
// attach eBPF programs and manage network namespaces. CI runs as root, so
// there these tests always run.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	eff, _ := caps.Effective()
	if eff.Has(caps.SysAdmin) && eff.Has(caps.NetAdmin) {
		return
	}
	t.Skipf("skipped: needs root (or CAP_SYS_ADMIN+CAP_NET_ADMIN) for eBPF and network namespaces; effective capabilities are %#x. Run the tests as root (CI does).", uint64(eff))
}
