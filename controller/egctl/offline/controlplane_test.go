package offline

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// TestValidateControllerWarning: a host-mode workload whose policy does
// not let its node reach the controller is a warning at the workload; a
// policy that allows it, or no controller address, is none.
func TestValidateControllerWarning(t *testing.T) {
	const at = ":46:9: metadata.name: warning: host-mode workload bastion: no rule lets node node-c reach the controller at 198.51.100.7:7443 (TCP egress would-deny by default-deny); only the agent's own control connection passes there (failsafe/control-plane)"
	code, out, errs := egctl(t, "validate", "--controller-address", "198.51.100.7:7443", shop)
	if code != exitOK || !strings.Contains(errs, shop+at) || !strings.HasPrefix(out, "valid: ") {
		t.Errorf("controller blocked: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}
	t.Setenv(envControllerAddress, "198.51.100.7:7443")
	if code, _, errs := egctl(t, "validate", shop); code != exitOK || !strings.Contains(errs, shop+at) {
		t.Errorf("address from $%s: exit %d\n%s", envControllerAddress, code, errs)
	}
	t.Setenv(envControllerAddress, "")
	if code, _, errs := egctl(t, "validate", shop); code != exitOK || errs != "" {
		t.Errorf("no controller address: exit %d, stderr %q", code, errs)
	}

	allow := filepath.Join(t.TempDir(), "allow.yaml")
	writeFile(t, allow, "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: ctl}\nspec:\n  rules:\n    - {name: to-controller, from: [{selector: {role: bastion}}], to: [{cidr: 198.51.100.0/24}], ports: [{port: 7443}]}\n")
	if code, _, errs := egctl(t, "validate", "--controller-address", "198.51.100.7:7443", shop, allow); code != exitOK || strings.Contains(errs, "reach the controller") {
		t.Errorf("controller allowed: exit %d\n%s", code, errs)
	}
	for _, bad := range []string{"198.51.100.7", "198.51.100.7:0", "198.51.100.7:https"} {
		if code, _, errs := egctl(t, "validate", "--controller-address", bad, shop); code != exitBadInput || !strings.Contains(errs, "--controller-address") {
			t.Errorf("--controller-address %s: exit %d, %s", bad, code, errs)
		}
	}
}

// TestExplainFailsafe: with --controller-address a host-mode workload's
// flow to the controller is allowed by failsafe/control-plane, on the
// controller's port only; without, the policy decides, with a note.
func TestExplainFailsafe(t *testing.T) {
	args := []string{"explain", "--from", "bastion", "--to", "198.51.100.7", "--port", "7443/tcp", shop}
	code, out, _ := egctl(t, args...)
	if code != exitWouldDeny || !strings.Contains(out, "note:        bastion is in host mode: its agent lets its own control traffic through") {
		t.Errorf("without --controller-address: exit %d\n%s", code, out)
	}
	code, out, _ = egctl(t, append(args, "--controller-address", "198.51.100.7:7443")...)
	if code != exitOK || !strings.Contains(out, "verdict:     allowed (failsafe/control-plane)") || strings.Contains(out, "note:") {
		t.Errorf("with --controller-address: exit %d\n%s", code, out)
	}
	code, out, _ = egctl(t, "explain", "--from", "bastion", "--to", "198.51.100.7", "--port", "22/tcp", "--controller-address", "198.51.100.7:7443", "-o", "json", shop)
	var x struct {
		Verdict, Rule string
		Notes         []string
	}
	if err := json.Unmarshal([]byte(out), &x); code != exitWouldDeny || err != nil || x.Rule != "default-deny" || x.Notes != nil {
		t.Errorf("another port: exit %d, %v, %+v", code, err, x)
	}
	code, out, _ = egctl(t, "explain", "--from", "bastion", "--to", "198.51.100.7", "--port", "7443/tcp", "-o", "json", shop)
	if err := json.Unmarshal([]byte(out), &x); code != exitWouldDeny || err != nil || len(x.Notes) != 1 {
		t.Errorf("json note: exit %d, %v, %+v", code, err, x)
	}
}
