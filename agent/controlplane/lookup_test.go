package controlplane

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// TestLookupAnswers: the agent answers a lookup with the rule set in
// force and the datapath's decision for the workload's endpoint, and says
// why when it cannot: bad request, no datapath, no rule set, unknown
// workload, a failing datapath, too many lookups.
func TestLookupAnswers(t *testing.T) {
	enf := &memEnforcer{}
	c := testClient(t, enf)
	var asked []ruleset.EndpointID
	var fail error
	c.cfg.Lookup = func(ep ruleset.EndpointID, q LookupQuery) (LookupResult, error) {
		asked = append(asked, ep)
		if fail != nil {
			return LookupResult{}, fail
		}
		return LookupResult{Generation: 4, Interfaces: 1, Mode: ruleset.ModeMonitor, PeerIdentity: 300, Verdict: ruleset.VerdictWouldDeny, Rule: 1}, nil
	}
	req := wire.FromLookup(wire.Lookup{ID: 9, Workload: "web", Direction: ruleset.Ingress, Peer: netip.MustParseAddr("10.250.33.2"),
		Protocol: ruleset.ProtocolTCP, Port: 22})
	answer := func(m *pb.LookupRequest) *pb.LookupAnswer {
		t.Helper()
		a := c.lookup(m).GetLookupAnswer()
		if a == nil || a.GetId() != m.GetId() {
			t.Fatalf("answer %v to request %d", a, m.GetId())
		}
		return a
	}
	if a := answer(req); !strings.Contains(a.GetError(), "no rule set in force") {
		t.Errorf("before any rule set: %v", a)
	}
	rs := ruleSet(3, 80)
	if _, err := enf.Apply(rs); err != nil {
		t.Fatal(err)
	}
	a := answer(req)
	if a.GetError() != "" || a.GetAppliedVersion() != 3 || a.GetAppliedHash() != rs.Hash() || a.GetEndpoint() != 1 ||
		a.GetInterfaces() != 1 || a.GetVerdict() != uint32(ruleset.VerdictWouldDeny) || a.GetRule() != 1 ||
		a.GetPeerIdentity() != 300 || a.GetMode() != uint32(ruleset.ModeMonitor) || a.GetGeneration() != 4 {
		t.Errorf("answer %v", a)
	}
	if err := wire.CheckLookupAnswer(a); err != nil {
		t.Errorf("the agent's own answer does not pass the controller's check: %v", err)
	}
	other := wire.FromLookup(wire.Lookup{ID: 10, Workload: "db", Peer: netip.MustParseAddr("10.250.33.2"), Protocol: ruleset.ProtocolTCP, Port: 22})
	if a := answer(other); !strings.Contains(a.GetError(), "workload db has no endpoint in version 3") || a.GetAppliedVersion() != 3 {
		t.Errorf("unknown workload: %v", a)
	}
	bad := wire.FromLookup(wire.Lookup{ID: 11, Workload: "web", Peer: netip.MustParseAddr("10.250.33.2")})
	bad.PeerAddr = []byte{1, 2, 3}
	if a := answer(bad); !strings.Contains(a.GetError(), "invalid request: lookup.peerAddr: 3 bytes") {
		t.Errorf("bad address: %v", a)
	}
	fail = errors.New("read eg_policy: boom")
	if a := answer(req); a.GetError() != "datapath lookup: read eg_policy: boom" {
		t.Errorf("failing datapath: %v", a)
	}
	if len(asked) != 2 || asked[0] != 1 {
		t.Errorf("the datapath was asked for %v, want endpoint 1 twice", asked)
	}
	// The clock stands still: the bucket (20) runs out and stays out.
	now := time.Now()
	c.now = func() time.Time { return now }
	busy := 0
	for range 2 * lookupBurst {
		if strings.Contains(answer(req).GetError(), "too many lookups") {
			busy++
		}
	}
	if busy < lookupBurst {
		t.Errorf("%d of %d lookups refused at a standing clock, want at least %d", busy, 2*lookupBurst, lookupBurst)
	}
	c.cfg.Lookup = nil
	if a := answer(req); !strings.Contains(a.GetError(), "cannot look up") {
		t.Errorf("without a datapath: %v", a)
	}
}
