package policy

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/testutil"

	"github.com/eastguard/eastguard/internal/ruleset"
)

func TestLoadExample(t *testing.T) {
	set, diags, err := Load(testutil.PolicyFixture("shop.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if diags.HasErrors() || set == nil {
		t.Fatalf("example rejected:\n%v", diags.Err())
	}
	if len(diags) != 0 {
		t.Errorf("unexpected warnings: %v", diags)
	}
	if got := len(set.Workloads); got != 5 {
		t.Errorf("workloads = %d, want 5", got)
	}
	pol := set.Policies[0]
	if pol.Name != "shop" || len(pol.Rules) != 4 {
		t.Fatalf("policy = %q with %d rules", pol.Name, len(pol.Rules))
	}
	ssh := pol.Rules[2]
	if ssh.From[0].CIDR != netip.MustParsePrefix("192.0.2.0/24") || ssh.From[0].Except[0] != netip.MustParsePrefix("192.0.2.128/25") {
		t.Errorf("admins-ssh from = %+v", ssh.From[0])
	}
	telnet := pol.Rules[3]
	if telnet.Action != ActionDeny || telnet.To[0].Selector == nil || len(telnet.To[0].Selector) != 0 {
		t.Errorf("no-telnet-anywhere = %+v", telnet)
	}
	if telnet.Ports[0].Protocol != ruleset.ProtocolTCP || telnet.Ports[0].Port != 23 {
		t.Errorf("telnet ports = %+v", telnet.Ports)
	}
	if a := set.AlertRules[0]; a.Severity != SeverityCritical || a.Window.String() != "5m0s" || a.Notify[0].Name != "security-team" {
		t.Errorf("alert rule = %+v", a)
	}
	if w := set.Webhooks[0]; w.SecretFrom == nil || w.SecretFrom.Env != "EASTGUARD_WEBHOOK_SECRET" || w.Format != FormatJSON {
		t.Errorf("webhook = %+v", w)
	}
	if w, _ := set.Workload("bastion"); !w.HostMode() || w.Mode != ModeMonitor {
		t.Errorf("bastion = %+v", w)
	}
	if w, _ := set.Workload("web-1"); w.Mode != ModeUnset {
		t.Errorf("web-1 mode = %q, want unset", w.Mode)
	}
}

// doc wraps a spec in a resource header; the header is 5 lines, so the
// spec's first line is line 6.
func doc(kind, name, spec string) string {
	return "apiVersion: eastguard.dev/v1\nkind: " + kind + "\nmetadata:\n  name: " + name + "\nspec:\n" + spec
}

const okWorkload = "apiVersion: eastguard.dev/v1\nkind: Workload\nmetadata:\n  name: db\n  labels: {role: db}\nspec:\n  node: n1\n  interface: veth-db\n  addresses: [10.0.0.1]\n---\n"

// TestErrorClasses checks the message and position of every class of error
// docs/POLICY.md lists.
func TestErrorClasses(t *testing.T) {
	rule := func(body string) string {
		return okWorkload + doc("Policy", "p", "  rules:\n    - name: r\n"+body)
	}
	// okWorkload is 10 lines; the rule's first field is line 17.
	cases := []struct {
		name, input, want string
	}{
		{"unknown field", rule("      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n      prots: [{port: 1}]\n"),
			`t.yaml:20:7: rules[0].prots: unknown field "prots" (did you mean "ports"?)`},
		{"unknown top-level field", "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec: {}\nstatus: {}\n",
			`t.yaml:5:1: status: unknown field "status" (known fields: apiVersion, kind, metadata, spec)`},
		{"wrong type", rule("      from: {selector: {role: db}}\n      to: [{selector: {role: db}}]\n"),
			`t.yaml:18:13: rules[0].from: expected a list, got a mapping`},
		{"string where a number goes", rule("      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n      ports: [{port: \"22\"}]\n"),
			`t.yaml:20:22: rules[0].ports[0].port: expected an integer, got the string "22"`},
		{"bad cidr", rule("      from: [{cidr: 10.0.0.300/8}]\n      to: [{selector: {role: db}}]\n"),
			`t.yaml:18:21: rules[0].from[0].cidr: "10.0.0.300/8" is not a CIDR`},
		{"cidr with host bits", rule("      from: [{cidr: 10.0.0.1/8}]\n      to: [{selector: {role: db}}]\n"),
			`t.yaml:18:21: rules[0].from[0].cidr: "10.0.0.1/8" has host bits set (did you mean 10.0.0.0/8?)`},
		{"except outside cidr", rule("      from: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]\n      to: [{selector: {role: db}}]\n"),
			`t.yaml:18:42: rules[0].from[0].except[0]: 11.0.0.0/16 is not strictly inside 10.0.0.0/8`},
		{"port out of range", rule("      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n      ports: [{protocol: TCP, port: 70000}]\n"),
			`t.yaml:20:37: rules[0].ports[0].port: 70000 is out of range 1-65535`},
		{"port zero", rule("      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n      ports: [{port: 0}]\n"),
			`t.yaml:20:22: rules[0].ports[0].port: 0 is out of range 1-65535`},
		{"endPort below port", rule("      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n      ports: [{port: 80, endPort: 70}]\n"),
			`t.yaml:20:35: rules[0].ports[0].endPort: endPort 70 is less than port 80`},
		{"endPort without port", rule("      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n      ports: [{endPort: 70}]\n"),
			`t.yaml:20:25: rules[0].ports[0].endPort: endPort needs a port`},
		{"ICMP type on TCP", rule("      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n      ports: [{protocol: TCP, type: 8}]\n"),
			`t.yaml:20:37: rules[0].ports[0].type: ICMP type is not valid with TCP (only with ICMP or ICMPv6)`},
		{"ICMP code on UDP", rule("      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n      ports: [{protocol: UDP, code: 1}]\n"),
			`t.yaml:20:37: rules[0].ports[0].code: ICMP code is not valid with UDP (only with ICMP or ICMPv6)`},
		{"port on ICMP", rule("      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n      ports: [{protocol: ICMP, port: 8}]\n"),
			`t.yaml:20:38: rules[0].ports[0].port: port is not valid with ICMP; ICMP takes type and code`},
		{"empty rule name", rule("      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n")[:0] + okWorkload + doc("Policy", "p", "  rules:\n    - name: \"\"\n      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n"),
			`t.yaml:17:13: rules[0].name: name is empty`},
		{"empty resource name", doc("Policy", `""`, "  rules: []\n"),
			`t.yaml:4:9: metadata.name: name is empty`},
		{"missing name", "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {}\nspec: {}\n",
			`t.yaml:3:11: metadata.name: missing required field "name"`},
		{"duplicate resource name", okWorkload + "apiVersion: eastguard.dev/v1\nkind: Workload\nmetadata:\n  name: db\nspec:\n  node: n1\n  interface: veth-2\n  addresses: [10.0.0.2]\n",
			`t.yaml:14:9: metadata.name: duplicate Workload name "db" (first defined at t.yaml:4:9)`},
		{"duplicate rule name", okWorkload + doc("Policy", "p", "  rules:\n    - name: r\n      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n    - name: r\n      from: [{selector: {role: db}}]\n      to: [{selector: {role: db}}]\n"),
			`t.yaml:20:7: rules[1].name: duplicate rule name "r" (first at t.yaml:17:7)`},
		{"unknown webhook", doc("AlertRule", "a", "  severity: info\n  notify: [security]\n"),
			`t.yaml:7:12: notify[0]: unknown webhook "security" (no Webhook resource has that name)`},
		{"built-in alert name", doc("AlertRule", "datapath-tampered", "  severity: info\n"),
			`t.yaml:4:9: metadata.name: AlertRule name "datapath-tampered" is the controller's built-in node alert's: alerts of both would read as one; choose another name`},
		{"bad apiVersion", "apiVersion: v1\nkind: Policy\nmetadata: {name: p}\nspec: {}\n",
			`t.yaml:1:13: apiVersion: "v1" is not supported (want "eastguard.dev/v1")`},
		{"unknown kind", "apiVersion: eastguard.dev/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {}\n",
			`t.yaml:2:7: kind: "NetworkPolicy" is not one of Workload, Policy, AlertRule, Webhook`},
		{"a list, not a resource", "- a\n- b\n",
			`t.yaml:1:1: document: expected a mapping, got a list`},
		{"syntax error", "apiVersion: eastguard.dev/v1\nkind: [Policy\n",
			`t.yaml:2:1: document: invalid YAML: did not find expected ',' or ']'`},
		{"syntax error: an unclosed flow mapping", "apiVersion: eastguard.dev/v1\nkind: Policy\nmetadata: {name: p\nspec: {}\n",
			`t.yaml:3:1: document: invalid YAML: did not find expected ',' or '}'`},
		{"syntax error: a misindented key", doc("Policy", "p", "  rules:\n    - name: a\n      from: [{selector: {}}]\n     to: [{selector: {}}]\n"),
			`t.yaml:7:1: document: invalid YAML: did not find expected '-' indicator`}, // the sequence the key breaks
		{"syntax error found by the scanner", "apiVersion: eastguard.dev/v1\nkind: @Policy\n",
			`t.yaml:2:1: document: invalid YAML: found character that cannot start any token`},
		{"syntax error at the end", "apiVersion: [eastguard.dev/v1\n",
			`t.yaml:2:1: document: invalid YAML: did not find expected ',' or ']'`}, // the end of input, where ']' was expected
		{"bad address", doc("Workload", "w", "  node: n\n  addresses: [10.0.0.256]\n"),
			`t.yaml:7:15: addresses[0]: "10.0.0.256" is not an IP address`},
		{"duplicate address", okWorkload + doc("Workload", "w", "  node: n2\n  addresses: [10.0.0.1]\n"),
			`t.yaml:14:9: addresses: address 10.0.0.1 already belongs to workload "db" (t.yaml:4:9)`},
		{"no addresses", doc("Workload", "w", "  node: n\n  addresses: []\n"),
			`t.yaml:7:14: addresses: a workload needs at least one address (the datapath identifies it by its addresses)`},
		{"two host-mode workloads", doc("Workload", "a", "  node: n\n  addresses: [10.0.0.1]\n") + "\n---\n" + doc("Workload", "b", "  node: n\n  addresses: [10.0.0.2]\n"),
			`t.yaml:13:9: interface: node "n" already has host-mode workload "a" (t.yaml:4:9); a node has at most one (give container workloads an interface)`},
		{"bad mode", doc("Policy", "p", "  mode: dry-run\n"),
			`t.yaml:6:9: mode: "dry-run" is not one of enforce, monitor`},
		{"empty from", rule("      from: []\n      to: [{selector: {role: db}}]\n"),
			`t.yaml:18:13: rules[0].from: at least one peer is needed (selector: {} is every managed workload, world: true every other address)`},
		{"two peer kinds", rule("      from: [{selector: {role: db}, world: true}]\n      to: [{selector: {role: db}}]\n"),
			`t.yaml:18:14: rules[0].from[0]: a peer has exactly one of selector, cidr, world or host; write several peers instead`},
		{"secretFrom with both", doc("Webhook", "h", "  url: https://example.com/h\n  secretFrom: {env: A, file: /b}\n"),
			`t.yaml:7:15: secretFrom: secretFrom needs exactly one of env or file`},
		{"secret env without the prefix", doc("Webhook", "h", "  url: https://example.com/h\n  secretFrom: {env: AWS_SECRET_ACCESS_KEY}\n"),
			`t.yaml:7:21: secretFrom.env: "AWS_SECRET_ACCESS_KEY": a secret's environment variable must be named EASTGUARD_...`},
		{"secret env that is the prefix alone", doc("Webhook", "h", "  url: https://example.com/h\n  secretFrom: {env: EASTGUARD_}\n"),
			`t.yaml:7:21: secretFrom.env: "EASTGUARD_": a secret's environment variable must be named EASTGUARD_...`},
		{"secret file absolute", doc("Webhook", "h", "  url: https://example.com/h\n  secretFrom: {file: /etc/shadow}\n"),
			`t.yaml:7:22: secretFrom.file: "/etc/shadow": name a file relative to the controller's --secrets-dir, not an absolute path`},
		{"secret file up and out", doc("Webhook", "h", "  url: https://example.com/h\n  secretFrom: {file: hooks/../../etc/shadow}\n"),
			`t.yaml:7:22: secretFrom.file: "hooks/../../etc/shadow": a file name relative to --secrets-dir, without empty, "." or ".." elements`},
		{"webhook url", doc("Webhook", "h", "  url: ftp://example.com/h\n"),
			`t.yaml:6:8: url: "ftp://example.com/h" is not an http or https URL`},
		{"field given twice", doc("Policy", "p", "  mode: enforce\n  mode: monitor\n"),
			`t.yaml:7:3: mode: field given twice`},
		{"label with comma", doc("Workload", "w", "  node: n\n  addresses: [10.0.0.9]\n")[:0] + "apiVersion: eastguard.dev/v1\nkind: Workload\nmetadata:\n  name: w\n  labels: {\"a,b\": x}\nspec:\n  node: n\n  addresses: [10.0.0.9]\n",
			`t.yaml:5:12: metadata.labels.a,b: label key "a,b" may only contain letters, digits, '-', '_', '.', '/' and ':'`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			set, diags := ParseAndValidate("t.yaml", []byte(tc.input))
			if set != nil {
				t.Errorf("a set was returned despite errors")
			}
			err := diags.Err()
			if err == nil {
				t.Fatalf("no error; diagnostics: %v", diags)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not match ErrInvalid")
			}
			var lines []string
			for _, d := range diags.Errors() {
				lines = append(lines, d.String())
			}
			for _, l := range lines {
				if l == tc.want {
					return
				}
			}
			t.Errorf("no error\n  %s\namong\n  %s", tc.want, strings.Join(lines, "\n  "))
		})
	}
}

func TestWarnings(t *testing.T) {
	input := okWorkload + doc("Policy", "p", "  rules:\n    - name: r\n      from: [{selector: {role: dbb}}]\n      to: [{selector: {role: db}}]\n")
	set, diags := ParseAndValidate("t.yaml", []byte(input))
	if set == nil {
		t.Fatalf("warnings must not reject the input: %v", diags)
	}
	want := "t.yaml:18:14: rules[0].from[0].selector: warning: selector {role=dbb} matches no workload"
	if len(diags) != 1 || diags[0].String() != want {
		t.Errorf("diagnostics = %v, want [%s]", diags, want)
	}
}

// TestOneBadDocumentRejectsAll: a valid document next to a bad one is not
// applied either.
func TestOneBadDocumentRejectsAll(t *testing.T) {
	dir := t.TempDir()
	good, _ := os.ReadFile(testutil.PolicyFixture("shop.yaml"))
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), good, 0o644); err != nil {
		t.Fatal(err)
	}
	bad := doc("Policy", "bad", "  rules:\n    - name: r\n      from: [{world: true}]\n      to: [{selector: {}}]\n      ports: [{port: 99999}]\n")
	if err := os.WriteFile(filepath.Join(dir, "b.yml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	set, diags, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if set != nil {
		t.Fatal("Load returned a set although b.yml is invalid")
	}
	if got := diags.Errors(); len(got) != 1 || !strings.HasPrefix(got[0].String(), filepath.Join(dir, "b.yml")+":10:") {
		t.Errorf("errors = %v", got)
	}
}

func TestLoadErrors(t *testing.T) {
	if _, _, err := Load(filepath.Join(t.TempDir(), "does-not-exist.yaml")); err == nil {
		t.Error("missing file: no error")
	}
	if _, _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "no .yaml or .yml files") {
		t.Errorf("empty directory: %v", err)
	}
	if _, _, err := Load(); err == nil {
		t.Error("no input: no error")
	}
}

func TestDefaults(t *testing.T) {
	input := okWorkload + doc("Policy", "p", "  rules:\n    - name: r\n      from: [{selector: {role: db}}]\n      to: [{host: true}]\n      ports: [{port: 80}, {protocol: icmp, type: 8}, {protocol: ANY, port: 53, endPort: 53}]\n") +
		"\n---\n" + doc("AlertRule", "a", "  severity: warning\n") +
		"\n---\n" + doc("Webhook", "h", "  url: http://localhost:9/x\n")
	set, diags := ParseAndValidate("t.yaml", []byte(input))
	if set == nil {
		t.Fatal(diags.Err())
	}
	r := set.Policies[0].Rules[0]
	if r.Action != ActionAllow || !r.To[0].Host {
		t.Errorf("rule = %+v", r)
	}
	if p := r.Ports[0]; p.Protocol != ruleset.ProtocolTCP || p.Port != 80 {
		t.Errorf("default protocol: %+v", p)
	}
	if p := r.Ports[1]; p.Protocol != ruleset.ProtocolICMP || *p.ICMPType != 8 || p.ICMPCode != nil {
		t.Errorf("icmp: %+v", p)
	}
	if p := r.Ports[2]; p.EndPort != 0 {
		t.Errorf("endPort equal to port must collapse to a single port: %+v", p)
	}
	a := set.AlertRules[0]
	if a.Window != DefaultAlertWindow || a.Match.Protocol != ruleset.ProtocolAny ||
		len(a.Match.Verdicts) != 2 || a.Match.Verdicts[0] != ruleset.VerdictDenied {
		t.Errorf("alert defaults = %+v", a)
	}
	if w := set.Webhooks[0]; w.Format != FormatJSON || w.SecretFrom != nil {
		t.Errorf("webhook defaults = %+v", w)
	}
}

func TestAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 9; i++ {
		b.WriteString("a" + string(rune('0'+i)) + ": &a" + string(rune('0'+i)) + " [")
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*a" + string(rune('0'+i-1)))
		}
		b.WriteString("]\n")
	}
	input := doc("Workload", "w", "  node: n\n  addresses: [10.0.0.1]\n  extra:\n") + indent(b.String(), "    ")
	_, diags := Parse("t.yaml", []byte(input))
	if !diags.HasErrors() {
		t.Fatal("alias bomb accepted")
	}
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n") + "\n"
}
