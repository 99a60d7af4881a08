package datapath

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	tnetns "github.com/eastguard/eastguard/internal/testutil/netns"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// TestPrivilegedNeighbourDiscovery: ICMPv6 neighbour discovery and MLD
// pass before policy only in shapes that cannot leave the link (hop limit
// 255, or 1 for MLD; link-local, unspecified, the endpoint's own or
// link-scope multicast addresses; global peers only once heard on the
// interface). Every other shape is decided like any packet: the spoofing
// check, then policy (here: denied, with an event). Cases run in order:
// some teach the datapath a neighbour.
func TestPrivilegedNeighbourDiscovery(t *testing.T) {
	h := newShopHarness(t)
	fromHost := func(iface string, pkt []byte) int32 { return h.run(h.d.objs.EgTcEgress, iface, pkt) }
	in, out := ruleset.Ingress, ruleset.Egress
	denied := ruleset.VerdictDenied
	const (
		ns, na, rs, mldQuery, mldv2 = 135, 136, 133, 130, 143
		webLL, nodeLL               = "fe80::10", "fe80::1"
		solicitedNode               = "ff02::1:ff00:1"
	)
	hbh := func(next uint8, rest []byte) []byte { return ext6(next, rest) } // MLD carries a router alert
	mld := func(src, dst string, typ, hops uint8) []byte {
		return ethFrame(ethIPv6, ipv6Hops(src, dst, 0, hops, hbh(protoICMPv6, icmp(typ, 0, 0, make([]byte, 16)))))
	}
	// No event: passed as link plumbing.
	h.runVerdictCases(t, []verdictCase{
		// Accepted shapes.
		{"DAD: NS from ::", h.fromWorkload, "web0", nd6("::", "ff02::1:ff00:10", ns, 255, web6), retPass, nil},
		{"NS link-local to solicited-node multicast", h.fromWorkload, "web0", nd6(webLL, solicitedNode, ns, 255, "fd0e:1::1"), retPass, nil},
		{"NS from its own global address (Linux) to solicited-node multicast", h.fromWorkload, "web0", nd6(web6, solicitedNode, ns, 255, "fd0e:1::1"), retPass, nil},
		{"RS link-local to all-routers", h.fromWorkload, "web0", nd6(webLL, "ff02::2", rs, 255, "::"), retPass, nil},
		{"NA to its own global address from a link-local one", h.toWorkload, "web0", nd6(nodeLL, web6, na, 255, nodeLL), retPass, nil},
		{"NA to it from the node's global address: heard", h.toWorkload, "web0", nd6(host6, web6, na, 255, host6), retPass, nil},
		{"NS to a neighbour heard on the interface (NUD)", h.fromWorkload, "web0", nd6(web6, host6, ns, 255, host6), retPass, nil},
		{"NA to a neighbour heard on the interface", h.fromWorkload, "web0", nd6(web6, host6, na, 255, web6), retPass, nil},
		{"MLDv2 report link-local to ff02::16, hop limit 1", h.fromWorkload, "web0", mld(webLL, "ff02::16", mldv2, 1), retPass, nil},
		{"MLDv2 report from :: (no link-local address yet)", h.fromWorkload, "web0", mld("::", "ff02::16", mldv2, 1), retPass, nil},
		{"MLD query to it", h.toWorkload, "web0", mld(nodeLL, "ff02::1", mldQuery, 1), retPass, nil},
		{"host mode: NS to the node from a global neighbour", h.toHost, "up0", nd6(cli6, host6, ns, 255, host6), retPass, nil},
		{"host mode: NA back to that neighbour", fromHost, "up0", nd6(host6, cli6, na, 255, host6), retPass, nil},

		// Everything else is decided like any packet.
		{"hop limit 64", h.fromWorkload, "web0", nd6(webLL, solicitedNode, ns, 64, "fd0e:1::1"), retDrop,
			&wantEvent{denied, 0, ReasonSpoofed, out, idWeb, ruleset.IdentityWorld}},
		{"hop limit 64 from its own address", h.fromWorkload, "web0", nd6(web6, solicitedNode, ns, 64, "fd0e:1::1"), retDrop,
			&wantEvent{denied, 0, ReasonPolicy, out, idWeb, ruleset.IdentityWorld}},
		{"global source that is not its own", h.fromWorkload, "web0", nd6("fd0e:1::99", solicitedNode, ns, 255, "fd0e:1::1"), retDrop,
			&wantEvent{denied, 0, ReasonSpoofed, out, idWeb, ruleset.IdentityWorld}},
		{"global destination: a separated workload", h.fromWorkload, "web0", nd6(web6, db6, ns, 255, db6), retDrop,
			&wantEvent{denied, 0, ReasonPolicy, out, idWeb, idDB}},
		{"global destination from a link-local source", h.fromWorkload, "web0", nd6(webLL, db6, ns, 255, db6), retDrop,
			&wantEvent{denied, 0, ReasonSpoofed, out, idWeb, idDB}},
		{"a neighbour heard on another interface", h.fromWorkload, "web0", nd6(web6, cli6, ns, 255, cli6), retDrop,
			&wantEvent{denied, 0, ReasonPolicy, out, idWeb, idClients}},
		{"received, to a global address not its own", h.toWorkload, "web0", nd6(nodeLL, db6, na, 255, nodeLL), retDrop,
			&wantEvent{denied, 0, ReasonPolicy, in, ruleset.IdentityWorld, idWeb}},
		{"received, routed (hop limit 254)", h.toWorkload, "web0", nd6(cli6, web6, ns, 254, web6), retDrop,
			&wantEvent{denied, 0, ReasonPolicy, in, idClients, idWeb}},
		{"MLD with hop limit 255", h.fromWorkload, "web0", mld(webLL, "ff02::16", mldv2, 255), retDrop,
			&wantEvent{denied, 0, ReasonSpoofed, out, idWeb, ruleset.IdentityWorld}},
		{"MLD from its global address", h.fromWorkload, "web0", mld(web6, "ff02::16", mldv2, 1), retDrop,
			&wantEvent{denied, 0, ReasonPolicy, out, idWeb, ruleset.IdentityWorld}},
		{"MLD to a global address", h.fromWorkload, "web0", mld(webLL, db6, mldv2, 1), retDrop,
			&wantEvent{denied, 0, ReasonSpoofed, out, idWeb, idDB}},
		{"NS as a first fragment", h.fromWorkload, "web0",
			ethFrame(ethIPv6, ipv6Hops(web6, solicitedNode, 44, 255, frag6(protoICMPv6, 0, true, 9, icmp(ns, 0, 0, make([]byte, 16))))), retDrop,
			&wantEvent{denied, 0, ReasonPolicy, out, idWeb, ruleset.IdentityWorld}},
		{"ICMPv6 type 135 inside IPv4", h.fromWorkload, "web0", ethFrame(ethIPv4, ipv4(web4, db4, protoICMPv6, icmp(ns, 0, 0, make([]byte, 16)), v4opts{})), retDrop,
			&wantEvent{denied, 0, ReasonPolicy, out, idWeb, idDB}},
	}, func(t *testing.T, tc verdictCase, before Counters) {
		if n := h.counters().Get(CounterNeighbor) - before.Get(CounterNeighbor); (n == 1) != (tc.ev == nil) {
			t.Errorf("neighbour counter +%d", n)
		}
	})

	// A heard neighbour expires: then it is a global address like any.
	k := bpfEgNdKey{Ifindex: h.ifindex["web0"], Addr: netip.MustParseAddr(host6).As16()}
	if err := h.d.objs.EgNdNeigh.Update(&k, bpfEgNdEntry{Expires: 1}, ebpf.UpdateExist); err != nil {
		t.Fatalf("the neighbour heard on web0: %v", err)
	}
	h.drain()
	if got := h.fromWorkload("web0", nd6(web6, host6, ns, 255, host6)); got != retDrop {
		t.Errorf("NS to an expired neighbour: verdict %d, want drop", got)
	}
	checkEvents(t, h.drain(), &wantEvent{denied, 0, ReasonPolicy, out, idWeb, idHost})
}

// TestPrivilegedNeighbourDiscoveryEndToEnd: real namespaces and veths, a
// node routing for three container workloads. IPv6 between the workloads
// and the node works from cold neighbour caches (the kernels' neighbour
// discovery uses the workloads' global addresses), while a neighbour
// solicitation crafted by one workload to a separated workload's global
// address, carrying data, never reaches it: neighbour discovery passes
// policy only when it cannot leave the link.
func TestPrivilegedNeighbourDiscoveryEndToEnd(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := topo.NewNode(t, "node", 1)
	a := node.AddWorkload(t, "wa", 1) // may reach c on TCP 8080
	b := node.AddWorkload(t, "wb", 2) // separated from a
	c := node.AddWorkload(t, "wc", 3)
	c.Listen(t, 8080)

	d := openInNode(t, node)
	ids := map[*topo.Workload]ruleset.Identity{a: 300, b: 301, c: 302}
	rs := &ruleset.RuleSet{Node: "node", Rules: []ruleset.RuleName{{ID: 1, Name: "p/a-to-c"}}}
	for i, w := range []*topo.Workload{a, b, c} {
		rs.Endpoints = append(rs.Endpoints, ruleset.Endpoint{ID: ruleset.EndpointID(i + 1), Workload: w.Name, Interface: w.HostIface, Identity: ids[w]})
		for _, addr := range []netip.Addr{w.Addr4, w.Addr6} {
			rs.IPCache = append(rs.IPCache, ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(addr, addr.BitLen()), Identity: ids[w]})
		}
		// The node's side of each link is the node's (the enforcer adds
		// the node's addresses so).
		gw4 := netip.AddrFrom4([4]byte{10, 250, byte(16 + i + 1), 1})
		gw6 := netip.AddrFrom16(w.Addr6.As16())
		g := gw6.As16()
		g[15] = 1
		gw6 = netip.AddrFrom16(g)
		for _, addr := range []netip.Addr{gw4, gw6} {
			rs.IPCache = append(rs.IPCache, ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(addr, addr.BitLen()), Identity: ruleset.IdentityHost})
		}
	}
	rs.Entries = []ruleset.Entry{
		{Endpoint: 1, Direction: ruleset.Egress, Peer: ids[c], Protocol: ruleset.ProtocolTCP, Port: 8080, Verdict: ruleset.VerdictAllowed, Rule: 1},
		{Endpoint: 3, Direction: ruleset.Ingress, Peer: ids[a], Protocol: ruleset.ProtocolTCP, Port: 8080, Verdict: ruleset.VerdictAllowed, Rule: 1},
	}
	// Enforced before any IPv6 packet: every neighbour cache is cold.
	if _, err := d.Apply(rs); err != nil {
		t.Fatalf("Apply: %v", err)
	}

	// Neighbour discovery works: a reaches c over IPv6 (through the node,
	// which a and c each resolve, and which resolves them).
	topo.MustPass(t, "a -> c tcp/8080 over IPv6", a.Dial(c.Addr6, 8080, 3*time.Second))
	topo.MustPass(t, "a -> c tcp/8080 over IPv4", a.Dial(c.Addr4, 8080, 3*time.Second))

	// A crafted NS from a to b's global address, carrying data, with the
	// hop limit of genuine neighbour discovery and with an ordinary one.
	before, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	marker := []byte("eastguard-exfil!")
	got := make(chan []byte, 256)
	stop := recvICMPv6(t, b.NS, got)
	for _, hops := range []int{255, 64} {
		sendNS(t, a.NS, b.Addr6, hops, marker)
	}
	deadline := time.After(time.Second)
wait:
	for {
		select {
		case m := <-got:
			if bytes.Contains(m, marker) {
				t.Errorf("the crafted neighbour solicitation reached the separated workload: type %d", m[0])
			}
		case <-deadline:
			break wait
		}
	}
	stop()
	after, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	denied := VerdictCounter(ruleset.VerdictDenied, ruleset.Egress)
	if n := after.Get(denied) - before.Get(denied); n < 2 {
		t.Errorf("denied egress packets +%d, want the two crafted solicitations", n)
	}
}

// openInNode opens a datapath in a topo node's namespace, uninstalled when
// the test ends.
func openInNode(t *testing.T, node *topo.Node) *Datapath {
	t.Helper()
	return openInNodeWith(t, node, Config{})
}

// openInNodeWith is openInNode with cfg (its pin directory and logger set
// here).
func openInNodeWith(t *testing.T, node *topo.Node, cfg Config) *Datapath {
	t.Helper()
	cfg.BPFFSDir = "/sys/fs/bpf/eg-test-" + tnetns.Suffix()
	cfg.Logger = zaptest.NewLogger(t)
	var d *Datapath
	if err := node.NS.Do(func() error {
		var err error
		d, err = Open(cfg)
		return err
	}); err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Uninstall(); err != nil {
			t.Errorf("Uninstall: %v", err)
		}
	})
	return d
}

// sendNS sends an ICMPv6 neighbour solicitation from ns to dst (target
// dst) with the given hop limit, payload appended after the target.
func sendNS(t *testing.T, ns *tnetns.NS, dst netip.Addr, hops int, payload []byte) {
	t.Helper()
	msg := make([]byte, 24, 24+len(payload))
	msg[0] = 135 // type; code, checksum (the kernel's), reserved stay 0
	target := dst.As16()
	copy(msg[8:], target[:])
	msg = append(msg, payload...)
	if err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, hops); err != nil {
			return err
		}
		return unix.Sendto(fd, msg, 0, &unix.SockaddrInet6{Addr: target})
	}); err != nil {
		t.Fatalf("send a neighbour solicitation: %v", err)
	}
}

// recvICMPv6 delivers every ICMPv6 message ns receives to got until stop.
func recvICMPv6(t *testing.T, ns *tnetns.NS, got chan<- []byte) (stop func()) {
	t.Helper()
	var fd int
	if err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_RAW, unix.IPPROTO_ICMPV6)
		if err != nil {
			return err
		}
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	}); err != nil {
		t.Fatalf("raw ICMPv6 socket: %v", err)
	}
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		buf := make([]byte, 2048)
		for {
			select {
			case <-done:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return
			}
			select {
			case got <- bytes.Clone(buf[:n]):
			default:
			}
		}
	}()
	return func() {
		close(done)
		<-exited
		unix.Close(fd)
	}
}
