package datapath

import (
	"net/netip"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/testutil/topo"
)

// hostOnlyRuleSet is a node with a host-mode workload and nothing else:
// its address is the host identity, and no rule allows anything.
func hostOnlyRuleSet() *ruleset.RuleSet {
	return &ruleset.RuleSet{
		Node:      "node-a",
		Endpoints: []ruleset.Endpoint{{ID: 3, Workload: "node-a", Identity: ruleset.IdentityHost}},
		IPCache:   []ruleset.IPCacheEntry{{Prefix: pfx(host4 + "/32"), Identity: ruleset.IdentityHost}},
	}
}

// TestPrivilegedHostModeInterfaceKinds: host mode without --host-interfaces
// enforces every interface but loopback, whatever its kind: a veth, a tun
// (point-to-point) and an Ethernet-like virtual device (dummy; a bridge
// where the kernel has no dummy driver), and a tun that appears later;
// never lo, so the node reaches its own address over loopback. The
// interface flags are Go's net.Flags, where the kernel's IFF_LOOPBACK bit
// means point-to-point: testing that bit enforced lo and skipped tuns.
func TestPrivilegedHostModeInterfaceKinds(t *testing.T) {
	h := newHarness(t, Config{}, "up0")
	h.ns.IP(t, "tuntap", "add", "dev", "tun0", "mode", "tun")
	ether := "dummy0"
	if out, err := exec.Command("ip", "-n", h.ns.Name, "link", "add", ether, "type", "dummy").CombinedOutput(); err != nil {
		t.Logf("no dummy driver (%v: %s); a bridge is the Ethernet-like device instead", err, out)
		ether = "br0"
		h.ns.IP(t, "link", "add", ether, "type", "bridge")
	}
	h.ns.IP(t, "addr", "add", host4+"/24", "dev", "up0")
	h.apply(hostOnlyRuleSet())

	hostIfaces := func() []string {
		for _, e := range h.d.Status().Endpoints {
			if e.ID == 3 {
				return e.Interfaces
			}
		}
		return nil
	}
	got := hostIfaces()
	for _, want := range []string{"up0", "up0p", "tun0", ether} {
		if !slices.Contains(got, want) {
			t.Errorf("host mode does not enforce %s; enforced: %v", want, got)
		}
	}
	if slices.Contains(got, "lo") {
		t.Errorf("host mode enforces lo; enforced: %v", got)
	}
	if got := attachedPrograms(t, h, 1); len(got) != 0 {
		t.Errorf("programs on lo: %v", got)
	}

	// The node's own address over loopback: not enforced, so it answers.
	topo.ListenOn(t, h.ns, 9)
	topo.MustPass(t, "the node to its own address over loopback", topo.DialFrom(h.ns, netip.MustParseAddr(host4), 9, 2*time.Second))

	// A tun that appears later is enforced too.
	h.ns.IP(t, "tuntap", "add", "dev", "tun1", "mode", "tun")
	waitFor(t, 5*time.Second, "tun1 enforced after it appeared", func() bool { return slices.Contains(hostIfaces(), "tun1") })
	if got := attachedPrograms(t, h, h.linkIndex("tun1")); len(got) != 2 {
		t.Errorf("programs on tun1: %v, want 2", got)
	}
}
