package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/controller/egctl/egctltest"
	"github.com/eastguard/eastguard/controller/restapi"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil/readme"
)

// asEgctl makes this test binary egctl itself (TestMain calls main's
// run): the README's lines run in bash, pipes and redirections as
// written, against the real entry point, with no separate build.
const asEgctl = "EASTGUARD_TEST_AS_EGCTL"

func TestMain(m *testing.M) {
	if os.Getenv(asEgctl) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// readmeHosts adds to the shop fixture the host-mode workload the
// README's failsafe example explains from.
const readmeHosts = `apiVersion: eastguard.dev/v1
kind: Workload
metadata: {name: node-a-host, labels: {role: node}}
spec: {node: node-a, addresses: [10.10.0.100]}
`

// readmeNetpol is what the README's import line finds in netpol/.
const readmeNetpol = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: web}}}]
      ports: [{protocol: TCP, port: 5432}]
`

// readmeWant is what one README egctl line must do, for each of its
// forms: its exit status, words its standard output holds (keyed by a
// word of the form, "" for every form) and its standard error, files it writes in the working
// directory (holding a word), and the values of its placeholders.
type readmeWant struct {
	code   int
	out    map[string][]string
	errs   []string // words its standard error holds (warnings)
	files  map[string]string
	values map[string]string
}

// readmeEgctl holds every egctl line of the README (its text, comment
// dropped), with what it must do. A line added to the README without an
// entry here fails TestReadmeEgctlCommands.
var readmeEgctl = map[string]readmeWant{
	"export EGCTL_CONFIG=/var/lib/eastguard-controller/admin.conf": {out: map[string][]string{"": {"shop"}}},
	"egctl apply -f policies/":                                     {out: map[string][]string{"": {"unchanged"}}},
	"egctl get policies|workloads|agents [-o json|yaml]": {out: map[string][]string{
		"policies": {"shop"}, "workloads": {"web-1", "node-a-host"}, "agents": {"node-a"}}},
	"egctl delete KIND NAME... | -f FILE": {
		out:    map[string][]string{"": {"deleted"}},
		values: map[string]string{"KIND": "policy", "NAME...": "shop", "FILE": "policies/hosts.yaml"}},
	"egctl admin-token list | create [--name N] [--ttl D] [--write-config FILE] | revoke ID": {
		out:    map[string][]string{"list": {"alice"}, "revoke": {"revoked"}},
		values: map[string]string{"N": "bob", "D": "1h", "FILE": "bob.conf"}},
	"egctl token create --node node-a --ttl 1h | tail -n1 > node-a.token": {files: map[string]string{"node-a.token": "eg1."}},
	"egctl token list [-o json]":                                          {out: map[string][]string{"": {"node-a"}}},
	"egctl token delete ID":                                               {out: map[string][]string{"": {"deleted"}}},
	"egctl audit [--since 24h] [--object Policy/shop] [-o json]":          {out: map[string][]string{"": {"policy.apply", "Policy/shop", "controller"}}},
	"egctl audit --verify":                                                {out: map[string][]string{"": {"audit trail intact"}}},

	"egctl admin-token create --name alice --ttl 8h":                       {out: map[string][]string{"": {"egadm1."}}},
	"egctl admin-token create --name ci --ttl 720h --write-config ci.conf": {files: map[string]string{"ci.conf": "token"}},
	"egctl admin-token list":                                               {out: map[string][]string{"": {"alice", "*"}}},
	"egctl admin-token revoke 3f2a9c0d1e4b":                                {out: map[string][]string{"": {"revoked"}}},

	"kubectl -n eastguard exec eastguard-controller-0 -- egctl --config /var/lib/eastguard-controller/admin.conf get workloads": {
		out: map[string][]string{"": {"web-1"}}},
	"kubectl -n eastguard exec eastguard-controller-0 -- egctl --config /var/lib/eastguard-controller/admin.conf flows --verdict denied": {
		out: map[string][]string{"": {"web-1", "db-1", "denied"}}},
	"kubectl -n eastguard exec eastguard-controller-0 -- egctl --config /var/lib/eastguard-controller/admin.conf admin-token create --name ops --ttl 720h --write-config - > ops.conf": {
		files: map[string]string{"ops.conf": "token"}},

	"egctl flows --verdict denied --port 22 --since 10m": {out: map[string][]string{"": {"web-1", "db-1", "denied", "default-deny"}}},
	"egctl flows --workload db-1 --rule default-deny":    {out: map[string][]string{"": {"web-1", "db-1", "default-deny"}}},
	"egctl alerts --open":                                {out: map[string][]string{"": {"unexpected-ssh", "web-1"}}},
	"egctl alert ack 42":                                 {out: map[string][]string{"": {"acknowledged"}}},
	"egctl webhooks":                                     {out: map[string][]string{"": {"security-team"}}},
	"egctl recommend --workload db-1 -o json":            {out: map[string][]string{"": {`"yaml"`, "bastion-to-shop", "shop-to-shop", `"wouldDeny": 1`}}},
	"egctl recommend --since 24h --group-by role > recommended.yaml": {
		files: map[string]string{"recommended.yaml": "name: web-to-db"}},
	"egctl recommend --diff": {out: map[string][]string{"": {"break under enforce): 1", "bastion", "db-1", "TCP/5432",
		"never used", "shop/lb-to-web"}}},

	"egctl validate policies/":                                       {out: map[string][]string{"": {"valid"}}},
	"egctl validate --sizes policies/":                               {out: map[string][]string{"": {"node-a", "node-b"}}},
	"egctl compile --node node-a policies/":                          {out: map[string][]string{"": {"node-a", "hash"}}},
	"egctl explain --from web-1 --to db-1 --port 5432/tcp policies/": {out: map[string][]string{"": {"allowed", "shop/web-to-db"}}},
	// The seeded controller has no agent connected: both ends offline,
	// the controller's verdict still answered.
	"egctl explain --live --from web-1 --to db-1 --port 5432/tcp": {out: map[string][]string{"": {"allowed", "shop/web-to-db",
		"live:        source web-1 on node-a: offline; pushed version 1: allowed by shop/web-to-db", "node-b is offline"}}},
	"egctl validate --controller-address 10.0.0.5:7443 policies/": {out: map[string][]string{"": {"valid"}},
		errs: []string{"host-mode workload node-a-host: no rule lets node node-a reach the controller at 10.0.0.5:7443"}},
	"egctl import networkpolicy -f netpol/ > eastguard.yaml && egctl validate eastguard.yaml": {
		files: map[string]string{"eastguard.yaml": "shop.db"}},
	"egctl explain --from node-a-host --to 10.0.0.5 --port 7443/tcp --controller-address 10.0.0.5:7443 policies/": {
		out: map[string][]string{"": {"failsafe/control-plane"}}},
}

// readmeExamples are the README's example values of things a seeded
// controller numbers itself: an alert's id and an admin token's.
const (
	exampleAlertID      = "42"
	exampleAdminTokenID = "3f2a9c0d1e4b"
	exampleAdminConf    = "/var/lib/eastguard-controller/admin.conf"
)

var kubectlExec = regexp.MustCompile(`^kubectl -n \S+ exec \S+ -- `)

// readmeSeed is a controller with the README's world: the shop policy
// and node-a-host applied, a join token for node-a, an admin token, a
// denied SSH flow web-1 -> db-1 and its open alert; and a working
// directory with policies/ and netpol/.
type readmeSeed struct {
	conf, dir                 string
	joinTokenID, adminTokenID string
	alertID                   int64
}

func newReadmeSeed(t *testing.T) readmeSeed {
	t.Helper()
	conf, h := egctltest.ControllerWithStore(t)
	shopYAML := egctltest.ReadFile(t, shop)
	h.Apply(shopYAML, readmeHosts)
	dir := t.TempDir()
	for _, d := range []string{"policies", "netpol"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	egctltest.WriteFile(t, filepath.Join(dir, "policies", "shop.yaml"), shopYAML)
	egctltest.WriteFile(t, filepath.Join(dir, "policies", "hosts.yaml"), readmeHosts)
	egctltest.WriteFile(t, filepath.Join(dir, "netpol", "db.yaml"), readmeNetpol)

	join := strings.Split(h.Token("node-a", time.Hour), ".")
	admin, err := h.Srv.API.NewAdminToken(context.Background(), restapi.AdminTokenSpec{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	web1, db1 := netip.MustParseAddr("10.10.0.11"), netip.MustParseAddr("10.10.0.21")
	h.InsertFlows(flowrecord.Record{Time: now, Node: "node-b", Direction: ruleset.Ingress, Protocol: "TCP",
		SrcAddr: web1, SrcPort: 40000, SrcWorkload: "web-1", DstAddr: db1, DstPort: 22, DstWorkload: "db-1",
		Verdict: ruleset.VerdictDenied, Rule: "default-deny", Packets: 1, Bytes: 60, FirstSeen: now, LastSeen: now, State: flowrecord.StateNew})
	a := &store.Alert{Rule: "unexpected-ssh", Severity: "critical", Key: "k", State: store.AlertOpen, Count: 1,
		Source: "web-1", Destination: "db-1", SrcWorkload: "web-1", DstWorkload: "db-1", SrcAddr: web1, DstAddr: db1,
		Port: 22, Protocol: "TCP", FirstSeen: now, LastSeen: now, Window: 5 * time.Minute, Created: now}
	h.InsertAlerts(a)
	// The traffic egctl recommend writes policy from: web-1 -> db-1
	// allowed, and bastion (monitor mode) -> db-1, which nothing allows.
	bastion := netip.MustParseAddr("10.10.0.2")
	h.InsertFlows(flowrecord.Record{Time: now, Node: "node-b", Direction: ruleset.Ingress, Protocol: "TCP",
		SrcAddr: web1, SrcPort: 40001, SrcWorkload: "web-1", DstAddr: db1, DstPort: 5432, DstWorkload: "db-1",
		Verdict: ruleset.VerdictAllowed, Rule: "shop/web-to-db", Packets: 1, Bytes: 60, FirstSeen: now, LastSeen: now, State: flowrecord.StateNew},
		flowrecord.Record{Time: now, Node: "node-c", Direction: ruleset.Egress, Protocol: "TCP",
			SrcAddr: bastion, SrcPort: 40002, SrcWorkload: "bastion", DstAddr: db1, DstPort: 5432, DstWorkload: "db-1",
			Verdict: ruleset.VerdictWouldDeny, Rule: "default-deny", Packets: 1, Bytes: 60, FirstSeen: now, LastSeen: now, State: flowrecord.StateNew})
	return readmeSeed{conf: conf, dir: dir, joinTokenID: join[1], adminTokenID: admin.ID, alertID: a.ID}
}

// TestReadmeEgctlCommands runs every egctl line the README shows (egctl
// inside `kubectl exec` included), each form of a synopsis with its
// placeholders filled, in bash with this binary as egctl, against a
// freshly seeded in-process controller, from a directory holding the
// README's policies/ and netpol/; and checks the exit status and output
// each line documents. The README's explain line also documents its
// other exit statuses: 3 denied, 4 would-deny, 1 bad input.
func TestReadmeEgctlCommands(t *testing.T) {
	t.Setenv("EASTGUARD_WEBHOOK_SECRET", "s3cret")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(self, filepath.Join(bin, "egctl")); err != nil {
		t.Fatal(err)
	}
	cmds := readme.Commands(t)
	// Every line runs after the README's export, as a reader's shell would.
	exports := readme.WithPrefix(cmds, "export EGCTL_CONFIG=")
	if len(exports) != 1 {
		t.Fatalf("README.md shows %d `export EGCTL_CONFIG=...` lines, want one", len(exports))
	}
	export := exports[0].Text
	seen := map[string]bool{}
	for _, c := range cmds {
		if c.Text != export && !strings.HasPrefix(kubectlExec.ReplaceAllString(c.Text, ""), "egctl ") {
			continue
		}
		want, ok := readmeEgctl[c.Text]
		if !ok {
			t.Errorf("%s: an egctl line TestReadmeEgctlCommands has no expectation for: add it to readmeEgctl", c)
			continue
		}
		seen[c.Text] = true
		forms, err := readme.Expand(c.Text)
		if err != nil {
			t.Errorf("%s: %v", c, err)
			continue
		}
		for _, form := range forms {
			t.Run(fmt.Sprintf("L%d %s", c.Line, form), func(t *testing.T) {
				s := newReadmeSeed(t)
				values := map[string]string{"ID": s.joinTokenID}
				if strings.HasPrefix(form, "egctl admin-token") {
					values["ID"] = s.adminTokenID
				}
				for k, v := range want.values {
					values[k] = v
				}
				line, err := readme.Substitute(form, values)
				if err != nil {
					t.Fatal(err)
				}
				line = replaceWord(line, exampleAlertID, strconv.FormatInt(s.alertID, 10))
				line = replaceWord(line, exampleAdminTokenID, s.adminTokenID)
				line = kubectlExec.ReplaceAllString(line, "")
				script := strings.ReplaceAll(export+"\n"+line, exampleAdminConf, s.conf)
				if line == export {
					script = strings.ReplaceAll(export, exampleAdminConf, s.conf) + "\negctl get policies"
				}
				code, out, errOut := runReadmeScript(t, bin, s.dir, script)
				if code != want.code {
					t.Fatalf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", line, code, want.code, out, errOut)
				}
				for key, words := range want.out {
					if !strings.Contains(form, key) {
						continue
					}
					for _, w := range words {
						if !strings.Contains(out, w) {
							t.Errorf("%s: stdout lacks %q:\n%s", line, w, out)
						}
					}
				}
				for _, w := range want.errs {
					if !strings.Contains(errOut, w) {
						t.Errorf("%s: stderr lacks %q:\n%s", line, w, errOut)
					}
				}
				for f, w := range want.files {
					if got := egctltest.ReadFile(t, filepath.Join(s.dir, f)); !strings.Contains(got, w) {
						t.Errorf("%s: %s lacks %q:\n%s", line, f, w, got)
					}
				}
				if strings.HasPrefix(line, "egctl explain --from web-1 --to db-1") {
					checkExplainExits(t, bin, s.dir, line, c.Comment)
				}
			})
		}
	}
	for text := range readmeEgctl {
		if !seen[text] {
			t.Errorf("readmeEgctl has %q, which README.md no longer shows: remove it", text)
		}
	}
}

// checkExplainExits runs the README's explain line changed to reach each
// exit status its comment documents.
func checkExplainExits(t *testing.T, bin, dir, line, comment string) {
	t.Helper()
	for _, tc := range []struct {
		code     int
		doc      string
		from, to string
	}{
		{3, "3 denied", "--port 5432/tcp", "--port 22/tcp"},
		{4, "4 would-deny", "--from web-1 --to db-1", "--from bastion --to 192.0.2.1"},
		{1, "1 bad input", "--port 5432/tcp", "--port 5432/nope"},
	} {
		if !strings.Contains(comment, tc.doc) {
			t.Errorf("the explain line's comment %q no longer documents %q: update checkExplainExits", comment, tc.doc)
			continue
		}
		variant := strings.Replace(line, tc.from, tc.to, 1)
		if code, out, errOut := runReadmeScript(t, bin, dir, variant); code != tc.code {
			t.Errorf("%s: exit %d, want %d (%s)\nstdout:\n%s\nstderr:\n%s", variant, code, tc.code, tc.doc, out, errOut)
		}
	}
}

// runReadmeScript runs script in bash in dir, with bin (holding egctl)
// first on PATH and no EGCTL_CONFIG but the script's.
func runReadmeScript(t *testing.T, bin, dir, script string) (int, string, string) {
	t.Helper()
	cmd := exec.Command("bash", "-e", "-o", "pipefail", "-c", script)
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envConfig+"=") && !strings.HasPrefix(kv, "PATH=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, asEgctl+"=1", "PATH="+bin+":"+os.Getenv("PATH"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return exit.ExitCode(), out.String(), errOut.String()
	case err != nil:
		t.Fatalf("%s: %v", script, err)
	}
	return 0, out.String(), errOut.String()
}

func replaceWord(line, old, new string) string {
	words := strings.Fields(line)
	for i, w := range words {
		if w == old {
			words[i] = new
		}
	}
	return strings.Join(words, " ")
}
