package state

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/ruleset"
)

func sample() *ruleset.RuleSet {
	return &ruleset.RuleSet{
		Node:      "n1",
		Version:   7,
		Endpoints: []ruleset.Endpoint{{ID: 1, Workload: "web", Interface: "veth0", Identity: 300}},
		IPCache:   []ruleset.IPCacheEntry{{Prefix: netip.MustParsePrefix("10.250.1.2/32"), Identity: 300}},
		Rules:     []ruleset.RuleName{{ID: 1, Name: "p/r"}},
		Entries:   []ruleset.Entry{{Endpoint: 1, Peer: 0, Protocol: ruleset.ProtocolTCP, Port: 80, Verdict: ruleset.VerdictAllowed, Rule: 1}},
	}
}

func TestSaveLoad(t *testing.T) {
	d, err := Open(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.LoadRuleSet(); !errors.Is(err, ErrNone) {
		t.Fatalf("empty dir: err = %v, want ErrNone", err)
	}
	if err := d.SaveRuleSet(sample()); err != nil {
		t.Fatal(err)
	}
	got, err := d.LoadRuleSet()
	if err != nil {
		t.Fatal(err)
	}
	if got.Hash() != sample().Hash() || got.Version != 7 {
		t.Errorf("loaded a different rule set: %+v", got)
	}
	st, err := os.Stat(filepath.Join(d.Path(), ruleSetFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	entries, _ := os.ReadDir(d.Path())
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestLoadRefusesCorruptOrInvalid(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(d.Path(), ruleSetFile)
	os.WriteFile(path, []byte(`{"node": "n1", "endpoints": [`), 0o600)
	if _, err := d.LoadRuleSet(); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("truncated file: err = %v, want an error naming %s", err, path)
	}
	os.WriteFile(path, []byte(`{"node": ""}`), 0o600)
	if _, err := d.LoadRuleSet(); err == nil || !strings.Contains(err.Error(), "empty node name") {
		t.Errorf("invalid rule set: err = %v", err)
	}
}
