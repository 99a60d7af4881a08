// Package repo_test checks the rules of the repository itself, as `make
// lint` and `make test` run them: dependencies run one way (mains ->
// agent/... | controller/... -> internal/...), the production binaries
// do not depend on client-go's all-groups packages, no build output or
// other binary is committed, the README and docs/ link only inside the
// repository, the README's layout section lists exactly the folders
// and packages the tree has, and every command the README shows is run
// by a test (readme_test.go).
package repo_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/eastguard/eastguard"

// root is the repository's top directory.
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("no go.mod at %s: %v", dir, err)
	}
	return dir
}

type pkg struct {
	ImportPath string
	Dir        string
	Deps       []string // non-test dependencies, transitive
}

func packages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json=ImportPath,Dir,Deps", "./...")
	cmd.Dir = root(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages; the module has more", len(pkgs))
	}
	return pkgs
}

// rel is a package's path inside the module ("" for the module root).
func rel(importPath string) string {
	return strings.TrimPrefix(strings.TrimPrefix(importPath, module), "/")
}

func under(path, dir string) bool { return path == dir || strings.HasPrefix(path, dir+"/") }

// TestDependenciesRunOneWay: non-test code of agent/... never depends on
// controller/... nor the reverse; internal/... depends on neither;
// proto/... (generated code) on nothing of the project.
func TestDependenciesRunOneWay(t *testing.T) {
	rules := []struct {
		from      string
		forbidden []string
	}{
		{"agent", []string{"controller", "test"}},
		{"controller", []string{"agent", "test"}},
		{"internal", []string{"agent", "controller", "test"}},
		{"proto", []string{"agent", "controller", "internal", "test"}},
	}
	checked := 0
	for _, p := range packages(t) {
		from := rel(p.ImportPath)
		for _, r := range rules {
			if !under(from, r.from) {
				continue
			}
			checked++
			for _, d := range p.Deps {
				if !strings.HasPrefix(d, module+"/") {
					continue
				}
				for _, f := range r.forbidden {
					if under(rel(d), f) {
						t.Errorf("%s depends on %s: %s/... must not depend on %s/...", from, rel(d), r.from, f)
					}
				}
			}
		}
	}
	if checked < 20 {
		t.Errorf("only %d packages checked", checked)
	}
}

// slowPackages are the client-go packages that bring in the clients or
// informers of every Kubernetes API group (about 230 more k8s.io
// packages, more than half of a cold `make build`), or the scheme of
// every group (k8s.io/client-go/kubernetes/scheme: all 56 k8s.io/api
// packages), with what to import instead. A key ending in "/" is every
// package under it.
var slowPackages = map[string]string{
	"k8s.io/client-go/kubernetes": "k8s.io/client-go/rest behind a narrow interface " +
		"(as controller/kube.Client and its restClient)",
	"k8s.io/client-go/kubernetes/scheme": "a runtime.Scheme of the few groups used " +
		"(as controller/kube's, for the rest client and tools/record)",
	"k8s.io/client-go/kubernetes/typed/": "k8s.io/client-go/rest with a small scheme behind a narrow interface " +
		"(as controller/kube.Client): every typed client imports kubernetes/scheme",
	"k8s.io/client-go/applyconfigurations/": "plain create and update through k8s.io/client-go/rest " +
		"(as controller/kube.Client)",
	"k8s.io/client-go/gentype": "k8s.io/client-go/rest (gentype brings in client-go/testing and applyconfigurations)",
	"k8s.io/client-go/testing": "nothing in a binary: it is the fake clients' (tests only)",
	"k8s.io/client-go/discovery": "a GET of /apis/GROUP/VERSION through k8s.io/client-go/rest " +
		"(as controller/kube.Client.ServerResources)",
	"k8s.io/client-go/informers": "cache.NewSharedIndexInformer over a cache.ListWatch of the client " +
		"and the listers of k8s.io/client-go/listers/GROUP/VERSION (as controller/kube's Source does)",
	"k8s.io/client-go/dynamic/dynamicinformer": "cache.NewSharedIndexInformer over a cache.ListWatch of " +
		"the dynamic client's Resource(gvr) and cache.NewGenericLister (as controller/kube's Source does)",
}

// slowPackage returns what to import instead of imp when it is one of
// slowPackages.
func slowPackage(imp string) (string, bool) {
	if instead, ok := slowPackages[imp]; ok && !strings.HasSuffix(imp, "/") {
		return instead, true
	}
	for prefix, instead := range slowPackages {
		if strings.HasSuffix(prefix, "/") && strings.HasPrefix(imp, prefix) {
			return instead, true
		}
	}
	return "", false
}

// TestSlowPackageMatches: the rule's matching, on the imports the
// controller had before it used the rest client directly, and on those
// it keeps.
func TestSlowPackageMatches(t *testing.T) {
	for imp, slow := range map[string]bool{
		"k8s.io/client-go/kubernetes":                         true,
		"k8s.io/client-go/kubernetes/scheme":                  true,
		"k8s.io/client-go/kubernetes/typed/core/v1":           true,
		"k8s.io/client-go/kubernetes/typed/authentication/v1": true,
		"k8s.io/client-go/applyconfigurations/core/v1":        true,
		"k8s.io/client-go/gentype":                            true,
		"k8s.io/client-go/testing":                            true,
		"k8s.io/client-go/discovery":                          true,
		"k8s.io/client-go/informers":                          true,
		"k8s.io/client-go/dynamic/dynamicinformer":            true,
		"k8s.io/client-go/rest":                               false,
		"k8s.io/client-go/dynamic":                            false,
		"k8s.io/client-go/tools/cache":                        false,
		"k8s.io/client-go/tools/record":                       false,
		"k8s.io/client-go/listers/core/v1":                    false,
		"k8s.io/client-go/kubernetes/typed":                   false, // no such package; only what is under it
	} {
		if _, got := slowPackage(imp); got != slow {
			t.Errorf("slowPackage(%s) = %v, want %v", imp, got, slow)
		}
	}
}

// TestBinariesAvoidAllGroupsClientGo: the production binaries do not
// depend on slowPackages. A cold `make demo` is mostly compiling Go, and
// these packages were most of it (issue 18: the demo, build included,
// under 3 minutes on a fresh 2-core machine). Tests may still use the
// fake clientset.
func TestBinariesAvoidAllGroupsClientGo(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`,
		"./agent/cmd/...", "./controller/cmd/...")
	cmd.Dir = root(t)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := 0
	sawClientGo := false
	for line := range strings.Lines(string(out)) {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		deps++
		if fields[0] == "k8s.io/client-go/rest" {
			sawClientGo = true // the check below is not vacuous
		}
		for _, imp := range fields[1:] {
			if instead, ok := slowPackage(imp); ok {
				t.Errorf("%s imports %s, which compiles every Kubernetes API group (their clients, informers or scheme) "+
					"and makes a cold `make demo` minutes slower (issue 18); import %s instead", fields[0], imp, instead)
			}
		}
	}
	if deps < 100 || !sawClientGo {
		t.Fatalf("go list found %d dependencies of the binaries (client-go's rest among them: %v); the rule checks nothing", deps, sawClientGo)
	}
}

// TestNoCommittedBinaries: no ELF file or other binary is committed
// except the eBPF objects bpf2go generates and images for the docs.
func TestNoCommittedBinaries(t *testing.T) {
	cmd := exec.Command("git", "ls-files", "-z")
	cmd.Dir = root(t)
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("skipped: not a git checkout (%v); the rule is checked where git is", err)
	}
	allowed := regexp.MustCompile(`(_bpfel\.o|_bpfeb\.o|\.png)$`)
	files := strings.Split(strings.TrimRight(string(out), "\x00"), "\x00")
	for _, f := range files {
		if allowed.MatchString(f) {
			continue
		}
		head := make([]byte, 8000)
		fh, err := os.Open(filepath.Join(root(t), f))
		if err != nil {
			continue // deleted in the work tree
		}
		n, _ := io.ReadFull(fh, head)
		fh.Close()
		head = head[:n]
		switch {
		case bytes.HasPrefix(head, []byte("\x7fELF")):
			t.Errorf("%s: a committed ELF binary (build outputs belong in bin/ and .gitignore)", f)
		case bytes.IndexByte(head, 0) >= 0:
			t.Errorf("%s: a committed binary file", f)
		}
	}
	if len(files) < 100 {
		t.Errorf("git ls-files listed %d files", len(files))
	}
}

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// markdownLinks returns the link targets of a Markdown file, outside
// code blocks and code spans.
func markdownLinks(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	fenced := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if fenced || strings.HasPrefix(line, "    ") || strings.HasPrefix(line, "\t") {
			continue
		}
		for _, m := range mdLink.FindAllStringSubmatch(line, -1) {
			out = append(out, m[1])
		}
	}
	return out
}

// TestDocsLinkInsideRepository: every link of the README and docs/ is a
// file or folder of the repository (an anchor may follow it); none leaves
// it, and none is a URL.
func TestDocsLinkInsideRepository(t *testing.T) {
	top := root(t)
	docs, _ := filepath.Glob(filepath.Join(top, "docs", "*.md"))
	if len(docs) < 3 {
		t.Errorf("docs/ has %d Markdown files, want ARCHITECTURE, POLICY and OPERATIONS at least", len(docs))
	}
	links := 0
	for _, doc := range append([]string{filepath.Join(top, "README.md")}, docs...) {
		name, _ := filepath.Rel(top, doc)
		for _, l := range markdownLinks(t, doc) {
			links++
			target, _, _ := strings.Cut(l, "#")
			switch {
			case strings.Contains(l, "://") || strings.HasPrefix(l, "mailto:"):
				t.Errorf("%s links outside the repository: %s", name, l)
				continue
			case target == "":
				continue // an anchor in the same file
			}
			abs := filepath.Join(filepath.Dir(doc), target)
			if r, err := filepath.Rel(top, abs); err != nil || r == ".." || strings.HasPrefix(r, "../") {
				t.Errorf("%s links outside the repository: %s", name, l)
				continue
			}
			if _, err := os.Stat(abs); err != nil {
				t.Errorf("%s links to %s, which does not exist", name, l)
			}
		}
	}
	if links == 0 {
		t.Error("no links found: the parser is broken")
	}
}

// TestREADMELayout: the README's layout section (a code block under
// "## Layout", one "path/  what it is" line each) lists every top-level
// folder and every Go package folder, and nothing else.
func TestREADMELayout(t *testing.T) {
	top := root(t)
	data, err := os.ReadFile(filepath.Join(top, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## Layout\n")
	if !ok {
		t.Fatal(`README.md has no "## Layout" section`)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	_, block, ok := strings.Cut(section, "```\n")
	if !ok {
		t.Fatal("the layout section has no code block")
	}
	block, _, _ = strings.Cut(block, "```")
	listed := map[string]bool{}
	for _, line := range strings.Split(block, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], "/") || len(f) < 2 {
			t.Errorf("layout line %q: want \"path/  what it is\"", line)
			continue
		}
		listed[strings.TrimSuffix(f[0], "/")] = true
	}

	want := map[string]bool{}
	entries, err := os.ReadDir(top)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") && e.Name() != "bin" {
			want[e.Name()] = true
		}
	}
	want[".ci"] = true
	for _, p := range packages(t) {
		if r := rel(p.ImportPath); r != "" {
			want[r] = true
		}
	}
	for _, d := range nestedModulePackages(t, top) {
		want[d] = true
	}
	// Folders without Go packages that hold the project's parts, and a
	// package behind a build tag.
	for _, d := range []string{"deploy/docker", "deploy/kubernetes", "deploy/kubernetes-ha", "deploy/systemd", "test/throughput"} {
		want[d] = true
	}
	for _, p := range slices.Sorted(maps.Keys(want)) {
		if !listed[p] {
			t.Errorf("README layout lacks %s/", p)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(listed)) {
		if !want[p] {
			t.Errorf("README layout lists %s/, which is not a top-level folder or a package", p)
		}
	}
}

// nestedModules are the modules inside the repository besides the main
// one (their own go.mod keeps their dependencies out of the main
// module's): test/kube builds kube-apiserver from k8s.io/kubernetes.
var nestedModules = []string{"test/kube"}

// nestedModulePackages lists the package folders of the nested modules,
// relative to the repository's top, and checks that the main module's
// `go list ./...` does not descend into them.
func nestedModulePackages(t *testing.T, top string) []string {
	t.Helper()
	var dirs []string
	for _, m := range nestedModules {
		if _, err := os.Stat(filepath.Join(top, m, "go.mod")); err != nil {
			t.Errorf("nested module %s: %v", m, err)
			continue
		}
		cmd := exec.Command("go", "list", "-e", "-f", "{{.Dir}}", "./...")
		cmd.Dir = filepath.Join(top, m)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list in %s: %v", m, err)
		}
		for _, dir := range strings.Fields(string(out)) {
			r, err := filepath.Rel(top, dir)
			if err != nil {
				t.Fatal(err)
			}
			dirs = append(dirs, filepath.ToSlash(r))
		}
	}
	for _, p := range packages(t) {
		for _, m := range nestedModules {
			if under(rel(p.ImportPath), m) {
				t.Errorf("the main module lists %s, which belongs to the nested module %s", p.ImportPath, m)
			}
		}
	}
	return dirs
}
