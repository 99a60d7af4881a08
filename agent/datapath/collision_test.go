package datapath

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// TestPrivilegedEndpointTableCollisions: interfaces whose indexes share a slot of the
// direct-mapped endpoint table are placed by probing; one more than the
// probe length is refused with an error naming it; a vanished interface
// leaves a tombstone that keeps the later ones reachable.
func TestPrivilegedEndpointTableCollisions(t *testing.T) {
	h := newHarness(t, Config{})
	base := uint32(200)
	var names []string
	for i := range epProbes + 1 {
		name := fmt.Sprintf("col%d", i)
		idx := base + uint32(i)*epSlots // same slot for all of them
		h.ns.IP(t, "link", "add", "name", name, "index", fmt.Sprint(idx), "type", "veth", "peer", "name", name+"p")
		h.ns.IP(t, "link", "set", name, "up")
		h.ifindex[name] = idx
		names = append(names, name)
	}
	ruleSet := func(n int) *ruleset.RuleSet {
		rs := &ruleset.RuleSet{Node: "n", Rules: []ruleset.RuleName{{ID: 1, Name: "p/r"}}}
		for i := range n {
			id := ruleset.Identity(300 + i)
			rs.Endpoints = append(rs.Endpoints, ruleset.Endpoint{ID: ruleset.EndpointID(i + 1), Workload: names[i], Interface: names[i], Identity: id})
			rs.IPCache = append(rs.IPCache, ruleset.IPCacheEntry{Prefix: pfx(fmt.Sprintf("10.250.1.%d/32", 10+i)), Identity: id})
			rs.Entries = append(rs.Entries, ruleset.Entry{Endpoint: ruleset.EndpointID(i + 1), Direction: ruleset.Ingress,
				Peer: ruleset.IdentityAny, Protocol: ruleset.ProtocolTCP, Port: 80, Verdict: ruleset.VerdictAllowed, Rule: 1})
		}
		return rs
	}
	check := func(i int, want int32) {
		t.Helper()
		dst := fmt.Sprintf("10.250.1.%d", 10+i)
		if got := h.toWorkload(names[i], tcp4(cli4, dst, uint16(1000+i), 80, tcpSYN)); got != want {
			t.Errorf("%s: port 80 verdict %d, want %d", names[i], got, want)
		}
		if got := h.toWorkload(names[i], tcp4(cli4, dst, uint16(2000+i), 81, tcpSYN)); got != retDrop {
			t.Errorf("%s: port 81 passes: not enforced by its own endpoint", names[i])
		}
	}

	_, err := h.d.Apply(ruleSet(epProbes + 1))
	if err == nil || !strings.Contains(err.Error(), "collides with") || !strings.Contains(err.Error(), names[epProbes]) {
		t.Fatalf("5 colliding interfaces: err = %v, want a collision error naming %s", err, names[epProbes])
	}
	h.apply(ruleSet(epProbes))
	for i := range epProbes {
		check(i, retPass)
	}
	h.drain()

	// The first of the chain vanishes: the others stay reachable.
	h.ns.IP(t, "link", "del", names[0])
	waitFor(t, 5*time.Second, "col0 pending", func() bool {
		for _, e := range h.d.Status().Endpoints {
			if e.Workload == names[0] {
				return e.State == EndpointPending
			}
		}
		return false
	})
	for i := 1; i < epProbes; i++ {
		check(i, retPass)
	}
	h.drain()
}
