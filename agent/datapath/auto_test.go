package datapath

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
)

// fakeView is a node's routes, links, neighbours and bridge forwarding
// entries, for resolveAuto.
type fakeView struct {
	routes map[netip.Addr]fakeRoute
	links  map[int]viewLink
	neighs map[int]map[netip.Addr]net.HardwareAddr
	fdbs   map[int]map[string]int // bridge -> MAC -> port
}

type fakeRoute struct {
	dev    int
	direct bool
}

func (v fakeView) route(a netip.Addr) (int, bool, bool) {
	r, ok := v.routes[a]
	return r.dev, r.direct, ok
}

func (v fakeView) link(i int) (viewLink, bool) { l, ok := v.links[i]; return l, ok }

func (v fakeView) neighbour(i int, a netip.Addr) (net.HardwareAddr, bool) {
	m, ok := v.neighs[i][a]
	return m, ok
}

func (v fakeView) fdb(bridge int, mac net.HardwareAddr) (int, bool) {
	for m, port := range v.fdbs[bridge] {
		if bytes.Equal([]byte(m), mac) {
			return port, true
		}
	}
	return 0, false
}

func TestResolveAuto(t *testing.T) {
	ip := netip.MustParseAddr
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 7}
	const (
		lo, uplink, bridge, routedVeth, bridgedVeth, other = 1, 2, 3, 10, 11, 12
	)
	v := fakeView{
		routes: map[netip.Addr]fakeRoute{
			ip("10.250.1.2"):  {routedVeth, true}, // Calico-style /32 into the veth
			ip("fd0e::1:2"):   {routedVeth, true}, // its IPv6 address
			ip("10.250.2.2"):  {bridge, true},     // flannel-style: the subnet on the bridge
			ip("fd0e::2:2"):   {bridge, true},     // no neighbour entry (yet)
			ip("10.250.9.9"):  {uplink, false},    // a remote pod, via a gateway
			ip("10.250.8.8"):  {uplink, true},     // on the node's LAN
			ip("10.250.7.7"):  {lo, true},         // a node address
			ip("10.250.3.3"):  {other, true},      // a second workload
			ip("10.250.2.99"): {bridge, true},     // a neighbour whose MAC no port has
		},
		links: map[int]viewLink{
			lo:          {},
			uplink:      {},
			bridge:      {bridge: true},
			routedVeth:  {veth: true},
			bridgedVeth: {veth: true, master: bridge},
			other:       {veth: true},
		},
		neighs: map[int]map[netip.Addr]net.HardwareAddr{bridge: {
			ip("10.250.2.2"):  mac,
			ip("10.250.2.99"): {2, 0, 0, 0, 0, 9},
		}},
		fdbs: map[int]map[string]int{bridge: {string(mac): bridgedVeth}},
	}
	for _, c := range []struct {
		name  string
		addrs []string
		want  int
		err   string // "" ok, "pending" errUnresolved, else a substring
	}{
		{"routed", []string{"10.250.1.2"}, routedVeth, ""},
		{"routed dual stack", []string{"10.250.1.2", "fd0e::1:2"}, routedVeth, ""},
		{"routed IPv6", []string{"fd0e::1:2"}, routedVeth, ""},
		{"bridged", []string{"10.250.2.2"}, bridgedVeth, ""},
		{"bridged, IPv6 not learnt yet", []string{"10.250.2.2", "fd0e::2:2"}, bridgedVeth, ""},
		{"no route", []string{"10.250.5.5"}, 0, "pending"},
		{"bridge, no neighbour", []string{"fd0e::2:2"}, 0, "pending"},
		{"bridge, no forwarding entry", []string{"10.250.2.99"}, 0, "pending"},
		{"remote via a gateway", []string{"10.250.9.9"}, 0, "pending"},
		{"node interface refused", []string{"10.250.8.8"}, 0, "pending"},
		{"loopback refused", []string{"10.250.7.7"}, 0, "pending"},
		{"two interfaces", []string{"10.250.1.2", "10.250.3.3"}, 0, "one workload has one interface"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var addrs []netip.Addr
			for _, a := range c.addrs {
				addrs = append(addrs, ip(a))
			}
			got, err := resolveAuto(v, addrs)
			switch {
			case c.err == "" && (err != nil || got != c.want):
				t.Fatalf("got %d, %v; want %d", got, err, c.want)
			case c.err == "pending" && !errors.Is(err, errUnresolved):
				t.Fatalf("got %d, %v; want pending", got, err)
			case c.err != "" && c.err != "pending" && (err == nil || !bytes.Contains([]byte(err.Error()), []byte(c.err))):
				t.Fatalf("got %d, %v; want an error with %q", got, err, c.err)
			}
		})
	}
}
