package compile

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/testutil"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

// TestGolden compares the rendered rule set of every node of every
// policy fixture (internal/testutil/testdata) with testdata/golden/INPUT-NODE.{yaml,json}. Run with
// -update to rewrite them, then review the diff.
func TestGolden(t *testing.T) {
	inputs := testutil.PolicyFixtures(t)
	for _, in := range inputs {
		set, diags, err := policy.Load(in)
		if err != nil || set == nil {
			t.Fatalf("%s: %v %v", in, err, diags.Err())
		}
		res, err := Compile(set, Options{Validate: true})
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		base := strings.TrimSuffix(filepath.Base(in), ".yaml")
		for _, node := range res.Nodes {
			v, err := res.View(node, ruleset.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			y, err := v.YAML(res.Identities)
			if err != nil {
				t.Fatal(err)
			}
			j, err := v.JSON()
			if err != nil {
				t.Fatal(err)
			}
			for ext, got := range map[string][]byte{"yaml": y, "json": j} {
				path := filepath.Join("testdata", "golden", base+"-"+node+"."+ext)
				if *update {
					if err := os.WriteFile(path, got, 0o644); err != nil {
						t.Fatal(err)
					}
					continue
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test -update to create it)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs from the compiled output (run go test -run TestGolden -update and review the diff)\ngot:\n%s", path, got)
				}
			}
		}
	}
}

// TestDeterministic: document and file order, and repeated runs, change
// nothing: same rule sets, same hashes, same bytes.
func TestDeterministic(t *testing.T) {
	data, err := os.ReadFile(testutil.PolicyFixture("mixed.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs := strings.Split(string(data), "\n---\n")
	reversed := slices.Clone(docs)
	slices.Reverse(reversed)
	var outs [][]byte
	for _, input := range []string{strings.Join(docs, "\n---\n"), strings.Join(reversed, "\n---\n"), strings.Join(docs, "\n---\n")} {
		set, diags := policy.ParseAndValidate("in.yaml", []byte(input))
		if set == nil {
			t.Fatal(diags.Err())
		}
		res, err := Compile(set, Options{})
		if err != nil {
			t.Fatal(err)
		}
		var all []byte
		for _, n := range res.Nodes {
			v, _ := res.View(n, ruleset.Limits{})
			j, _ := v.JSON()
			all = append(all, j...)
		}
		outs = append(outs, all)
	}
	if !bytes.Equal(outs[0], outs[1]) || !bytes.Equal(outs[0], outs[2]) {
		t.Error("compiling the same policy in another document order or again gave different output")
	}
}

func TestCompileNodesSubset(t *testing.T) {
	set, full := mustCompile(t, truthInput)
	res, err := Compile(set, Options{Nodes: []string{"n2"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Nodes, []string{"n2"}) || res.RuleSets["n2"].Hash() != full.RuleSets["n2"].Hash() {
		t.Errorf("compiling n2 alone: nodes %v, same hash %v", res.Nodes, res.RuleSets["n2"].Hash() == full.RuleSets["n2"].Hash())
	}
	if _, err := Compile(set, Options{Nodes: []string{"nope"}}); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("unknown node: %v", err)
	}
}

// TestSizeLimit: a node that would not fit the datapath fails before
// anything is applied, naming the node, the map and the limit.
func TestSizeLimit(t *testing.T) {
	set, _ := mustCompile(t, truthInput)
	_, err := Compile(set, Options{Limits: ruleset.Limits{Endpoints: 100, IPCache: 100, Policy: 5, PolicyRanges: 100}})
	if !errors.Is(err, ruleset.ErrMapFull) {
		t.Fatalf("err = %v, want a map-full error", err)
	}
	if !strings.Contains(err.Error(), "node n1: map eg_policy is full: the rule set needs ") || !strings.Contains(err.Error(), "the limit is 5") {
		t.Errorf("error does not name the node, the map and the limit: %v", err)
	}
	// Two maps full on one node: each line names the node.
	_, err = Compile(set, Options{Limits: ruleset.Limits{Endpoints: 1, IPCache: 100, Policy: 5, PolicyRanges: 100}})
	lines := strings.Split(err.Error(), "\n")
	if len(lines) < 2 {
		t.Fatalf("want a line per full map: %v", err)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, "node ") || !strings.Contains(l, "is full") {
			t.Errorf("line %q does not name its node and map", l)
		}
	}
}

func TestDefaultMode(t *testing.T) {
	set, _ := mustCompile(t, truthInput)
	res, err := Compile(set, Options{DefaultMode: func(node string) ruleset.Mode {
		if node == "n1" {
			return ruleset.ModeMonitor
		}
		return ruleset.ModeEnforce
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range res.Nodes {
		for _, ep := range res.RuleSets[n].Endpoints {
			w, _ := set.Workload(ep.Workload)
			want := ruleset.ModeEnforce
			if w.Mode == policy.ModeMonitor || (w.Mode == policy.ModeUnset && n == "n1") {
				want = ruleset.ModeMonitor
			}
			if ep.Mode != want {
				t.Errorf("%s on %s: mode %s, want %s", ep.Workload, n, ep.Mode, want)
			}
		}
	}
}
