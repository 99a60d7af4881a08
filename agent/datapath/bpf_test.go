package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Addresses and identities of the fixture. Workloads: web (container,
// enforce), mon (container, monitor), the node itself (host mode on up0).
const (
	idWeb     = ruleset.Identity(300)
	idMon     = ruleset.Identity(301)
	idHost    = ruleset.Identity(302)
	idClients = ruleset.Identity(400)
	idDB      = ruleset.Identity(500)

	web4, web6   = "10.250.1.10", "fd0e:1::10"
	mon4, mon6   = "10.250.1.20", "fd0e:1::20"
	host4, host6 = "10.250.0.1", "fd0e::1"
	cli4, cli6   = "10.250.2.7", "fd0e:2::7"
	db4, db6     = "10.250.3.5", "fd0e:3::5"
	world4       = "10.250.9.9"
	router4      = "10.250.9.1"
)

// Rule ids of the fixture.
const (
	rClientsToWeb ruleset.RuleID = iota + 1
	rWebToDB
	rDNS
	rNoSSH
	rClientsHigh
	rPing
	rMonWeb
	rAuditAlt
	rAlt
	rHostSSH
)

func shopRuleSet() *ruleset.RuleSet {
	in, out := ruleset.Ingress, ruleset.Egress
	e := func(ep ruleset.EndpointID, dir ruleset.Direction, peer ruleset.Identity, proto ruleset.Protocol, port, end uint16, v ruleset.Verdict, r ruleset.RuleID) ruleset.Entry {
		return ruleset.Entry{Endpoint: ep, Direction: dir, Peer: peer, Protocol: proto, Port: port, EndPort: end, Verdict: v, Rule: r}
	}
	allow, deny, would := ruleset.VerdictAllowed, ruleset.VerdictDenied, ruleset.VerdictWouldDeny
	tcpP, udpP := ruleset.ProtocolTCP, ruleset.ProtocolUDP
	return &ruleset.RuleSet{
		Node: "node-a",
		Endpoints: []ruleset.Endpoint{
			{ID: 1, Workload: "web", Interface: "web0", Identity: idWeb},
			{ID: 2, Workload: "mon", Interface: "mon0", Identity: idMon, Mode: ruleset.ModeMonitor},
			{ID: 3, Workload: "node-a", Identity: idHost},
		},
		IPCache: []ruleset.IPCacheEntry{
			{Prefix: pfx(web4 + "/32"), Identity: idWeb}, {Prefix: pfx(web6 + "/128"), Identity: idWeb},
			{Prefix: pfx(mon4 + "/32"), Identity: idMon}, {Prefix: pfx(mon6 + "/128"), Identity: idMon},
			{Prefix: pfx(host4 + "/32"), Identity: idHost}, {Prefix: pfx(host6 + "/128"), Identity: idHost},
			{Prefix: pfx("10.250.2.0/24"), Identity: idClients}, {Prefix: pfx("fd0e:2::/64"), Identity: idClients},
			{Prefix: pfx(db4 + "/32"), Identity: idDB}, {Prefix: pfx(db6 + "/128"), Identity: idDB},
		},
		Entries: []ruleset.Entry{
			e(1, in, idClients, tcpP, 443, 0, allow, rClientsToWeb),
			e(1, out, idDB, tcpP, 5432, 0, allow, rWebToDB),
			e(1, out, ruleset.IdentityAny, udpP, 53, 0, allow, rDNS),
			e(1, in, ruleset.IdentityAny, tcpP, 22, 0, deny, rNoSSH),
			e(1, in, idClients, tcpP, 20, 30, allow, rClientsHigh),
			{Endpoint: 1, Direction: in, Peer: idClients, Protocol: ruleset.ProtocolICMP, ICMPType: ptr(uint8(8)), Verdict: allow, Rule: rPing},
			{Endpoint: 1, Direction: in, Peer: idClients, Protocol: ruleset.ProtocolICMPv6, ICMPType: ptr(uint8(128)), Verdict: allow, Rule: rPing},
			e(2, in, idClients, tcpP, 80, 0, allow, rMonWeb),
			e(1, in, ruleset.IdentityAny, tcpP, 2222, 0, would, rAuditAlt),
			e(1, in, idClients, tcpP, 2222, 0, allow, rAlt),
			e(3, in, idClients, tcpP, 22, 0, allow, rHostSSH),
		},
		Rules: []ruleset.RuleName{
			{ID: rClientsToWeb, Name: "shop/clients-to-web"}, {ID: rWebToDB, Name: "shop/web-to-db"},
			{ID: rDNS, Name: "shop/dns"}, {ID: rNoSSH, Name: "shop/no-ssh"},
			{ID: rClientsHigh, Name: "shop/clients-high"}, {ID: rPing, Name: "shop/ping"},
			{ID: rMonWeb, Name: "shop/mon-web"}, {ID: rAuditAlt, Name: "audit/ssh-alt"},
			{ID: rAlt, Name: "shop/alt"}, {ID: rHostSSH, Name: "host/admin-ssh"},
		},
	}
}

func newShopHarness(t *testing.T) *harness {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0", "stray0")
	res := h.apply(shopRuleSet())
	if len(res.Pending) != 0 {
		t.Fatalf("pending interfaces: %v", res.Pending)
	}
	return h
}

// wantEvent is what a verdict test expects in the ring: nil for no event.
type wantEvent struct {
	verdict  ruleset.Verdict
	rule     ruleset.RuleID
	reason   Reason
	dir      ruleset.Direction
	src, dst ruleset.Identity
}

// TestPrivilegedVerdicts covers every verdict path of a new packet, each case on a
// fresh flow.
func TestPrivilegedVerdicts(t *testing.T) {
	h := newShopHarness(t)
	in, out := ruleset.Ingress, ruleset.Egress
	allowed, denied, would := ruleset.VerdictAllowed, ruleset.VerdictDenied, ruleset.VerdictWouldDeny
	h.runVerdictCases(t, []verdictCase{
		{"v4 tcp allowed by peer+port", h.toWorkload, "web0", tcp4(cli4, web4, 40001, 443, tcpSYN), retPass,
			&wantEvent{allowed, rClientsToWeb, ReasonPolicy, in, idClients, idWeb}},
		{"v6 tcp allowed by peer+port", h.toWorkload, "web0", tcp6(cli6, web6, 40002, 443, tcpSYN), retPass,
			&wantEvent{allowed, rClientsToWeb, ReasonPolicy, in, idClients, idWeb}},
		{"v4 tcp default deny", h.toWorkload, "web0", tcp4(cli4, web4, 40003, 80, tcpSYN), retDrop,
			&wantEvent{denied, ruleset.RuleDefaultDeny, ReasonPolicy, in, idClients, idWeb}},
		{"v6 tcp default deny from world", h.toWorkload, "web0", tcp6("fd0e:9::9", web6, 40004, 443, tcpSYN), retDrop,
			&wantEvent{denied, ruleset.RuleDefaultDeny, ReasonPolicy, in, ruleset.IdentityWorld, idWeb}},
		{"deny beats allow (any-peer deny 22 vs range 20-30 allow)", h.toWorkload, "web0", tcp4(cli4, web4, 40005, 22, tcpSYN), retDrop,
			&wantEvent{denied, rNoSSH, ReasonPolicy, in, idClients, idWeb}},
		{"port range allow", h.toWorkload, "web0", tcp4(cli4, web4, 40006, 25, tcpSYN), retPass,
			&wantEvent{allowed, rClientsHigh, ReasonPolicy, in, idClients, idWeb}},
		{"range boundary just outside", h.toWorkload, "web0", tcp4(cli4, web4, 40007, 31, tcpSYN), retDrop,
			&wantEvent{denied, ruleset.RuleDefaultDeny, ReasonPolicy, in, idClients, idWeb}},
		{"monitor-policy deny beats allow: would-deny, passes", h.toWorkload, "web0", tcp4(cli4, web4, 40008, 2222, tcpSYN), retPass,
			&wantEvent{would, rAuditAlt, ReasonPolicy, in, idClients, idWeb}},
		{"wildcard peer udp egress to world", h.fromWorkload, "web0", udp4(web4, world4, 50001, 53), retPass,
			&wantEvent{allowed, rDNS, ReasonPolicy, out, idWeb, ruleset.IdentityWorld}},
		{"v6 udp egress wildcard peer", h.fromWorkload, "web0", udp6(web6, "fd0e:9::53", 50002, 53), retPass,
			&wantEvent{allowed, rDNS, ReasonPolicy, out, idWeb, ruleset.IdentityWorld}},
		{"udp egress wrong port", h.fromWorkload, "web0", udp4(web4, world4, 50003, 54), retDrop,
			&wantEvent{denied, ruleset.RuleDefaultDeny, ReasonPolicy, out, idWeb, ruleset.IdentityWorld}},
		{"egress tcp to db allowed", h.fromWorkload, "web0", tcp4(web4, db4, 50004, 5432, tcpSYN), retPass,
			&wantEvent{allowed, rWebToDB, ReasonPolicy, out, idWeb, idDB}},
		{"egress tcp to db other port", h.fromWorkload, "web0", tcp6(web6, db6, 50005, 5433, tcpSYN), retDrop,
			&wantEvent{denied, ruleset.RuleDefaultDeny, ReasonPolicy, out, idWeb, idDB}},
		{"spoofed source dropped", h.fromWorkload, "web0", tcp4("10.250.1.99", db4, 50006, 5432, tcpSYN), retDrop,
			&wantEvent{denied, ruleset.RuleDefaultDeny, ReasonSpoofed, out, idWeb, idDB}},
		{"icmp echo allowed by type", h.toWorkload, "web0", icmp4(cli4, web4, 8, 0, 77), retPass,
			&wantEvent{allowed, rPing, ReasonPolicy, in, idClients, idWeb}},
		{"icmpv6 echo allowed by type", h.toWorkload, "web0", icmp6(cli6, web6, 128, 0, 78), retPass,
			&wantEvent{allowed, rPing, ReasonPolicy, in, idClients, idWeb}},
		{"icmp timestamp denied", h.toWorkload, "web0", icmp4(cli4, web4, 13, 0, 79), retDrop,
			&wantEvent{denied, ruleset.RuleDefaultDeny, ReasonPolicy, in, idClients, idWeb}},
		{"monitor endpoint: default deny becomes would-deny", h.toWorkload, "mon0", tcp4(cli4, mon4, 40009, 81, tcpSYN), retPass,
			&wantEvent{would, ruleset.RuleDefaultDeny, ReasonPolicy, in, idClients, idMon}},
		{"monitor endpoint: allowed stays allowed", h.toWorkload, "mon0", tcp6(cli6, mon6, 40010, 80, tcpSYN), retPass,
			&wantEvent{allowed, rMonWeb, ReasonPolicy, in, idClients, idMon}},
		{"host mode: allowed to the node", h.toHost, "up0", tcp4(cli4, host4, 40011, 22, tcpSYN), retPass,
			&wantEvent{allowed, rHostSSH, ReasonPolicy, in, idClients, idHost}},
		{"host mode: denied to the node", h.toHost, "up0", tcp6(cli6, host6, 40012, 23, tcpSYN), retDrop,
			&wantEvent{denied, ruleset.RuleDefaultDeny, ReasonPolicy, in, idClients, idHost}},
		{"host mode: forwarded traffic is not the node's", h.toHost, "up0", tcp4(cli4, web4, 40013, 80, tcpSYN), retPass, nil},
		{"no endpoint on the interface: node default (enforce)", h.toWorkload, "stray0", tcp4(cli4, web4, 40014, 443, tcpSYN), retDrop,
			// No endpoint: the hook's own direction, no identities.
			&wantEvent{denied, ruleset.RuleDefaultDeny, ReasonNoEndpoint, out, 0, 0}},
		{"arp passes", h.toWorkload, "web0", arpFrame(), retPass, nil},
		{"ipv6 neighbour solicitation passes", h.toWorkload, "web0", nd6("fe80::1", "ff02::1:ff00:10", 135, 255, web6), retPass, nil},
		{"non-IP ethertype passes", h.toWorkload, "web0", ethFrame(0x88cc, make([]byte, 46)), retPass, nil},
		{"vlan-tagged tcp is parsed", h.toWorkload, "web0", vlanFrame(100, ethIPv4, ipv4(cli4, web4, protoTCP, tcp(40015, 80, tcpSYN), v4opts{})), retDrop,
			&wantEvent{denied, ruleset.RuleDefaultDeny, ReasonPolicy, in, idClients, idWeb}},
		{"ipv6 extension headers are walked", h.toWorkload, "web0",
			ethFrame(ethIPv6, ipv6(cli6, web6, 0, ext6(60, ext6(protoTCP, tcp(40016, 443, tcpSYN))))), retPass,
			&wantEvent{allowed, rClientsToWeb, ReasonPolicy, in, idClients, idWeb}},
	}, nil)
}

// hookFn runs a program on a packet as if on iface (harness.toWorkload,
// fromWorkload, toHost).
type hookFn func(iface string, pkt []byte) int32

// verdictCase is one packet and what the datapath must do with it.
type verdictCase struct {
	name  string
	hook  hookFn
	iface string
	pkt   []byte
	ret   int32
	ev    *wantEvent // nil: no event
}

// runVerdictCases runs the cases in order, each a subtest checking the
// verdict and the event; after, if set, checks more with the counters as
// they were before the case.
func (h *harness) runVerdictCases(t *testing.T, cases []verdictCase, after func(t *testing.T, tc verdictCase, before Counters)) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.drain()
			before := h.counters()
			if got := tc.hook(tc.iface, tc.pkt); got != tc.ret {
				t.Errorf("verdict %d, want %d", got, tc.ret)
			}
			checkEvents(t, h.drain(), tc.ev)
			if after != nil {
				after(t, tc, before)
			}
		})
	}
}

func checkEvents(t *testing.T, evs []FlowEvent, want *wantEvent) {
	t.Helper()
	if want == nil {
		if len(evs) != 0 {
			t.Errorf("got %d events, want none: %+v", len(evs), evs)
		}
		return
	}
	if len(evs) != 1 {
		t.Fatalf("got %d events, want 1: %+v", len(evs), evs)
	}
	ev := evs[0]
	got := wantEvent{ev.Verdict, ev.Rule, ev.Reason, ev.Direction, ev.SrcIdentity, ev.DstIdentity}
	if got != *want {
		t.Errorf("event %+v\nwant  %+v", got, *want)
	}
	if ev.Time.IsZero() || ev.Length == 0 || !ev.Src.IsValid() || !ev.Dst.IsValid() {
		t.Errorf("event lacks time, length or addresses: %+v", ev)
	}
}

// TestPrivilegedConntrack checks the stateful paths: replies and later packets of an
// admitted flow pass on the conntrack entry alone; replies of a flow that
// was never admitted do not; closing states; echo replies.
func TestPrivilegedConntrack(t *testing.T) {
	h := newShopHarness(t)
	h.drain()
	before := h.counters()

	// Client opens 443 on web: admitted, one event.
	if got := h.toWorkload("web0", tcp4(cli4, web4, 41000, 443, tcpSYN)); got != retPass {
		t.Fatalf("SYN: %d", got)
	}
	// web answers: egress of web to a client port no rule allows, passes as a reply.
	if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 41000, tcpSYN|tcpACK)); got != retPass {
		t.Errorf("SYN-ACK reply dropped: %d", got)
	}
	for i := range 3 {
		if got := h.toWorkload("web0", tcp4(cli4, web4, 41000, 443, tcpACK)); got != retPass {
			t.Errorf("ACK %d dropped: %d", i, got)
		}
	}
	evs := h.drain()
	if len(evs) != 1 || evs[0].Verdict != ruleset.VerdictAllowed {
		t.Errorf("want exactly the new-flow event, got %+v", evs)
	}
	after := h.counters()
	if d := after.Get(CounterEstablished) - before.Get(CounterEstablished); d != 4 {
		t.Errorf("established counter +%d, want +4", d)
	}
	if d := after.Get(VerdictCounter(ruleset.VerdictAllowed, ruleset.Ingress)) - before.Get(VerdictCounter(ruleset.VerdictAllowed, ruleset.Ingress)); d != 1 {
		t.Errorf("allowed_ingress +%d, want +1", d)
	}

	// The same reply without a flow behind it is a new egress flow: denied.
	if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 41001, tcpSYN|tcpACK)); got != retDrop {
		t.Errorf("unsolicited SYN-ACK passed")
	}
	h.drain()

	// ICMP echo: the reply passes on the request's entry.
	if got := h.toWorkload("web0", icmp4(cli4, web4, 8, 0, 4242)); got != retPass {
		t.Fatalf("echo request: %d", got)
	}
	if got := h.fromWorkload("web0", icmp4(web4, cli4, 0, 0, 4242)); got != retPass {
		t.Errorf("echo reply dropped: %d", got)
	}
	if got := h.fromWorkload("web0", icmp6(web6, cli6, 129, 0, 4243)); got != retDrop {
		t.Errorf("echo reply without request passed")
	}
	h.drain()

	// An ICMP error about the admitted TCP flow (a router says "fragmentation
	// needed" for web's reply) is related and passes; one about an unknown
	// flow is an ordinary ICMP message, denied here.
	quoted := ipv4(web4, cli4, protoTCP, tcp(443, 41000, tcpACK), v4opts{})
	if got := h.toWorkload("web0", ethFrame(ethIPv4, ipv4(router4, web4, protoICMP, icmp(3, 4, 0, quoted[:28]), v4opts{}))); got != retPass {
		t.Errorf("related ICMP error dropped: %d", got)
	}
	unrelated := ipv4(web4, cli4, protoTCP, tcp(443, 49999, tcpACK), v4opts{})
	if got := h.toWorkload("web0", ethFrame(ethIPv4, ipv4(router4, web4, protoICMP, icmp(3, 4, 0, unrelated[:28]), v4opts{}))); got != retDrop {
		t.Errorf("unrelated ICMP error passed: %d", got)
	}
	if d := h.counters().Get(CounterRelated) - before.Get(CounterRelated); d != 1 {
		t.Errorf("related counter +%d, want +1", d)
	}
	h.drain()

	// A UDP flow: request admitted, reply passes, accounting counts both.
	if got := h.fromWorkload("web0", udp6(web6, "fd0e:9::53", 53000, 53)); got != retPass {
		t.Fatalf("dns query: %d", got)
	}
	if got := h.toWorkload("web0", udp6("fd0e:9::53", web6, 53, 53000)); got != retPass {
		t.Errorf("dns answer dropped: %d", got)
	}
	entry := h.ctEntry(6, web6, "fd0e:9::53", 1, 53000, 53, protoUDP)
	if entry.Packets != [2]uint64{1, 1} || entry.Verdict != uint8(ruleset.VerdictAllowed) || entry.RuleId != uint32(rDNS) {
		t.Errorf("conntrack entry %+v: want 1 packet each way, allowed by rule %d", entry, rDNS)
	}
	// Per direction relative to the origin: [0] the query (origin ->
	// reply), [1] the answer; each is one packet of its own length.
	if entry.Bytes[0] == 0 || entry.Bytes[1] == 0 || entry.Created == 0 {
		t.Errorf("conntrack entry %+v: want bytes counted in both directions and a creation time", entry)
	}
	if entry.State&uint8(bpfEgCtStateEG_CT_SEEN_REPLY) == 0 {
		t.Errorf("conntrack entry did not see the reply: state %#x", entry.State)
	}
}

// ctEntry reads a conntrack entry by its endpoint-side key.
func (h *harness) ctEntry(family uint8, local, remote string, ep uint32, lport, rport uint16, proto uint8) bpfEgCtEntry {
	h.t.Helper()
	tail := bpfEgCtTail{EndpointId: ep, LocalPort: lport, RemotePort: rport, Protocol: proto}
	var e bpfEgCtEntry
	var err error
	if family == 4 {
		l, r := netip.MustParseAddr(local).As4(), netip.MustParseAddr(remote).As4()
		k := bpfEgCt4Key{Local: binary.NativeEndian.Uint32(l[:]), Remote: binary.NativeEndian.Uint32(r[:]), T: tail}
		err = h.d.objs.EgCt4.Lookup(&k, &e)
	} else {
		k := bpfEgCt6Key{Local: netip.MustParseAddr(local).As16(), Remote: netip.MustParseAddr(remote).As16(), T: tail}
		err = h.d.objs.EgCt6.Lookup(&k, &e)
	}
	if err != nil {
		h.t.Fatalf("conntrack lookup: %v", err)
	}
	return e
}

// TestPrivilegedMalformed: truncated or inconsistent packets never pass unchecked in
// enforce mode, never crash, and are counted; monitor mode lets them
// through.
func TestPrivilegedMalformed(t *testing.T) {
	h := newShopHarness(t)
	good := ipv4(cli4, web4, protoTCP, tcp(42000, 443, tcpSYN), v4opts{})
	badDataOff := tcp(42001, 443, tcpSYN)
	badDataOff[12] = 4 << 4
	cases := []struct {
		name string
		pkt  []byte
	}{
		// BPF_PROG_TEST_RUN refuses frames whose ethertype is IPv4 but
		// that are shorter than an IPv4 header; behind a VLAN tag it
		// does not look, so the parser's own checks are exercised.
		{"vlan tag then nothing", vlanFrame(100, ethIPv4, nil)},
		{"ipv4 header cut short", vlanFrame(100, ethIPv4, good[:12])},
		{"ipv6 header cut short behind a vlan tag", vlanFrame(100, ethIPv6, ipv6(cli6, web6, protoTCP, nil)[:20])},
		{"ipv4 ihl below 5", ethFrame(ethIPv4, ipv4(cli4, web4, protoTCP, tcp(42002, 443, tcpSYN), v4opts{ihlWords: 4}))},
		{"ipv4 total length beyond the frame", ethFrame(ethIPv4, ipv4(cli4, web4, protoTCP, tcp(42003, 443, tcpSYN), v4opts{totLen: 1500}))},
		{"ipv4 total length below the header", ethFrame(ethIPv4, ipv4(cli4, web4, protoTCP, tcp(42004, 443, tcpSYN), v4opts{totLen: 10}))},
		{"tcp header cut short", ethFrame(ethIPv4, good[:30])},
		{"tcp data offset below 5", ethFrame(ethIPv4, ipv4(cli4, web4, protoTCP, badDataOff, v4opts{}))},
		{"udp header cut short", ethFrame(ethIPv4, ipv4(cli4, web4, protoUDP, []byte{1, 2, 3}, v4opts{}))},
		{"ipv6 payload length beyond the frame", func() []byte {
			p := ipv6(cli6, web6, protoTCP, tcp(42006, 443, tcpSYN))
			binary.BigEndian.PutUint16(p[4:], 4000)
			return ethFrame(ethIPv6, p)
		}()},
		{"ipv6 extension header cut short", ethFrame(ethIPv6, ipv6(cli6, web6, 0, []byte{protoTCP}))},
		{"ipv6 endless extension chain", ethFrame(ethIPv6, ipv6(cli6, web6, 60, extChain(8, tcp(1, 443, tcpSYN))))},
		{"icmp header cut short", ethFrame(ethIPv4, ipv4(cli4, web4, protoICMP, []byte{8, 0}, v4opts{}))},
		{"vlan tag cut short", ethFrame(ethVLAN, []byte{0, 100})},
		{"tiny first fragment without the tcp ports", ethFrame(ethIPv4, ipv4(cli4, web4, protoTCP, tcp(42007, 443, tcpSYN)[:8], v4opts{id: 9, more: true}))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.counters()
			if got := h.toWorkload("web0", tc.pkt); got != retDrop {
				t.Errorf("enforce: verdict %d, want drop", got)
			}
			if got := h.toWorkload("mon0", tc.pkt); got != retPass {
				t.Errorf("monitor: verdict %d, want pass", got)
			}
			after := h.counters()
			if d := after.Get(CounterMalformed) - before.Get(CounterMalformed); d != 2 {
				t.Errorf("malformed counter +%d, want +2", d)
			}
		})
	}
	// Every prefix of an allowed SYN (behind a VLAN tag, see above):
	// nothing may crash, and none may pass without its ports.
	full := vlanFrame(100, ethIPv4, ipv4(cli4, web4, protoTCP, tcp(42100, 443, tcpSYN), v4opts{}))
	if got := h.toWorkload("web0", full); got != retPass {
		t.Fatalf("the whole SYN is dropped: %d", got)
	}
	for n := 14; n < len(full); n++ {
		if got := h.toWorkload("web0", full[:n]); got != retDrop {
			t.Errorf("%d-byte prefix of an allowed SYN passed", n)
		}
	}
	h.drain()
}

// extChain nests n destination-options headers before a TCP header.
func extChain(n int, l4 []byte) []byte {
	b := ext6(protoTCP, l4)
	for range n - 1 {
		b = ext6(60, b)
	}
	return b
}

// TestPrivilegedFragments: later fragments follow their first fragment's verdict;
// without a first fragment they are dropped (enforce) or reported
// (monitor).
func TestPrivilegedFragments(t *testing.T) {
	h := newShopHarness(t)
	frag4 := func(id uint16, off uint16, more bool, payload []byte, dport uint16) []byte {
		return ethFrame(ethIPv4, ipv4(cli4, web4, protoUDP, payload, v4opts{id: id, fragOff: off, more: more}))
	}
	// UDP to web: only TCP is allowed from clients, so a UDP first
	// fragment is denied; use TCP 443 for the allowed case.
	first := ethFrame(ethIPv4, ipv4(cli4, web4, protoTCP, append(tcp(43000, 443, tcpSYN), make([]byte, 16)...), v4opts{id: 100, more: true}))
	later := ethFrame(ethIPv4, ipv4(cli4, web4, protoTCP, make([]byte, 24), v4opts{id: 100, fragOff: 5}))
	orphan := ethFrame(ethIPv4, ipv4(cli4, web4, protoTCP, make([]byte, 24), v4opts{id: 101, fragOff: 5}))
	before := h.counters()
	if got := h.toWorkload("web0", first); got != retPass {
		t.Fatalf("allowed first fragment: %d", got)
	}
	if got := h.toWorkload("web0", later); got != retPass {
		t.Errorf("later fragment of an allowed first fragment dropped: %d", got)
	}
	h.drain()
	if got := h.toWorkload("web0", orphan); got != retDrop {
		t.Errorf("orphan fragment passed: %d", got)
	}
	checkEvents(t, h.drain(), &wantEvent{ruleset.VerdictDenied, 0, ReasonFragment, ruleset.Ingress, idClients, idWeb})
	if got := h.toWorkload("mon0", orphan); got != retPass {
		t.Errorf("monitor: orphan fragment dropped: %d", got)
	}
	// A denied first fragment: its followers are dropped too.
	if got := h.toWorkload("web0", frag4(102, 0, true, append(udp(43001, 9999), make([]byte, 8)...), 9999)); got != retDrop {
		t.Errorf("denied first fragment passed")
	}
	if got := h.toWorkload("web0", frag4(102, 3, false, make([]byte, 8), 0)); got != retDrop {
		t.Errorf("later fragment of a denied first fragment passed")
	}
	if d := h.counters().Get(CounterFragments) - before.Get(CounterFragments); d != 6 {
		t.Errorf("fragments counter +%d, want +6", d)
	}

	// IPv6: fragment header.
	first6 := ethFrame(ethIPv6, ipv6(cli6, web6, 44, frag6(protoTCP, 0, true, 7, append(tcp(43002, 443, tcpSYN), make([]byte, 20)...))))
	later6 := ethFrame(ethIPv6, ipv6(cli6, web6, 44, frag6(protoTCP, 5, false, 7, make([]byte, 16))))
	orphan6 := ethFrame(ethIPv6, ipv6(cli6, web6, 44, frag6(protoTCP, 5, false, 8, make([]byte, 16))))
	if got := h.toWorkload("web0", first6); got != retPass {
		t.Errorf("v6 allowed first fragment: %d", got)
	}
	if got := h.toWorkload("web0", later6); got != retPass {
		t.Errorf("v6 later fragment dropped: %d", got)
	}
	if got := h.toWorkload("web0", orphan6); got != retDrop {
		t.Errorf("v6 orphan fragment passed")
	}
	h.drain()
}
