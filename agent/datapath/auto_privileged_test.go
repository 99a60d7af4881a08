package datapath

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// TestPrivilegedInterfaceAuto: three workloads named only by their
// addresses (interface auto). A routed one (a veth the node routes the
// workload's subnet into, as topo makes them), a bridged one (its veth a
// port of a bridge that carries the subnet, the workload's MAC in the
// bridge's neighbour table and forwarding database) and one whose route
// does not exist yet. The first two are enforced at once: the node
// reaches them on the allowed port and not on another, over IPv4 and
// IPv6. The third is pending as auto:ADDR and is enforced once its
// interface and route appear.
func TestPrivilegedInterfaceAuto(t *testing.T) {
	testutil.RequirePrivileged(t)
	node := topo.NewNode(t, "node", 1)
	routed := node.AddWorkload(t, "wr", 1)
	routed.Listen(t, 8080, 9090)

	// The bridged workload, flannel style: 10.250.20.0/24 on the bridge.
	wb := node.AddBridgedWorkload(t, "wb", 4)
	bridged4, bridged6, port := wb.Addr4, wb.Addr6, wb.HostIface
	wb.Listen(t, 8080, 9090)

	// The late workload: its interface and route do not exist yet.
	late4, late6 := netip.MustParseAddr("10.250.21.2"), netip.MustParseAddr("fd0e:1:5::2")

	d := openInNode(t, node)

	rs := &ruleset.RuleSet{Node: "node", Rules: []ruleset.RuleName{{ID: 1, Name: "p/node-to-8080"}}}
	type wl struct {
		name   string
		v4, v6 netip.Addr
		gw4    string
		gw6    string
	}
	wls := []wl{
		{"wr", routed.Addr4, routed.Addr6, "10.250.17.1", "fd0e:1:1::1"},
		{"wb", bridged4, bridged6, "10.250.20.1", "fd0e:1:4::1"},
		{"wl", late4, late6, "10.250.21.1", "fd0e:1:5::1"},
	}
	for i, w := range wls {
		ep := ruleset.EndpointID(i + 1)
		id := ruleset.Identity(300 + i)
		addrs := []netip.Addr{w.v4, w.v6}
		rs.Endpoints = append(rs.Endpoints, ruleset.Endpoint{ID: ep, Workload: w.name, Interface: ruleset.InterfaceAuto, Addresses: addrs, Identity: id})
		for _, a := range addrs {
			rs.IPCache = append(rs.IPCache, ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(a, a.BitLen()), Identity: id})
		}
		for _, g := range []string{w.gw4, w.gw6} {
			a := netip.MustParseAddr(g)
			rs.IPCache = append(rs.IPCache, ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(a, a.BitLen()), Identity: ruleset.IdentityHost})
		}
		rs.Entries = append(rs.Entries, ruleset.Entry{Endpoint: ep, Direction: ruleset.Ingress, Peer: ruleset.IdentityHost,
			Protocol: ruleset.ProtocolTCP, Port: 8080, Verdict: ruleset.VerdictAllowed, Rule: 1})
	}
	hash := rs.Hash()
	res, err := d.Apply(rs)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if want := []string{"auto:10.250.21.2"}; !slices.Equal(res.Pending, want) {
		t.Errorf("pending %v, want %v", res.Pending, want)
	}
	if res.Hash != hash {
		t.Errorf("hash %s after Apply, %s before: the rule set must be kept as received", res.Hash, hash)
	}
	wantIfaces := map[string]string{"wr": routed.HostIface, "wb": port}
	checkStatus := func() error {
		for _, e := range d.Status().Endpoints {
			if want, ok := wantIfaces[e.Workload]; ok && !slices.Equal(e.Interfaces, []string{want}) {
				return fmt.Errorf("workload %s on %v, want %s", e.Workload, e.Interfaces, want)
			}
		}
		return nil
	}
	if err := checkStatus(); err != nil {
		t.Fatal(err)
	}
	probe := func(name string, addrs ...netip.Addr) {
		for _, a := range addrs {
			topo.MustPass(t, fmt.Sprintf("node -> %s %s tcp/8080", name, a), node.Dial(a, 8080, 3*time.Second))
			topo.MustDrop(t, fmt.Sprintf("node -> %s %s tcp/9090", name, a), node.Dial(a, 9090, topo.Quick))
		}
	}
	probe("routed", routed.Addr4, routed.Addr6)
	probe("bridged", bridged4, bridged6)

	// The late workload appears (topo: veth, addresses, then the route the
	// kernel adds with them); the periodic retry finds it.
	late := node.AddWorkload(t, "wl", 5)
	if late.Addr4 != late4 || late.Addr6 != late6 {
		t.Fatalf("topo placed the late workload at %s %s", late.Addr4, late.Addr6)
	}
	late.Listen(t, 8080, 9090)
	wantIfaces["wl"] = late.HostIface
	testutil.Eventually(t, 5*autoRetry, "the late workload enforced", func() error {
		if p := d.Status().Pending; len(p) > 0 {
			return fmt.Errorf("pending %v", p)
		}
		return checkStatus()
	})
	probe("late", late4, late6)

	// It goes away: pending again under its address, not its old name.
	node.NS.IP(t, "link", "del", late.HostIface)
	testutil.Eventually(t, 5*time.Second, "the vanished workload pending", func() error {
		if p := d.Status().Pending; !slices.Equal(p, []string{"auto:10.250.21.2"}) {
			return fmt.Errorf("pending %v", p)
		}
		return nil
	})
}

// TestPrivilegedInterfaceAutoBeforeHostMode: with a host-mode endpoint and
// no --host-interfaces, a workload's veth that appears before its route
// is left to its auto endpoint, not taken by the node (which would keep
// the workload pending for good: an interface bound is never taken from
// its endpoint).
func TestPrivilegedInterfaceAutoBeforeHostMode(t *testing.T) {
	h := newHarness(t, Config{}, "up0")
	rs := hostOnlyRuleSet()
	pod := netip.MustParseAddr("10.250.30.2")
	rs.Endpoints = append(rs.Endpoints, ruleset.Endpoint{ID: 4, Workload: "pod", Interface: ruleset.InterfaceAuto,
		Addresses: []netip.Addr{pod}, Identity: 300})
	rs.IPCache = append(rs.IPCache, ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(pod, 32), Identity: 300})
	h.apply(rs)

	// The CNI's order: the veth, then (a moment later) the route to it.
	h.ns.IP(t, "link", "add", "pod0", "type", "veth", "peer", "name", "pod0p")
	h.ns.IP(t, "link", "set", "pod0", "up")
	h.ns.IP(t, "link", "set", "pod0p", "up")
	time.Sleep(200 * time.Millisecond) // not synchronisation: lets the link watch see pod0 first, as in a CNI
	h.ns.IP(t, "route", "add", pod.String()+"/32", "dev", "pod0")
	testutil.Eventually(t, 5*autoRetry, "the pod's endpoint on pod0", func() error {
		for _, e := range h.d.Status().Endpoints {
			if slices.Contains(e.Interfaces, "pod0") && e.ID != 4 {
				return fmt.Errorf("pod0 is endpoint %d's", e.ID)
			}
			if e.ID == 4 && !slices.Equal(e.Interfaces, []string{"pod0"}) {
				return fmt.Errorf("the pod's endpoint is on %v", e.Interfaces)
			}
		}
		return nil
	})
}
