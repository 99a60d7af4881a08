package datapath

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// TestPrivilegedKernelMatchesMirror applies random overlapping rule sets and checks,
// packet by packet, that the kernel decides exactly what the Go mirror of
// its lookup (ruleset.Tables.Decide) decides: verdict and rule id. The
// mirror itself is checked against a naive evaluator in internal/ruleset,
// so together the kernel is checked against the plain semantics.
func TestPrivilegedKernelMatchesMirror(t *testing.T) {
	h := newHarness(t, Config{DenyEventsPerSecond: 1 << 30, DenyEventsBurst: 1 << 20}, "web0", "mon0")
	rng := rand.New(rand.NewPCG(7, 11))
	peers := []ruleset.Identity{ruleset.IdentityAny, ruleset.IdentityWorld, 400, 401, 402}
	protos := []ruleset.Protocol{ruleset.ProtocolAny, ruleset.ProtocolTCP, ruleset.ProtocolUDP, ruleset.ProtocolICMP}
	verdicts := []ruleset.Verdict{ruleset.VerdictAllowed, ruleset.VerdictAllowed, ruleset.VerdictDenied, ruleset.VerdictWouldDeny}
	peerAddr := map[ruleset.Identity]string{ruleset.IdentityWorld: "10.250.99.%d", 400: "10.250.40.%d", 401: "10.250.41.%d", 402: "10.250.42.%d"}
	eps := map[ruleset.EndpointID]struct{ iface, addr string }{1: {"web0", "10.250.1.10"}, 2: {"mon0", "10.250.1.20"}}
	port := uint16(10000)
	checked := 0
	for iter := range 25 {
		rs := &ruleset.RuleSet{
			Node: "n",
			Endpoints: []ruleset.Endpoint{
				{ID: 1, Workload: "web", Interface: "web0", Identity: 300},
				{ID: 2, Workload: "mon", Interface: "mon0", Identity: 301, Mode: ruleset.Mode(rng.IntN(2))},
			},
			IPCache: []ruleset.IPCacheEntry{
				{Prefix: pfx("10.250.1.10/32"), Identity: 300}, {Prefix: pfx("10.250.1.20/32"), Identity: 301},
				{Prefix: pfx("10.250.40.0/24"), Identity: 400}, {Prefix: pfx("10.250.41.0/24"), Identity: 401},
				{Prefix: pfx("10.250.42.0/24"), Identity: 402},
			},
		}
		for i := range 1 + rng.IntN(16) {
			e := ruleset.Entry{
				Endpoint:  ruleset.EndpointID(1 + rng.IntN(2)),
				Direction: ruleset.Direction(rng.IntN(2)),
				Peer:      peers[rng.IntN(len(peers))],
				Protocol:  protos[rng.IntN(len(protos))],
				Verdict:   verdicts[rng.IntN(len(verdicts))],
				Rule:      ruleset.RuleID(i + 1),
			}
			switch {
			case e.Protocol.HasPorts() && rng.IntN(3) > 0:
				e.Port = uint16(20 + rng.IntN(20))
				if rng.IntN(2) == 0 {
					e.EndPort = e.Port + uint16(rng.IntN(12))
				}
			case e.Protocol.IsICMP() && rng.IntN(3) > 0:
				e.ICMPType = ptr(uint8(8 + rng.IntN(2)*5)) // echo request or timestamp
				if rng.IntN(2) == 0 {
					e.ICMPCode = ptr(uint8(0))
				}
			}
			rs.Entries = append(rs.Entries, e)
			rs.Rules = append(rs.Rules, ruleset.RuleName{ID: e.Rule, Name: fmt.Sprintf("p/r%d", e.Rule)})
		}
		h.apply(rs)
		tables, err := ruleset.Encode(rs)
		if err != nil {
			t.Fatal(err)
		}
		h.flushConntrack()
		h.drain()
		host := 0
		for range 120 {
			epID := ruleset.EndpointID(1 + rng.IntN(2))
			ep, _ := rs.Endpoint(epID)
			peerID := peers[1+rng.IntN(len(peers)-1)]
			host++ // a fresh remote address per packet: every packet is a new flow
			remote := fmt.Sprintf(peerAddr[peerID], host)
			dir := ruleset.Direction(rng.IntN(2))
			src, dst := remote, eps[epID].addr
			if dir == ruleset.Egress {
				src, dst = dst, src
			}
			port++
			var pkt []byte
			var proto ruleset.Protocol
			var policyPort uint16
			switch rng.IntN(4) {
			case 0:
				proto, policyPort = ruleset.ProtocolTCP, uint16(18+rng.IntN(25))
				pkt = tcp4(src, dst, port, policyPort, tcpSYN)
			case 1:
				proto, policyPort = ruleset.ProtocolUDP, uint16(18+rng.IntN(25))
				pkt = udp4(src, dst, port, policyPort)
			case 2:
				typ := uint8(8 + rng.IntN(2)*5)
				proto, policyPort = ruleset.ProtocolICMP, ruleset.ICMPPort(typ, 0)
				pkt = icmp4(src, dst, typ, 0, port)
			default:
				proto = 47 // GRE: no ports, only ANY rules match
				pkt = ethFrame(ethIPv4, ipv4(src, dst, 47, make([]byte, 8), v4opts{}))
			}
			want := tables.Decide(ep, dir, peerID, proto, policyPort)
			var ret int32
			if dir == ruleset.Ingress {
				ret = h.toWorkload(eps[epID].iface, pkt)
			} else {
				ret = h.fromWorkload(eps[epID].iface, pkt)
			}
			wantRet := int32(retPass)
			if want.Verdict == ruleset.VerdictDenied {
				wantRet = retDrop
			}
			evs := h.drain()
			where := fmt.Sprintf("iteration %d: endpoint %d (%s) %s peer %d %s port %d", iter, epID, ep.Mode, dir, peerID, proto, policyPort)
			if ret != wantRet {
				t.Fatalf("%s: kernel returned %d, mirror decides %+v\nrule set: %+v", where, ret, want, rs.Entries)
			}
			if len(evs) != 1 {
				t.Fatalf("%s: %d events, want 1", where, len(evs))
			}
			if evs[0].Verdict != want.Verdict || evs[0].Rule != want.Rule {
				t.Fatalf("%s: kernel event %s by rule %d, mirror %s by rule %d\nrule set: %+v",
					where, evs[0].Verdict, evs[0].Rule, want.Verdict, want.Rule, rs.Entries)
			}
			checked++
		}
	}
	t.Logf("%d packets decided identically by the kernel and the mirror", checked)
}

// flushConntrack empties the conntrack maps, so the next packets are all
// new flows.
func (h *harness) flushConntrack() {
	h.t.Helper()
	for _, m := range []*ebpf.Map{h.d.objs.EgCt4, h.d.objs.EgCt6} {
		var keys [][]byte
		var k, v []byte
		it := m.Iterate()
		for it.Next(&k, &v) {
			keys = append(keys, slices.Clone(k))
		}
		if err := it.Err(); err != nil {
			h.t.Fatalf("iterate conntrack: %v", err)
		}
		for _, k := range keys {
			_ = m.Delete(k)
		}
	}
}
