package offline

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/controller/egctl/cli"
	"github.com/eastguard/eastguard/controller/egctl/egctltest"
)

func TestValidate(t *testing.T) {
	code, out, errs := egctl(t, "validate", shop)
	if code != exitOK || !strings.HasPrefix(out, "valid: 5 workloads, 1 policy (4 rules), 1 alert rule, 1 webhook; 3 nodes compiled") || errs != "" {
		t.Errorf("valid input: exit %d\nstdout: %s\nstderr: %s", code, out, errs)
	}

	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  rules:\n    - name: r\n      from: [{world: true}]\n      to: [{selector: {}}]\n      prots: [{port: 22}]\n")
	code, out, errs = egctl(t, "validate", shop, bad)
	if code != exitBadInput || out != "" {
		t.Errorf("invalid input: exit %d, stdout %q", code, out)
	}
	if want := bad + `:9:7: rules[0].prots: unknown field "prots" (did you mean "ports"?)`; !strings.Contains(errs, want) {
		t.Errorf("stderr does not hold\n  %s\ngot\n%s", want, errs)
	}

	warn := filepath.Join(dir, "warn.yaml")
	writeFile(t, warn, "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: w}\nspec:\n  rules:\n    - name: r\n      from: [{selector: {role: nobody}}]\n      to: [{selector: {}}]\n")
	code, _, errs = egctl(t, "validate", shop, warn)
	if code != exitOK || !strings.Contains(errs, warn+":7:14: rules[0].from[0].selector: warning: selector {role=nobody} matches no workload") {
		t.Errorf("warnings only: exit %d, stderr:\n%s", code, errs)
	}
	// A webhook secret from a variable not named EASTGUARD_... is refused
	// with its path: the controller's environment is not a secret store
	// for policy authors.
	env := filepath.Join(dir, "env.yaml")
	writeFile(t, env, "apiVersion: eastguard.dev/v1\nkind: Webhook\nmetadata: {name: h}\nspec:\n  url: https://hooks.example.com/x\n  secretFrom: {env: AWS_SECRET_ACCESS_KEY}\n")
	code, out, errs = egctl(t, "validate", env)
	if want := env + `:6:21: secretFrom.env: "AWS_SECRET_ACCESS_KEY": a secret's environment variable must be named EASTGUARD_...`; code != exitBadInput || out != "" || !strings.Contains(errs, want) {
		t.Errorf("secret env without the prefix: exit %d, stdout %q, stderr does not hold\n  %s\ngot\n%s", code, out, want, errs)
	}
	code, out, _ = egctl(t, "validate", "--sizes", shop)
	if code != exitOK || !strings.Contains(out, "node-b: endpoints 2/4096, ipcache 9/131072, policy 13/262144") {
		t.Errorf("--sizes: exit %d\n%s", code, out)
	}
	if code, _, errs := egctl(t, "validate", filepath.Join(dir, "missing.yaml")); code != exitBadInput || !strings.Contains(errs, "no such file") {
		t.Errorf("missing file: exit %d, %s", code, errs)
	}
}

func TestCompile(t *testing.T) {
	code, out, errs := egctl(t, "compile", "--node", "node-b", shop)
	if code != exitOK || !strings.HasPrefix(out, "node: node-b\nhash: sha256:") || !strings.Contains(out, "counts: {endpoints: 2,") {
		t.Errorf("yaml: exit %d\n%s\n%s", code, out, errs)
	}
	if !strings.Contains(out, "# db-1 <- {app=shop,env=prod,role=web}: shop/web-to-db") {
		t.Errorf("yaml lacks the commented entry:\n%s", out)
	}
	code, out, _ = egctl(t, "compile", shop, "--node", "node-b", "-o", "json")
	var v struct {
		Node   string
		Counts struct{ Entries int }
	}
	if err := json.Unmarshal([]byte(out), &v); code != exitOK || err != nil || v.Node != "node-b" || v.Counts.Entries == 0 {
		t.Errorf("json (flags after the file): exit %d, %v, %+v", code, err, v)
	}
	if code, _, errs := egctl(t, "compile", shop); code != exitBadInput || !strings.Contains(errs, "--node is required; nodes in this policy: node-a, node-b, node-c") {
		t.Errorf("no --node: exit %d, %s", code, errs)
	}
	if code, _, errs := egctl(t, "compile", "--node", "node-z", shop); code != exitBadInput || !strings.Contains(errs, "node-a, node-b, node-c") {
		t.Errorf("unknown node: exit %d, %s", code, errs)
	}
	if code, _, _ := egctl(t, "compile", "--node", "node-b", "-o", "xml", shop); code != exitBadInput {
		t.Errorf("-o xml: exit %d", code)
	}
	if code, _, _ := egctl(t, "compile", "--bogus", shop); code != exitBadInput {
		t.Errorf("unknown flag: exit %d", code)
	}
}

func TestExplainExitCodes(t *testing.T) {
	cases := []struct {
		from, to, port string
		code           int
		want           string
	}{
		{"web-1", "db-1", "5432/tcp", exitOK, "verdict:     allowed (shop/web-to-db)"},
		{"web-1", "db-1", "22/tcp", exitDenied, "verdict:     denied (default-deny)"},
		{"10.10.0.11", "db-1", "23/tcp", exitDenied, "verdict:     denied (shop/no-telnet-anywhere)"},
		{"192.0.2.7", "bastion", "22/tcp", exitOK, "verdict:     allowed (shop/admins-ssh)"},
		{"192.0.2.200", "bastion", "22/tcp", exitWouldDeny, "verdict:     would-deny (default-deny)"},
		{"198.51.100.1", "203.0.113.1", "22/tcp", exitBadInput, ""},
		{"nobody", "db-1", "22/tcp", exitBadInput, ""},
		{"web-1", "db-1", "22/sctp", exitBadInput, ""},
	}
	for _, tc := range cases {
		code, out, errs := egctl(t, "explain", "--from", tc.from, "--to", tc.to, "--port", tc.port, shop)
		if code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("explain %s -> %s %s: exit %d, want %d\nstdout: %s\nstderr: %s", tc.from, tc.to, tc.port, code, tc.code, out, errs)
		}
	}
	if code, _, errs := egctl(t, "explain", "--from", "web-1", shop); code != exitBadInput || !strings.Contains(errs, "required") {
		t.Errorf("missing flags: exit %d, %s", code, errs)
	}
	code, out, _ := egctl(t, "explain", "--from", "web-1", "--to", "db-1", "--port", "5432/tcp", "-o", "json", shop)
	var x struct{ Verdict, Rule string }
	if err := json.Unmarshal([]byte(out), &x); code != exitOK || err != nil || x.Verdict != "allowed" || x.Rule != "shop/web-to-db" {
		t.Errorf("json: exit %d, %v, %+v", code, err, x)
	}
}

// TestExplainLiveFlags: --live asks the controller, so it takes no files
// nor --controller-address (bad input), and without a controller
// configured it exits 2, as online commands do; a bad request the
// controller refuses (an unknown workload) is bad input.
func TestExplainLiveFlags(t *testing.T) {
	t.Setenv(cli.EnvConfig, "")
	t.Setenv(cli.EnvServer, "")
	t.Setenv(cli.EnvToken, "")
	if code, _, errs := egctl(t, "explain", "--live", "--from", "web-1", "--to", "db-1", "--port", "5432/tcp", shop); code != exitBadInput || !strings.Contains(errs, "--live takes no files") {
		t.Errorf("--live with files: exit %d, %s", code, errs)
	}
	if code, _, errs := egctl(t, "explain", "--live", "--controller-address", "10.0.0.5:7443", "--from", "web-1", "--to", "db-1", "--port", "5432/tcp"); code != exitBadInput || !strings.Contains(errs, "--controller-address") {
		t.Errorf("--live with --controller-address: exit %d, %s", code, errs)
	}
	if code, _, errs := egctl(t, "explain", "--live", "--from", "web-1", "--to", "db-1", "--port", "5432/tcp"); code != cli.ExitRemote || !strings.Contains(errs, "no controller configured") {
		t.Errorf("--live without a controller: exit %d, %s", code, errs)
	}
	conf := egctltest.Controller(t)
	if code, _, errs := egctl(t, "explain", "--live", "--from", "nobody", "--to", "db-1", "--port", "5432/tcp", "--config", conf); code != exitBadInput || !strings.Contains(errs, "nobody") {
		t.Errorf("--live with an unknown workload: exit %d, %s", code, errs)
	}
}
