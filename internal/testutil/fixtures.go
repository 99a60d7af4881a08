package testutil

import (
	"embed"
	"html/template"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// The policy fixtures every test reads, in internal/testutil/testdata:
// shop.yaml is the documentation's example (docs/POLICY.md), mixed.yaml
// exercises host mode, monitor mode, CIDRs and IPv6 across three nodes.
// Tests that need them by name use PolicyFixture; tests that run over
// all (golden files, fuzz seeds) use PolicyFixtures.

// fixtures holds the same files, compiled in: programs built from this
// package with -trimpath (make demo's eastguard-demo) have no source tree
// to read them from, so everything that runs outside `go test` reads them
// here.
//
//go:embed testdata/*.yaml testdata/*.tmpl
var fixtures embed.FS

// PolicyFixtureData returns a fixture's contents ("shop.yaml") from the
// copy compiled into the binary.
func PolicyFixtureData(name string) []byte {
	b, err := fixtures.ReadFile("testdata/" + name)
	if err != nil {
		panic(err) // a name not in testdata is a programming error
	}
	return b
}

// fixtureDir is the testdata folder beside this file, wherever the test
// that asks runs from.
func fixtureDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "testdata")
}

// PolicyFixture returns the path of a policy fixture ("shop.yaml").
func PolicyFixture(name string) string { return filepath.Join(fixtureDir(), name) }

// PolicyFixtures returns the paths of the complete policy fixtures
// (shop.yaml and mixed.yaml).
func PolicyFixtures(t testing.TB) []string {
	t.Helper()
	var paths []string
	for _, name := range []string{"mixed.yaml", "shop.yaml"} {
		p := PolicyFixture(name)
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("policy fixture: %v", err)
		}
		paths = append(paths, p)
	}
	return paths
}

// LabWorkload places one workload of the lab policy.
type LabWorkload struct {
	Name      string // also its role label: web, db, client, ...
	Node      string
	Interface string // host side
	Addrs     []string
}

// Lab is the lab policy's shape.
type Lab struct {
	Workloads []LabWorkload
	// Port is the TCP port the client may reach web on (8080 if 0).
	Port int
	// Full adds UDP 5353 to client -> web, web -> db on TCP 5432, and
	// "no-ssh": TCP 22 denied from anywhere to every workload. Without it
	// a denied flow is named default-deny.
	Full bool
}

var (
	labTemplate      = template.Must(template.ParseFS(fixtures, "testdata/lab.yaml.tmpl"))
	sshAlertTemplate = template.Must(template.ParseFS(fixtures, "testdata/ssh-alert.yaml.tmpl"))
)

// LabPolicy renders the lab policy (testdata/lab.yaml.tmpl): the
// workloads and the Policy "shop" that lets role client reach role web.
func LabPolicy(lab Lab) string {
	if lab.Port == 0 {
		lab.Port = 8080
	}
	var b strings.Builder
	if err := labTemplate.Execute(&b, lab); err != nil {
		panic(err) // the template is fixed; only a broken checkout fails
	}
	return b.String()
}

// LabExtraPolicy is a second document for the lab policy: Policy "extra"
// lets the client reach web on TCP 9999 too. It starts with "---", to be
// appended to LabPolicy's output.
func LabExtraPolicy() string {
	return string(PolicyFixtureData("lab-extra.yaml"))
}

// SSHAlertPolicy renders testdata/ssh-alert.yaml.tmpl: the AlertRule
// "unexpected-ssh" (critical, any TCP 22 attempt to a managed workload,
// window 5m); with a webhookURL, it notifies the Webhook "security-team"
// there (format json), also returned, whose secret comes from secretFile
// (a name under the controller's --secrets-dir), or from
// $EASTGUARD_WEBHOOK_SECRET when secretFile is "".
func SSHAlertPolicy(webhookURL, secretFile string) string {
	var b strings.Builder
	if err := sshAlertTemplate.Execute(&b, struct{ URL, SecretFile string }{webhookURL, secretFile}); err != nil {
		panic(err)
	}
	return b.String() + "\n"
}

// AddPolicySeeds adds every complete policy fixture to a fuzz corpus.
func AddPolicySeeds(f *testing.F) {
	f.Helper()
	for _, p := range PolicyFixtures(f) {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}
