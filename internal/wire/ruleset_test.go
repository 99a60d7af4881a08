package wire

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/eastguard/eastguard/internal/testutil"

	pb "github.com/eastguard/eastguard/proto/eastguard/v1"

	"google.golang.org/protobuf/proto"

	"github.com/eastguard/eastguard/internal/compile"
	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

func compiled(t *testing.T) map[string]*ruleset.RuleSet {
	t.Helper()
	out := make(map[string]*ruleset.RuleSet)
	for _, f := range []string{"shop.yaml", "mixed.yaml"} {
		set, diags, err := policy.Load(testutil.PolicyFixture(f))
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
		got, back, err := throughWire(t, rs)
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
			var dm pb.RuleSetDelta
			if err := proto.Unmarshal(b, &dm); err != nil {
				t.Fatal(err)
			}
			back, err := ToDelta(&dm)
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
		m    *pb.RuleSet
		want string
	}{
		{"address length", &pb.RuleSet{Ipcache: []*pb.IPCacheEntry{{Addr: []byte{1, 2, 3}, Bits: 8}}}, "ipcache[0]: address of 3 bytes"},
		{"prefix length", &pb.RuleSet{Ipcache: []*pb.IPCacheEntry{{Addr: []byte{10, 0, 0, 0}, Bits: 33}}}, "prefix length 33 out of range"},
		{"port", &pb.RuleSet{Entries: []*pb.Entry{{Port: 70000}}}, "entries[0]: port: 70000 out of range"},
		{"icmp type", &pb.RuleSet{Entries: []*pb.Entry{{Protocol: 1, IcmpType: &big}}}, "icmpType: 300 out of range"},
		{"mode", &pb.RuleSet{Endpoints: []*pb.Endpoint{{Mode: 256}}}, "endpoints[0]: mode"},
		{"endpoint address", &pb.RuleSet{Endpoints: []*pb.Endpoint{{Interface: "auto", Addresses: [][]byte{{10, 0, 0}}}}}, "endpoints[0].addresses[0]: address of 3 bytes"},
		{"rule name", &pb.RuleSet{Rules: []*pb.RuleName{{Id: 1}}}, "rules[0]: rule 1 has no name"},
	}
	for _, c := range cases {
		_, err := ToRuleSet(c.m)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
		if c.name == "port" && !errors.Is(err, errRange) {
			t.Errorf("port error does not match errRange: %v", err)
		}
	}
	if _, err := ToDelta(&pb.RuleSetDelta{DeleteIpcache: []*pb.Prefix{{Addr: []byte{1}}}}); err == nil {
		t.Error("bad delete prefix accepted")
	}
}

// TestRoundTripAutoEndpoint: an auto endpoint's addresses cross the wire,
// and the hash computed before is the hash after.
func TestRoundTripAutoEndpoint(t *testing.T) {
	rs := &ruleset.RuleSet{Node: "n1", Version: 3, Endpoints: []ruleset.Endpoint{{
		ID: 1, Workload: "pod", Interface: ruleset.InterfaceAuto, Identity: 300,
		Addresses: []netip.Addr{netip.MustParseAddr("10.250.1.2"), netip.MustParseAddr("fd0e::2")},
	}}}
	got, _, err := throughWire(t, rs)
	if err != nil {
		t.Fatal(err)
	}
	if got.Hash() != rs.Hash() || !got.Endpoints[0].Equal(rs.Endpoints[0]) {
		t.Errorf("after the wire: %+v, hash %s; before: %+v, hash %s", got.Endpoints, got.Hash(), rs.Endpoints, rs.Hash())
	}
}

// throughWire sends rs (with its hash) through protobuf encoding and back.
func throughWire(t *testing.T, rs *ruleset.RuleSet) (*ruleset.RuleSet, *pb.RuleSet, error) {
	t.Helper()
	b, err := proto.Marshal(FromRuleSet(rs, rs.Hash()))
	if err != nil {
		t.Fatal(err)
	}
	var back pb.RuleSet
	if err := proto.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	got, err := ToRuleSet(&back)
	return got, &back, err
}
