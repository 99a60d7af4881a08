package eastguardv1

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/eastguard/eastguard/controller/compile"
	"github.com/eastguard/eastguard/controller/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

func compiled(t *testing.T) map[string]*ruleset.RuleSet {
	t.Helper()
	out := make(map[string]*ruleset.RuleSet)
	for _, f := range []string{"shop.yaml", "mixed.yaml"} {
		set, diags, err := policy.Load("../../../controller/compile/testdata/" + f)
		if err != nil || diags.HasErrors() {
			t.Fatalf("load %s: %v %v", f, err, diags.Err())
		}
		res, err := compile.Compile(set, compile.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for node, rs := range res.RuleSets {
			out[node] = rs
		}
	}
	return out
}

// TestRoundTrip: a rule set and a delta survive the wire unchanged (by
// hash), through protobuf encoding.
func TestRoundTrip(t *testing.T) {
	sets := compiled(t)
	var prev *ruleset.RuleSet
	for node, rs := range sets {
		rs.Version = 7
		m := FromRuleSet(rs, rs.Hash())
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var back RuleSet
		if err := proto.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		got, err := back.ToRuleSet()
		if err != nil {
			t.Fatalf("%s: %v", node, err)
		}
		if got.Hash() != back.GetHash() || got.Version != 7 || got.Node != node {
			t.Errorf("%s: hash %s after the wire, %s before", node, got.Hash(), back.GetHash())
		}
		if err := got.Validate(); err != nil {
			t.Errorf("%s: %v", node, err)
		}
		if prev != nil {
			// A delta between two nodes' sets (renamed) is as good a test
			// as any: it touches every kind of item.
			other := prev.Clone()
			other.Node = node
			d := ruleset.Diff(other, rs)
			d.BaseHash, d.Hash, d.Version = other.Hash(), rs.Hash(), 8
			wire := FromDelta(&d, 7)
			b, _ := proto.Marshal(wire)
			var dm RuleSetDelta
			if err := proto.Unmarshal(b, &dm); err != nil {
				t.Fatal(err)
			}
			back, err := dm.ToDelta()
			if err != nil {
				t.Fatal(err)
			}
			res, err := other.ApplyDelta(*back)
			if err != nil {
				t.Fatalf("%s: apply delta after the wire: %v", node, err)
			}
			if res.Hash() != rs.Hash() || dm.GetBaseVersion() != 7 {
				t.Errorf("%s: delta result differs", node)
			}
		}
		prev = rs
	}
}

func TestFromWireRefusals(t *testing.T) {
	big := uint32(300)
	cases := []struct {
		name string
		m    *RuleSet
		want string
	}{
		{"address length", &RuleSet{Ipcache: []*IPCacheEntry{{Addr: []byte{1, 2, 3}, Bits: 8}}}, "ipcache[0]: address of 3 bytes"},
		{"prefix length", &RuleSet{Ipcache: []*IPCacheEntry{{Addr: []byte{10, 0, 0, 0}, Bits: 33}}}, "prefix length 33 out of range"},
		{"port", &RuleSet{Entries: []*Entry{{Port: 70000}}}, "entries[0]: port: 70000 out of range"},
		{"icmp type", &RuleSet{Entries: []*Entry{{Protocol: 1, IcmpType: &big}}}, "icmpType: 300 out of range"},
		{"mode", &RuleSet{Endpoints: []*Endpoint{{Mode: 256}}}, "endpoints[0]: mode"},
		{"rule name", &RuleSet{Rules: []*RuleName{{Id: 1}}}, "rules[0]: rule 1 has no name"},
	}
	for _, c := range cases {
		_, err := c.m.ToRuleSet()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
		if c.name == "port" && !errors.Is(err, errRange) {
			t.Errorf("port error does not match errRange: %v", err)
		}
	}
	if _, err := (&RuleSetDelta{DeleteIpcache: []*Prefix{{Addr: []byte{1}}}}).ToDelta(); err == nil {
		t.Error("bad delete prefix accepted")
	}
}
