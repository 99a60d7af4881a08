package controlplane

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/agent/state"
	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

type memEnforcer struct {
	cur  *ruleset.RuleSet
	fail error
	n    int
}

func (m *memEnforcer) Apply(rs *ruleset.RuleSet) ([]string, error) {
	if err := rs.Validate(); err != nil {
		return nil, err
	}
	if m.fail != nil {
		return nil, m.fail
	}
	m.cur = rs
	m.n++
	return []string{"eg1-later"}, nil
}

func (m *memEnforcer) Current() *ruleset.RuleSet { return m.cur }

func testClient(t *testing.T, enf Enforcer) *Client {
	t.Helper()
	dir, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Node: "node-a", Controller: "127.0.0.1:1", State: dir, Enforcer: enf})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ruleSet(version uint64, port uint16) *ruleset.RuleSet {
	return &ruleset.RuleSet{
		Node: "node-a", Version: version,
		Endpoints: []ruleset.Endpoint{{ID: 1, Workload: "web", Interface: "eg1-web", Identity: 256}},
		IPCache:   []ruleset.IPCacheEntry{{Prefix: netip.MustParsePrefix("10.250.17.2/32"), Identity: 256}},
		Entries:   []ruleset.Entry{{Endpoint: 1, Direction: ruleset.Ingress, Protocol: ruleset.ProtocolTCP, Port: port, Verdict: ruleset.VerdictAllowed, Rule: 1}},
		Rules:     []ruleset.RuleName{{ID: 1, Name: "p/r"}},
	}
}

func full(rs *ruleset.RuleSet) *pb.RuleSet { return wire.FromRuleSet(rs, rs.Hash()) }

func delta(from, to *ruleset.RuleSet) *pb.RuleSetDelta {
	d := ruleset.Diff(from, to)
	d.BaseHash, d.Hash, d.Version = from.Hash(), to.Hash(), to.Version
	return wire.FromDelta(&d, from.Version)
}

func TestApplyAcks(t *testing.T) {
	enf := &memEnforcer{}
	c := testClient(t, enf)
	v1, v2, v3 := ruleSet(1, 80), ruleSet(2, 443), ruleSet(3, 8443)

	ack := c.applyDelta(delta(v1, v2))
	if ack.Code != pb.AckCode_ACK_CODE_DELTA_BASE {
		t.Errorf("delta with nothing in force: %v", ack)
	}
	ack = c.applyFull(full(v1))
	if ack.Code != pb.AckCode_ACK_CODE_APPLIED || ack.Version != 1 || ack.Hash != v1.Hash() || ack.PendingInterfaces[0] != "eg1-later" {
		t.Fatalf("full: %v", ack)
	}
	ack = c.applyDelta(delta(v1, v2))
	if ack.Code != pb.AckCode_ACK_CODE_APPLIED || enf.cur.Hash() != v2.Hash() || enf.cur.Version != 2 {
		t.Fatalf("delta: %v", ack)
	}
	// A delta from a base the agent does not have.
	ack = c.applyDelta(delta(v1, v3))
	if ack.Code != pb.AckCode_ACK_CODE_DELTA_BASE || ack.AppliedVersion != 2 || ack.Hash != v2.Hash() {
		t.Errorf("delta from the wrong base: %v", ack)
	}
	// Stale and repeated versions.
	if ack = c.applyFull(full(v1)); ack.Code != pb.AckCode_ACK_CODE_STALE_VERSION || ack.AppliedVersion != 2 {
		t.Errorf("older version: %v", ack)
	}
	if ack = c.applyFull(full(v2)); ack.Code != pb.AckCode_ACK_CODE_APPLIED || enf.n != 2 {
		t.Errorf("same version again: %v (applies: %d)", ack, enf.n)
	}
	// Another node's rule set, and a hash that does not match.
	other := ruleSet(5, 80)
	other.Node = "node-b"
	if ack = c.applyFull(full(other)); ack.Code != pb.AckCode_ACK_CODE_INVALID || !strings.Contains(ack.Error, `for node "node-b"`) {
		t.Errorf("other node: %v", ack)
	}
	lying := full(v3)
	lying.Hash = v1.Hash()
	if ack = c.applyFull(lying); ack.Code != pb.AckCode_ACK_CODE_INVALID {
		t.Errorf("wrong hash: %v", ack)
	}
	// The datapath refuses: the previous version stays and is named.
	enf.fail = errors.New("rule set does not fit")
	ack = c.applyFull(full(v3))
	if ack.Code != pb.AckCode_ACK_CODE_APPLY_FAILED || ack.AppliedVersion != 2 || ack.Hash != v2.Hash() || !strings.Contains(ack.Error, "does not fit") {
		t.Errorf("refused by the datapath: %v", ack)
	}
	if enf.cur.Version != 2 {
		t.Errorf("version in force %d, want 2", enf.cur.Version)
	}
}

func TestBackoff(t *testing.T) {
	b := &backoff{min: 100 * time.Millisecond, max: time.Second, cur: 100 * time.Millisecond}
	var last time.Duration
	for i := range 10 {
		d := b.next()
		hi := min(100*time.Millisecond<<i, time.Second)
		if d < hi/2 || d > hi {
			t.Errorf("attempt %d: %v outside [%v, %v]", i, d, hi/2, hi)
		}
		last = d
	}
	if last < 500*time.Millisecond {
		t.Errorf("backoff does not reach its maximum: %v", last)
	}
	b.reset()
	if d := b.next(); d > 100*time.Millisecond {
		t.Errorf("after reset: %v", d)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	dir, _ := state.Open(t.TempDir())
	for _, cfg := range []Config{
		{Node: "", Controller: "h:1", State: dir, Enforcer: &memEnforcer{}},
		{Node: "n", Controller: "no-port", State: dir, Enforcer: &memEnforcer{}},
		{Node: "n", Controller: "h:1", State: dir, Enforcer: &memEnforcer{}, JoinToken: "eg1.bad"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
}
