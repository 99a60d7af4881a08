package datapath

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Interface auto (docs/POLICY.md, "interface: auto"): an endpoint whose
// rule set says interface "auto" is bound to the host-side interface its
// addresses are reached through:
//
//   - routed CNIs (Calico, Cilium, kindnet, ptp): the node routes the
//     workload's address directly (no gateway) into the workload's veth;
//   - bridge CNIs (flannel, the bridge plugin): the route points at a
//     bridge; the bridge's neighbour entry gives the workload's MAC, and
//     the bridge's forwarding database maps that MAC to the port, the
//     workload's veth.
//
// The resolved interface must be a veth, the host side of a workload's
// pair in every CNI covered: an uplink, a bridge, a tunnel or loopback is
// never bound, so a workload address that happens to be on a node subnet
// never binds a workload's policy to the node's own interfaces.
// The rule set is not rewritten: its hash stays the one received.

// errUnresolved: no address of the endpoint leads to an interface (yet).
var errUnresolved = errors.New("no interface found for the workload's addresses")

// autoRetry is how often endpoints whose interface is not found are
// resolved again. Routes, neighbours and forwarding entries of a new
// workload appear after its interface does (the CNI creates the veth, then
// routes to it; a bridge learns the MAC from the first frame), so the link
// watch alone fires too early; a short poll, only while something is
// pending, is simpler than following three more netlink subscriptions and
// equally correct.
const autoRetry = 2 * time.Second

// viewLink is what resolution needs to know of an interface.
type viewLink struct {
	bridge bool
	veth   bool
	master int // ifindex of the bridge it is a port of, or 0
}

// netView is the node's network as auto resolution reads it; the live one
// reads netlink, tests give a fake.
type netView interface {
	// route returns the interface of the route to a, and whether the route
	// is direct (no gateway).
	route(a netip.Addr) (ifindex int, direct bool, ok bool)
	link(ifindex int) (viewLink, bool)
	// neighbour returns the MAC of a in ifindex's neighbour table, if valid.
	neighbour(ifindex int, a netip.Addr) (net.HardwareAddr, bool)
	// fdb returns the port of bridge that mac was learnt or added on.
	fdb(bridge int, mac net.HardwareAddr) (port int, ok bool)
}

// resolveAuto finds the interface of a workload from its addresses. Every
// address that resolves must resolve to the same interface; addresses not
// (yet) reachable are ignored if another one resolves.
func resolveAuto(v netView, addrs []netip.Addr) (int, error) {
	found, from := 0, netip.Addr{}
	for _, a := range addrs {
		ifindex, err := resolveAddr(v, a)
		if errors.Is(err, errUnresolved) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if found != 0 && found != ifindex {
			return 0, fmt.Errorf("%s resolves to ifindex %d but %s to ifindex %d; one workload has one interface", from, found, a, ifindex)
		}
		found, from = ifindex, a
	}
	if found == 0 {
		return 0, errUnresolved
	}
	return found, nil
}

func resolveAddr(v netView, a netip.Addr) (int, error) {
	dev, direct, ok := v.route(a)
	if !ok || !direct || dev == 0 {
		return 0, errUnresolved // no route, or a remote address (via a gateway)
	}
	l, ok := v.link(dev)
	if !ok {
		return 0, errUnresolved
	}
	if l.bridge {
		mac, ok := v.neighbour(dev, a)
		if !ok {
			return 0, errUnresolved
		}
		port, ok := v.fdb(dev, mac)
		if !ok || port == dev {
			return 0, errUnresolved
		}
		if l, ok = v.link(port); !ok || l.master != dev {
			return 0, errUnresolved
		}
		dev = port
	}
	if !l.veth {
		return 0, fmt.Errorf("%s is reached through ifindex %d, which is not a veth (not a workload's interface): %w", a, dev, errUnresolved)
	}
	return dev, nil
}

// pendingName is how an unresolved auto endpoint is reported pending.
func pendingName(e ruleset.Endpoint) string {
	if e.Auto() && len(e.Addresses) > 0 {
		return ruleset.InterfaceAuto + ":" + e.Addresses[0].String()
	}
	return e.Interface
}

// liveView reads netlink. Its methods must run in the datapath's network
// namespace (inside inNetNS).
type liveView struct {
	links map[int]netlink.Link
	fdbs  []netlink.Neigh // AF_BRIDGE entries, read once
}

func newLiveView(links []netlink.Link) (*liveView, error) {
	v := &liveView{links: make(map[int]netlink.Link, len(links))}
	for _, l := range links {
		v.links[l.Attrs().Index] = l
	}
	var err error
	v.fdbs, err = netlink.NeighList(0, unix.AF_BRIDGE)
	if err != nil {
		return nil, fmt.Errorf("list bridge forwarding entries: %w", err)
	}
	return v, nil
}

func (v *liveView) route(a netip.Addr) (int, bool, bool) {
	rs, err := netlink.RouteGet(a.AsSlice())
	if err != nil || len(rs) == 0 {
		return 0, false, false
	}
	r := rs[0]
	return r.LinkIndex, r.Gw == nil && r.Via == nil && r.Type == unix.RTN_UNICAST, true
}

func (v *liveView) link(ifindex int) (viewLink, bool) {
	l, ok := v.links[ifindex]
	if !ok {
		return viewLink{}, false
	}
	a := l.Attrs()
	return viewLink{bridge: l.Type() == "bridge", veth: l.Type() == "veth", master: a.MasterIndex}, true
}

func (v *liveView) neighbour(ifindex int, a netip.Addr) (net.HardwareAddr, bool) {
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	ns, err := netlink.NeighList(ifindex, family)
	if err != nil {
		return nil, false
	}
	const valid = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT
	for _, n := range ns {
		if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a && n.State&valid != 0 && len(n.HardwareAddr) == 6 {
			return n.HardwareAddr, true
		}
	}
	return nil, false
}

func (v *liveView) fdb(bridge int, mac net.HardwareAddr) (int, bool) {
	for _, n := range v.fdbs {
		if n.MasterIndex == bridge && n.LinkIndex != bridge && bytes.Equal(n.HardwareAddr, mac) {
			return n.LinkIndex, true
		}
	}
	return 0, false
}
