package online

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestOnlineApplyControlPlaneWarning: egctl apply warns, at the workload
// when the files hold it, about a host-mode workload whose policy (as the
// controller now compiles it, or the files alone with --dry-run) does not
// let its node reach the controller.
func TestOnlineApplyControlPlaneWarning(t *testing.T) {
	t.Setenv("EASTGUARD_WEBHOOK_SECRET", "s3cret") // shop's webhook signs with it
	t.Setenv(envConfig, controller(t))
	t.Setenv(envControllerAddress, "")
	const msg = "metadata.name: warning: host-mode workload bastion: no rule lets node node-c reach the controller at 198.51.100.7:7443 (TCP egress would-deny by default-deny)"

	code, _, errs := egctl(t, "apply", "--controller-address", "198.51.100.7:7443", "-f", shop)
	if code != exitOK || !strings.Contains(errs, shop+":46:9: "+msg) {
		t.Errorf("apply: exit %d, stderr:\n%s", code, errs)
	}
	// With --dry-run, from the files alone.
	code, _, errs = egctl(t, "apply", "--dry-run", "--controller-address", "198.51.100.7:7443", "-f", shop)
	if code != exitOK || !strings.Contains(errs, shop+":46:9: "+msg) {
		t.Errorf("apply --dry-run: exit %d, stderr:\n%s", code, errs)
	}
	// A policy that lets the node reach the controller: no warning.
	allow := filepath.Join(t.TempDir(), "allow.yaml")
	writeFile(t, allow, "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: ctl}\nspec:\n  rules:\n    - {name: to-controller, from: [{selector: {role: bastion}}], to: [{cidr: 198.51.100.0/24}], ports: [{port: 7443}]}\n")
	code, out, errs := egctl(t, "apply", "--controller-address", "198.51.100.7:7443", "-f", allow)
	if code != exitOK || !strings.Contains(out, "node node-c: rule set version 2") || strings.Contains(errs, "reach the controller") {
		t.Errorf("apply of an allow: exit %d\n%s\n%s", code, out, errs)
	}
	// The workload not in the files is named; without an address the API
	// server's host is checked, and egctl says so.
	writeFile(t, allow, strings.Replace(readFile(t, allow), "port: 7443", "port: 7444", 1))
	code, _, errs = egctl(t, "apply", "-f", allow)
	if code != exitOK || !strings.Contains(errs, "egctl: warning: host-mode workload bastion: no rule lets node node-c reach the controller at 127.0.0.1:7443") ||
		!strings.Contains(errs, "checked against the API server's host on port 7443; give --controller-address") {
		t.Errorf("apply without an address: exit %d, stderr:\n%s", code, errs)
	}
}
