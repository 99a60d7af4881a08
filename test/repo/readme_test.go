package repo_test

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/testutil/readme"
)

// readmeClaims says which test runs each command the README shows, by
// the command's prefix (the longest matching prefix claims it). Each of
// these tests reads the README through internal/testutil/readme, so it
// runs the README's own text.
var readmeClaims = []struct{ prefix, test string }{
	{"egctl ", "TestReadmeEgctlCommands"},
	{"export EGCTL_CONFIG=", "TestReadmeEgctlCommands"},
	{"kubectl -n eastguard exec eastguard-controller-0 -- egctl ", "TestReadmeEgctlCommands"},
	{"eastguard-controller ", "TestReadmeControllerCommands"},
	{"eastguard-agent ", "TestReadmeAgentCommands"},
	{"install ", "TestReadmeAgentCommands"},
	{"sudo deploy/install.sh ", "TestReadmeInstallCommands"},
	{"make ", "TestReadmeMakeTargets"},
	{"sudo make ", "TestReadmeMakeTargets"},
	{"kubectl apply -k deploy/kubernetes", "TestPrivilegedKubernetesMode"},
	{"kubectl apply -f - <<", "TestPrivilegedKubernetesMode"},
	{"kubectl get policies", "TestPrivilegedKubernetesMode"},
	{"kubectl describe policy shop", "TestPrivilegedKubernetesMode"},
	{"kubectl label namespace monitoring ", "TestPrivilegedKubeReadmeLabelScraper"},
}

// claim returns the test that runs a command ("" if none does).
func claim(text string) (prefix, test string) {
	for _, c := range readmeClaims {
		if strings.HasPrefix(text, c.prefix) && len(c.prefix) > len(prefix) {
			prefix, test = c.prefix, c.test
		}
	}
	return prefix, test
}

// TestReadmeCommandsHaveTests: every command the README shows is claimed
// by a test in readmeClaims; each claimed test exists in the repository
// (test/kube's module included), in a package whose tests read the
// README through internal/testutil/readme; and no claim is stale.
func TestReadmeCommandsHaveTests(t *testing.T) {
	top := root(t)
	cmds := readme.Commands(t)
	used := map[string]bool{}
	for _, c := range cmds {
		prefix, test := claim(c.Text)
		if test == "" {
			t.Errorf("%s: no test runs this command. Run it from a test that reads it with internal/testutil/readme "+
				"(egctl lines: readmeEgctl in controller/cmd/egctl/readme_test.go), then claim its prefix in readmeClaims (test/repo/readme_test.go)", c)
			continue
		}
		used[prefix] = true
	}
	for _, c := range readmeClaims {
		if !used[c.prefix] {
			t.Errorf("readmeClaims: %q claims no command README.md shows: remove it", c.prefix)
		}
	}

	// Where each test function is defined, and which package folders
	// have a test file that reads the README.
	defined := map[string]string{}
	readers := map[string]bool{}
	funcDecl := regexp.MustCompile(`(?m)^func (Test\w+)\(t \*testing\.T\)`)
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "bin" || d.Name() == "node_modules") && p != top {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(top, p)
		for _, m := range funcDecl.FindAllStringSubmatch(string(src), -1) {
			defined[m[1]] = filepath.Dir(rel)
		}
		if strings.Contains(string(src), `"`+module+`/internal/testutil/readme"`) {
			readers[filepath.Dir(rel)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var tests []string
	for _, c := range readmeClaims {
		if !slices.Contains(tests, c.test) {
			tests = append(tests, c.test)
		}
	}
	for _, test := range tests {
		dir, ok := defined[test]
		switch {
		case !ok:
			t.Errorf("readmeClaims names %s, which no _test.go file of the repository defines", test)
		case !readers[dir]:
			t.Errorf("%s (in %s) is claimed to run README commands, but no test of %s reads them with internal/testutil/readme", test, dir, dir)
		}
	}
}

// TestReadmeMakeTargets: every make target the README's commands name is
// listed by `make help` (a target of the Makefile with a `## ` help
// text). Running them here would recurse into the test suite; `make test`
// and `make demo` run the rest.
func TestReadmeMakeTargets(t *testing.T) {
	cmd := exec.Command("make", "--no-print-directory", "-s", "help")
	cmd.Dir = root(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make help: %v", err)
	}
	helped := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			helped[f[0]] = true
		}
	}
	n := 0
	for _, c := range readme.Commands(t) {
		if _, test := claim(c.Text); test != "TestReadmeMakeTargets" {
			continue
		}
		words := strings.Fields(strings.TrimPrefix(c.Text, "sudo "))[1:]
		targets := 0
		for _, w := range words {
			if strings.Contains(w, "=") {
				continue // a variable
			}
			if strings.HasPrefix(w, "-") {
				t.Errorf("%s: make flags are not checked here", c)
				continue
			}
			targets++
			n++
			if !helped[w] {
				t.Errorf("%s: `make help` does not list %q: give it a target with a `## ` help text in the Makefile", c, w)
			}
		}
		if targets == 0 {
			t.Errorf("%s: names no target", c)
		}
	}
	if n < 5 {
		t.Errorf("only %d make targets found in the README", n)
	}
}
