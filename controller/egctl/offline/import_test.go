package offline

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestImportNetworkPolicy(t *testing.T) {
	dir := t.TempDir()
	np := filepath.Join(dir, "np.yaml")
	writeFile(t, np, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: http}, {port: 443}]}]
`)
	code, out, errs := egctl(t, "import", "networkpolicy", "-f", dir)
	if code != exitOK || !strings.HasPrefix(out, "# from NetworkPolicy shop/web\napiVersion: eastguard.dev/v1\nkind: Policy\nmetadata:\n  name: shop.web\n") ||
		!strings.Contains(out, "port: 443") || strings.Contains(out, "port: 8") {
		t.Errorf("exit %d\nstdout:\n%s", code, out)
	}
	if want := `shop/web: spec.ingress[0].ports[0].port: warning: named port "http" cannot be resolved`; !strings.Contains(errs, want) ||
		!strings.Contains(errs, "shop/web: spec.podSelector: warning: Eastguard denies by default") {
		t.Errorf("stderr lacks %q and the default-deny warning:\n%s", want, errs)
	}

	// The output is valid input for egctl validate.
	imported := filepath.Join(dir, "out", "eastguard.yaml")
	writeFile(t, filepath.Join(dir, "ports.yaml"), "http: 8080\n")
	code, out, _ = egctl(t, "import", "networkpolicy", "--named-ports", filepath.Join(dir, "ports.yaml"), "-f", np)
	if code != exitOK || !strings.Contains(out, "port: 8080") {
		t.Fatalf("--named-ports: exit %d\n%s", code, out)
	}
	if err := os.MkdirAll(filepath.Dir(imported), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, imported, out)
	if code, vout, verrs := egctl(t, "validate", imported); code != exitOK || !strings.HasPrefix(vout, "valid: 0 workloads, 1 policy (1 rule)") {
		t.Errorf("validate of the output: exit %d\n%s\n%s", code, vout, verrs)
	}

	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: x, namespace: shop}\nspec: {podSelectr: {}}\n")
	code, out, errs = egctl(t, "import", "networkpolicy", "-f", bad)
	if code != exitBadInput || out != "" || !strings.Contains(errs, bad+`:1: NetworkPolicy x: `) || !strings.Contains(errs, "podSelectr") {
		t.Errorf("bad input: exit %d, stdout %q, stderr:\n%s", code, out, errs)
	}
	for _, args := range [][]string{{"import", "-f", np}, {"import", "networkpolicy"}, {"import", "deployment", "-f", np}} {
		if code, _, _ := egctl(t, args...); code != exitBadInput {
			t.Errorf("%v: exit %d", args, code)
		}
	}
}
