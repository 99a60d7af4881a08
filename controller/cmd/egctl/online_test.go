package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/controller/apiclient"
	"github.com/eastguard/eastguard/controller/controllertest"
	"github.com/eastguard/eastguard/internal/pki"
)

// controller starts an in-process controller API and returns the path of
// an admin.conf for it.
func controller(t *testing.T) string {
	t.Helper()
	conf, _ := controllerWithStore(t)
	return conf
}

// controllerWithStore is controller, also returning the controller (for
// tests that put flows and alerts in its store).
func controllerWithStore(t *testing.T) (string, *controllertest.Controller) {
	t.Helper()
	h := controllertest.New(t)
	cfg := h.ServeAPI()
	dir := t.TempDir()
	data, _ := cfg.Marshal()
	path := filepath.Join(dir, "admin.conf")
	writeFile(t, path, string(data))
	return path, h
}

func TestOnlineCommands(t *testing.T) {
	conf := controller(t)
	t.Setenv(envConfig, conf)

	code, out, errs := egctl(t, "apply", "-f", shop)
	if code != exitOK || !strings.Contains(out, "Policy/shop created") || !strings.Contains(out, "node node-a: rule set version 1") {
		t.Fatalf("apply: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, _ = egctl(t, "apply", "-f", shop)
	if code != exitOK || !strings.Contains(out, "Policy/shop unchanged") || strings.Contains(out, "rule set version") {
		t.Errorf("re-apply: exit %d\n%s", code, out)
	}

	// Invalid input: the diagnostics, exit 1, nothing applied.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	writeFile(t, bad, "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  rules:\n    - name: r\n      from: [{world: true}]\n      to: [{selector: {}}]\n      prots: [{port: 22}]\n")
	code, _, errs = egctl(t, "apply", "-f", bad)
	if code != exitBadInput || !strings.Contains(errs, bad+`:9:7: rules[0].prots: unknown field "prots"`) || !strings.Contains(errs, "nothing applied") {
		t.Errorf("invalid apply: exit %d\n%s", code, errs)
	}
	code, out, _ = egctl(t, "get", "policies")
	if code != exitOK || strings.Contains(out, " p ") || !strings.Contains(out, "shop") {
		t.Errorf("get policies after a refused apply: exit %d\n%s", code, out)
	}

	code, out, _ = egctl(t, "get", "workloads", "-o", "json")
	var wls []apiclient.WorkloadView
	if code != exitOK || json.Unmarshal([]byte(out), &wls) != nil || len(wls) != 5 {
		t.Errorf("get workloads -o json: exit %d\n%s", code, out)
	}
	code, out, _ = egctl(t, "get", "policies", "-o", "yaml")
	if code != exitOK || !strings.Contains(out, "kind: Policy") {
		t.Errorf("get policies -o yaml: exit %d\n%s", code, out)
	}

	code, out, _ = egctl(t, "agents", "-o", "json")
	var agents []map[string]any
	if code != exitOK || json.Unmarshal([]byte(out), &agents) != nil || len(agents) != 3 {
		t.Fatalf("agents -o json: exit %d\n%s", code, out)
	}
	for _, k := range []string{"node", "connected", "appliedVersion", "latestVersion", "certExpiry", "lastError"} {
		if _, ok := agents[0][k]; !ok {
			t.Errorf("agents -o json: no key %q in %v", k, agents[0])
		}
	}

	code, out, _ = egctl(t, "token", "create", "--node", "node-a", "--ttl", "1h")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != exitOK {
		t.Fatalf("token create: exit %d", code)
	}
	if _, err := pki.ParseJoinToken(lines[len(lines)-1]); err != nil {
		t.Errorf("token create: last line %q: %v", lines[len(lines)-1], err)
	}
	if code, _, errs = egctl(t, "token", "create", "--node", "bad/name"); code != exitBadInput || !strings.Contains(errs, "node name") {
		t.Errorf("token for a bad node name: exit %d, %s", code, errs)
	}

	code, out, _ = egctl(t, "delete", "policy", "shop")
	if code != exitOK || !strings.Contains(out, "Policy/shop deleted") {
		t.Errorf("delete: exit %d\n%s", code, out)
	}
	if code, _, errs = egctl(t, "delete", "policy", "shop"); code != exitBadInput || !strings.Contains(errs, "Policy/shop: no such resource") {
		t.Errorf("delete again: exit %d\n%s", code, errs)
	}
	if code, _, errs = egctl(t, "agent", "revoke", "nobody"); code != exitBadInput || !strings.Contains(errs, "no such node") {
		t.Errorf("revoke an unknown node: exit %d\n%s", code, errs)
	}
}

func TestOnlineCredentials(t *testing.T) {
	conf := controller(t)
	cfg, err := apiclient.LoadConfig(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(envConfig, "")
	if code, _, errs := egctl(t, "agents"); code != exitRemote || !strings.Contains(errs, "no controller configured") {
		t.Errorf("no config: exit %d, %s", code, errs)
	}
	// A wrong token is refused with 401 whatever the path.
	if code, _, errs := egctl(t, "agents", "--server", cfg.Server, "--token", "egadm1.000000000000.00000000000000000000000000000000"); code != exitRemote || !strings.Contains(errs, "HTTP 401") {
		t.Errorf("wrong token: exit %d, %s", code, errs)
	}
	// Flags win over the config file; the environment names the file.
	t.Setenv(envConfig, conf)
	if code, _, _ := egctl(t, "agents", "--token", "junk"); code != exitRemote {
		t.Errorf("--token over the file: exit %d", code)
	}
	if code, _, _ := egctl(t, "agents", "--config", conf); code != exitOK {
		t.Errorf("--config: exit %d", code)
	}
}
