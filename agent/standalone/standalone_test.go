package standalone

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/eastguard/eastguard/agent/enforcer"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
)

// policyOn allows role client to reach web on port, both on node n1.
func policyOn(port string) string {
	p, err := strconv.Atoi(port)
	if err != nil {
		panic(err)
	}
	return testutil.LabPolicy(testutil.Lab{Port: p, Workloads: []testutil.LabWorkload{
		{Name: "web", Node: "n1", Interface: "veth-web", Addrs: []string{"10.250.1.2"}},
		{Name: "client", Node: "n1", Interface: "veth-client", Addrs: []string{"10.250.3.2"}},
	}})
}

// recorder is an Applier that keeps what it was given.
type recorder struct {
	mu      sync.Mutex
	applied []*ruleset.RuleSet
	books   []enforcer.AddressBook
	changed chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 16)} }

func (r *recorder) apply(rs *ruleset.RuleSet, book enforcer.AddressBook) error {
	r.mu.Lock()
	r.applied = append(r.applied, rs)
	r.books = append(r.books, book)
	r.mu.Unlock()
	r.changed <- struct{}{}
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.applied)
}

func (r *recorder) last() *ruleset.RuleSet {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied[len(r.applied)-1]
}

// waitApplied waits for the n-th rule set.
func (r *recorder) waitApplied(t *testing.T, n int) *ruleset.RuleSet {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for r.count() < n {
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("rule set %d not applied (have %d)", n, r.count())
		}
	}
	return r.last()
}

// ports returns the ports of the rule set's allowed entries.
func ports(rs *ruleset.RuleSet) []uint16 {
	var out []uint16
	for _, e := range rs.Entries {
		if e.Verdict == ruleset.VerdictAllowed {
			out = append(out, e.Port)
		}
	}
	return out
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// start runs src until the test ends.
func start(t *testing.T, src *Source, rec *recorder) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, rec.apply) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// TestPolicyDirReload: the policy directory is compiled for the node and
// applied; a change is applied again; an invalid change is logged with its
// position and applies nothing, the rule set in force stays; fixing it
// applies the fix.
func TestPolicyDirReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "shop.yaml")
	write(t, file, policyOn("8080"))
	core, logs := observer.New(zap.InfoLevel)
	rec := newRecorder()
	start(t, &Source{Node: "n1", PolicyDir: dir, Poll: 20 * time.Millisecond, Log: zap.New(core)}, rec)

	rs := rec.waitApplied(t, 1)
	if got := ports(rs); len(got) != 2 || got[0] != 8080 || got[1] != 8080 {
		t.Fatalf("first rule set allows ports %v, want 8080 at both ends", got)
	}
	if len(rs.Endpoints) != 2 || rs.Node != "n1" {
		t.Errorf("first rule set: node %q, %d endpoints", rs.Node, len(rs.Endpoints))
	}
	if book := rec.books[0]; book[rs.IPCache[0].Prefix.Addr()] == "" {
		t.Errorf("address book %v does not name %v", book, rs.IPCache[0].Prefix.Addr())
	}

	write(t, file, policyOn("443"))
	if got := ports(rec.waitApplied(t, 2)); len(got) != 2 || got[0] != 443 {
		t.Fatalf("after the change: ports %v, want 443", got)
	}

	// An invalid port: refused with file:line:col, nothing applied.
	write(t, file, policyOn("99999"))
	deadline := time.Now().Add(20 * time.Second)
	for logs.FilterMessage("policy input rejected; the rule set in force stays").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the invalid policy was not reported")
		}
		time.Sleep(20 * time.Millisecond)
	}
	entry := logs.FilterMessage("policy input rejected; the rule set in force stays").All()[0]
	msg := fmt.Sprint(entry.ContextMap()["error"])
	if !strings.Contains(msg, file+":19:") || !strings.Contains(msg, "99999 is out of range") {
		t.Errorf("rejection does not say where and what: %s", msg)
	}
	if n := rec.count(); n != 2 {
		t.Errorf("%d rule sets applied after the invalid change, want still 2", n)
	}

	write(t, file, policyOn("8443"))
	if got := ports(rec.waitApplied(t, 3)); len(got) != 2 || got[0] != 8443 {
		t.Fatalf("after the fix: ports %v, want 8443", got)
	}
}

// TestRuleSetFileReload: a compiled rule set is applied, reapplied when the
// file changes, and one for another node, or not JSON, is refused.
func TestRuleSetFileReload(t *testing.T) {
	dir := t.TempDir()
	polDir := filepath.Join(dir, "policy")
	if err := os.Mkdir(polDir, 0o755); err != nil {
		t.Fatal(err)
	}
	compiled := func(port string) string {
		t.Helper()
		write(t, filepath.Join(polDir, "shop.yaml"), policyOn(port))
		rs, _, err := (&Source{Node: "n1", PolicyDir: polDir, Log: zap.NewNop()}).Load()
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(rs)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	file := filepath.Join(dir, "n1.json")
	write(t, file, compiled("8080"))
	core, logs := observer.New(zap.InfoLevel)
	rec := newRecorder()
	start(t, &Source{Node: "n1", RuleSetFile: file, Poll: 20 * time.Millisecond, Log: zap.New(core)}, rec)
	if got := ports(rec.waitApplied(t, 1)); len(got) != 2 || got[0] != 8080 {
		t.Fatalf("ports %v, want 8080", got)
	}

	for _, bad := range []string{`{"node": "n2"}`, `not json`} {
		n := logs.FilterMessage("policy input rejected; the rule set in force stays").Len()
		write(t, file, bad)
		deadline := time.Now().Add(20 * time.Second)
		for logs.FilterMessage("policy input rejected; the rule set in force stays").Len() == n {
			if time.Now().After(deadline) {
				t.Fatalf("%q was not refused", bad)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if n := rec.count(); n != 1 {
		t.Errorf("%d rule sets applied after refused input, want still 1", n)
	}
	write(t, file, compiled("443"))
	if got := ports(rec.waitApplied(t, 2)); len(got) != 2 || got[0] != 443 {
		t.Fatalf("ports %v, want 443", got)
	}
}

// configMapVolume lays dir out as the kubelet lays out a ConfigMap volume:
// the files in a timestamped dot-directory, "..data" pointing at it, and
// each visible name a symlink through "..data". Called again, it makes
// the update the kubelet makes: a new timestamped directory, "..data"
// swapped atomically (symlink and rename), the old directory removed.
func configMapVolume(t *testing.T, dir, stamp string, files map[string]string) {
	t.Helper()
	data := filepath.Join(dir, stamp)
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		write(t, filepath.Join(data, name), content)
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(stamp, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPolicyDirConfigMap: a policy directory mounted from a ConfigMap is
// read once per resource (not also through its dot-directory), and an
// update (a new timestamped directory, "..data" swapped) is applied
// exactly once. (Before: every resource appeared twice, so validation
// refused every version, and the swap left sizes and times of the
// visible names unchanged.)
func TestPolicyDirConfigMap(t *testing.T) {
	dir := t.TempDir()
	configMapVolume(t, dir, "..2026_12_07_01_00_00.123", map[string]string{"shop.yaml": policyOn("8080")})
	core, logs := observer.New(zap.InfoLevel)
	rec := newRecorder()
	poll := 20 * time.Millisecond
	start(t, &Source{Node: "n1", PolicyDir: dir, Poll: poll, Log: zap.New(core)}, rec)

	if got := ports(rec.waitApplied(t, 1)); len(got) != 2 || got[0] != 8080 {
		t.Fatalf("first rule set allows ports %v, want 8080 at both ends", got)
	}
	configMapVolume(t, dir, "..2026_12_07_02_00_00.456", map[string]string{"shop.yaml": policyOn("443")})
	if got := ports(rec.waitApplied(t, 2)); len(got) != 2 || got[0] != 443 {
		t.Fatalf("after the update: ports %v, want 443", got)
	}
	// Touching the data without changing it reloads nothing.
	later := time.Now().Add(time.Hour)
	os.Chtimes(filepath.Join(dir, "..2026_12_07_02_00_00.456", "shop.yaml"), later, later)
	// An observation window of 10 polls, not a synchronisation: nothing
	// else may be applied in it.
	time.Sleep(10 * poll)
	if n := rec.count(); n != 2 {
		t.Errorf("%d rule sets applied for one update, want 2 in all", n)
	}
	if bad := logs.FilterLevelExact(zap.ErrorLevel).All(); len(bad) > 0 {
		t.Errorf("errors logged: %v", bad[0].ContextMap())
	}
}

// TestPolicyFilesSkipDotEntries: dot-files and dot-directories are never
// read; symlinked directories are, once, even in a loop.
func TestPolicyFilesSkipDotEntries(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.yaml"), "x")
	write(t, filepath.Join(dir, ".hidden.yaml"), "x")
	os.Mkdir(filepath.Join(dir, ".git"), 0o755)
	write(t, filepath.Join(dir, ".git", "b.yaml"), "x")
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	write(t, filepath.Join(dir, "sub", "c.yml"), "x")
	write(t, filepath.Join(dir, "sub", "notes.txt"), "x")
	os.Symlink("..", filepath.Join(dir, "sub", "loop"))
	files, err := policyFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "a.yaml"), filepath.Join(dir, "sub", "c.yml")}
	if fmt.Sprint(files) != fmt.Sprint(want) {
		t.Errorf("files %v, want %v", files, want)
	}
}
