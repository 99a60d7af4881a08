package datapath

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// gatewayOf is the node's address on a topo workload's veth (.1 / ::1 of
// the workload's subnets).
func gatewayOf(a netip.Addr) netip.Addr {
	b := a.As16()
	b[15] = 1
	if a.Is4() {
		return netip.AddrFrom4([4]byte(b[12:16]))
	}
	return netip.AddrFrom16(b)
}

// autoRuleSet has an auto endpoint for each workload (ids from 1,
// identities from 300) that the node may reach on tcp/8080, and nothing
// else.
func autoRuleSet(ws ...*topo.Workload) *ruleset.RuleSet {
	rs := &ruleset.RuleSet{Node: "node", Rules: []ruleset.RuleName{{ID: 1, Name: "p/node-to-8080"}}}
	for i, w := range ws {
		ep, id := ruleset.EndpointID(i+1), ruleset.Identity(300+i)
		addrs := []netip.Addr{w.Addr4, w.Addr6}
		rs.Endpoints = append(rs.Endpoints, ruleset.Endpoint{ID: ep, Workload: w.Name, Interface: ruleset.InterfaceAuto, Addresses: addrs, Identity: id})
		for _, a := range addrs {
			rs.IPCache = append(rs.IPCache,
				ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(a, a.BitLen()), Identity: id},
				ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(gatewayOf(a), a.BitLen()), Identity: ruleset.IdentityHost})
		}
		rs.Entries = append(rs.Entries, ruleset.Entry{Endpoint: ep, Direction: ruleset.Ingress, Peer: ruleset.IdentityHost,
			Protocol: ruleset.ProtocolTCP, Port: 8080, Verdict: ruleset.VerdictAllowed, Rule: 1})
	}
	return rs
}

// TestPrivilegedGuard: with --guard-interfaces, a veth matching a pattern
// that no workload claims is denied both ways, from the moment the
// datapath opens on a fresh node (no rule set from any source) and within
// milliseconds for a veth created later; denied events are emitted under
// the default deny. A workload arriving by an apply takes its veth over
// with no instant where traffic passes unenforced, and when it goes the
// veth is guarded again. A veth not matching, the bridge (matching, but
// not a veth) and the uplink are never touched.
func TestPrivilegedGuard(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := topo.NewNode(t, "node", 1)
	peer := topo.NewNode(t, "peer", 2)
	topo.Link(t, node, peer)
	node.Listen(t, 8080)
	peer.Listen(t, 8080)
	ga := node.AddWorkload(t, "ga", 1)        // eg1-ga: guarded
	ob := node.AddWorkload(t, "ob", 2)        // eg1-ob: not matching
	gb := node.AddBridgedWorkload(t, "gb", 3) // eg1-gb on egbr1: guarded, the bridge not
	for _, w := range []*topo.Workload{ga, ob, gb} {
		w.Listen(t, 8080, 9090)
	}

	d := openInNodeWith(t, node, Config{GuardInterfaces: []string{"eg1-g*", "egbr*"}})
	ring, err := d.NewEventReader()
	if err != nil {
		t.Fatalf("event reader: %v", err)
	}
	t.Cleanup(func() { ring.Close() })

	wantGuarded := func(names ...string) {
		t.Helper()
		st := d.Status()
		if !slices.Equal(st.GuardedInterfaces, names) || st.Guarded != len(names) {
			t.Fatalf("guarded %d %v, want %v", st.Guarded, st.GuardedInterfaces, names)
		}
	}
	untouched := func() {
		t.Helper()
		for _, a := range []netip.Addr{ob.Addr4, ob.Addr6} {
			topo.MustPass(t, "node -> not matching veth "+a.String()+" tcp/9090", node.Dial(a, 9090, 3*time.Second))
		}
		topo.MustPass(t, "peer -> node over the uplink", peer.Dial(node.Addr4, 8080, 3*time.Second))
		topo.MustPass(t, "peer -> node over the uplink (v6)", peer.Dial(node.Addr6, 8080, 3*time.Second))
	}
	guarded := func(w *topo.Workload) {
		t.Helper()
		for _, a := range []netip.Addr{w.Addr4, w.Addr6} {
			topo.MustDrop(t, fmt.Sprintf("node -> guarded %s %s tcp/8080", w.Name, a), node.Dial(a, 8080, topo.Quick))
			topo.MustDrop(t, fmt.Sprintf("guarded %s -> node %s tcp/8080", w.Name, gatewayOf(a)), w.Dial(gatewayOf(a), 8080, topo.Quick))
		}
		// Through the node: not the node's own traffic, still denied.
		topo.MustDrop(t, fmt.Sprintf("guarded %s -> peer %s tcp/8080", w.Name, peer.Addr4), w.Dial(peer.Addr4, 8080, topo.Quick))
	}

	// (1) Fresh node, no rule set: guarded means denied, both ways.
	readEvents(t, ring)
	guarded(ga)
	guarded(gb)
	untouched()
	wantGuarded("eg1-ga", "eg1-gb")
	var in, out bool
	evs := readEvents(t, ring)
	for _, ev := range evs {
		if ev.Endpoint != GuardEndpoint {
			continue
		}
		if ev.Verdict != ruleset.VerdictDenied || ev.Rule != ruleset.RuleDefaultDeny {
			t.Errorf("guard event %+v: want denied by the default deny", ev)
		}
		in = in || (ev.Direction == ruleset.Ingress && ev.Dst == ga.Addr4 && ev.DstPort == 8080)
		out = out || (ev.Direction == ruleset.Egress && ev.Src == ga.Addr4 && ev.DstPort == 8080)
	}
	if !in || !out {
		t.Errorf("denied events of the guarded veth: ingress %v, egress %v; want both", in, out)
	}

	// (2) The workload arrives: its veth is taken over in the swap that
	// installs its policy. A probe of a port its policy denies runs all
	// along and must never pass.
	stop := make(chan struct{})
	denied := probeNeverPasses(node, ga.Addr4, 9090, stop)
	time.Sleep(200 * time.Millisecond) // not synchronisation: probes before the takeover too
	if _, err := d.Apply(autoRuleSet(ga)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	topo.MustPass(t, "node -> ga tcp/8080 (its policy)", node.Dial(ga.Addr4, 8080, 3*time.Second))
	topo.MustPass(t, "node -> ga tcp/8080 v6 (its policy)", node.Dial(ga.Addr6, 8080, 3*time.Second))
	time.Sleep(200 * time.Millisecond) // and after it
	close(stop)
	if r := <-denied; r[0] < 3 || r[1] > 0 {
		t.Errorf("%d probes of a port ga's policy denies during the takeover, %d passed; want several, none passed", r[0], r[1])
	}
	topo.MustDrop(t, "node -> ga tcp/9090 (not in its policy)", node.Dial(ga.Addr4, 9090, topo.Quick))
	wantGuarded("eg1-gb")
	guarded(gb)

	// (3) The workload goes away, its veth stays: guarded again.
	if _, err := d.Apply(autoRuleSet()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	wantGuarded("eg1-ga", "eg1-gb")
	guarded(ga)

	// (4) Still untouched: the veth not matching, the uplink; the bridge
	// matches a pattern but is no veth.
	untouched()
	for _, l := range []string{"egbr1", "eg1-ob", "eg-to2"} {
		if st := d.Status(); slices.Contains(st.GuardedInterfaces, l) {
			t.Errorf("%s guarded", l)
		}
	}

	// (5) A veth created later is guarded within milliseconds: measured
	// here, asserted generously.
	node.NS.IP(t, "link", "add", "eg1-gz", "type", "veth", "peer", "name", "eg1-zp")
	start := time.Now()
	t.Cleanup(func() { _ = node.NS.Exec(context.Background(), "ip", "link", "del", "eg1-gz").Run() })
	for !slices.Contains(d.Status().GuardedInterfaces, "eg1-gz") {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("a new veth not guarded after 5s: guarded %v", d.Status().GuardedInterfaces)
		}
		time.Sleep(time.Millisecond) // polls a condition, with a deadline
	}
	t.Logf("guard latency: a new veth guarded %v after ip link add returned", time.Since(start))
	node.NS.IP(t, "link", "del", "eg1-gz")
	testutil.Eventually(t, 5*time.Second, "the deleted veth no longer guarded", func() error {
		if st := d.Status(); slices.Contains(st.GuardedInterfaces, "eg1-gz") {
			return fmt.Errorf("guarded %v", st.GuardedInterfaces)
		}
		return nil
	})
}

// probeNeverPasses dials addr:port from node again and again until stop is
// closed (at most 60 s) and reports how many probes ran and how many
// passed.
func probeNeverPasses(node *topo.Node, addr netip.Addr, port int, stop <-chan struct{}) <-chan [2]int {
	res := make(chan [2]int, 1)
	go func() {
		n, passed := 0, 0
		defer func() { res <- [2]int{n, passed} }()
		for end := time.Now().Add(60 * time.Second); time.Now().Before(end); n++ {
			select {
			case <-stop:
				return
			default:
			}
			if node.Dial(addr, port, 50*time.Millisecond) == nil {
				passed++
			}
		}
	}()
	return res
}

// TestPrivilegedGuardLiveTakeover: the CNI's order on a running node. The
// pod's workload is in the rule set already (interface auto, pending);
// its veth appears and is guarded at once; its addresses and route follow
// and the periodic auto resolution claims the guarded veth in a swap.
// A port its policy denies is probed all along and never answers; the
// allowed one answers once the workload is enforced. Without the guard
// the veth carries traffic unenforced until auto resolution runs (up to
// autoRetry).
func TestPrivilegedGuardLiveTakeover(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := topo.NewNode(t, "node", 1)
	d := openInNodeWith(t, node, Config{GuardInterfaces: []string{"eg1-*"}})
	// The workload's addresses as topo will place them (index 6).
	want := &topo.Workload{Name: "pod", Addr4: netip.MustParseAddr("10.250.22.2"), Addr6: netip.MustParseAddr("fd0e:1:6::2")}
	if _, err := d.Apply(autoRuleSet(want)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	stop := make(chan struct{})
	denied := probeNeverPasses(node, want.Addr4, 9090, stop)
	pod := node.AddWorkload(t, "pod", 6)
	if pod.Addr4 != want.Addr4 || pod.Addr6 != want.Addr6 {
		t.Fatalf("topo placed the pod at %s %s", pod.Addr4, pod.Addr6)
	}
	pod.Listen(t, 8080, 9090)
	testutil.Eventually(t, 5*autoRetry, "the pod enforced on its veth", func() error {
		st := d.Status()
		if st.Guarded != 0 || len(st.Pending) != 0 {
			return fmt.Errorf("guarded %v, pending %v", st.GuardedInterfaces, st.Pending)
		}
		if es := st.Endpoints; len(es) != 1 || !slices.Equal(es[0].Interfaces, []string{pod.HostIface}) {
			return fmt.Errorf("endpoints %+v", es)
		}
		return nil
	})
	topo.MustPass(t, "node -> pod tcp/8080 (its policy)", node.Dial(pod.Addr4, 8080, 3*time.Second))
	close(stop)
	if r := <-denied; r[0] < 3 || r[1] > 0 {
		t.Errorf("%d probes of a port the pod's policy denies, %d passed; want several, none passed", r[0], r[1])
	}
	topo.MustDrop(t, "node -> pod tcp/9090", node.Dial(pod.Addr4, 9090, topo.Quick))
}

// TestPrivilegedGuardWithHostMode: a node in host mode (no
// --host-interfaces) with guards. Its uplink is the host endpoint's, never
// guarded; a veth matching a pattern is guarded, not taken by the node
// (which would keep its workload off it), also when it appears later. A
// rule set that uses the guard's reserved endpoint id is refused whole.
func TestPrivilegedGuardWithHostMode(t *testing.T) {
	h := newHarness(t, Config{GuardInterfaces: []string{"pod?", "up*x"}}, "up0", "pod0")
	h.apply(hostOnlyRuleSet())
	// The peers (podNp, up0p) match no pattern: the node's, like up0.
	host := []string{"pod0p", "up0", "up0p"}
	check := func(guarded ...string) error {
		st := h.d.Status()
		if !slices.Equal(st.GuardedInterfaces, guarded) {
			return fmt.Errorf("guarded %v, want %v", st.GuardedInterfaces, guarded)
		}
		if es := st.Endpoints; len(es) != 1 || !slices.Equal(es[0].Interfaces, host) {
			return fmt.Errorf("host endpoint on %+v, want %v", es, host)
		}
		return nil
	}
	if err := check("pod0"); err != nil {
		t.Fatal(err)
	}
	h.ns.IP(t, "link", "add", "pod1", "type", "veth", "peer", "name", "pod1p")
	host = []string{"pod0p", "pod1p", "up0", "up0p"}
	testutil.Eventually(t, 5*time.Second, "pod1 guarded", func() error { return check("pod0", "pod1") })

	bad := hostOnlyRuleSet()
	bad.Endpoints = append(bad.Endpoints, ruleset.Endpoint{ID: GuardEndpoint, Workload: "w", Interface: "pod0", Identity: 300})
	bad.IPCache = append(bad.IPCache, ruleset.IPCacheEntry{Prefix: pfx("10.250.99.2/32"), Identity: 300})
	if _, err := h.d.Apply(bad); err == nil || !strings.Contains(err.Error(), "reserved for guarded interfaces") {
		t.Fatalf("Apply with the guard's endpoint id: err %v", err)
	}
	if err := check("pod0", "pod1"); err != nil {
		t.Fatalf("after a refused rule set: %v", err)
	}
}
