package ruleset

import (
	"net/netip"
	"strings"
	"testing"
)

// TestValidateAuto: endpoints with interface auto carry sorted, unique
// workload addresses, and several may share "auto"; other endpoints carry
// none. A rule set with auto endpoints survives Diff and Apply of a delta.
func TestValidateAuto(t *testing.T) {
	ip := netip.MustParseAddr
	base := func(eps ...Endpoint) *RuleSet {
		rs := &RuleSet{Node: "n", Endpoints: eps}
		for _, e := range eps {
			a := netip.AddrFrom4([4]byte{10, 250, 9, byte(e.ID)})
			rs.IPCache = append(rs.IPCache, IPCacheEntry{Prefix: netip.PrefixFrom(a, 32), Identity: e.Identity})
		}
		return rs
	}
	auto := func(id EndpointID, addrs ...netip.Addr) Endpoint {
		return Endpoint{ID: id, Workload: "w" + string(rune('0'+id)), Interface: InterfaceAuto, Addresses: addrs, Identity: Identity(300 + id)}
	}
	ok := base(auto(1, ip("10.250.1.2"), ip("fd0e::2")), auto(2, ip("10.250.1.3")))
	if err := ok.Validate(); err != nil {
		t.Fatalf("two auto endpoints: %v", err)
	}
	named := Endpoint{ID: 3, Workload: "w3", Interface: "veth0", Identity: 303, Addresses: []netip.Addr{ip("10.250.1.4")}}
	for _, c := range []struct {
		name string
		rs   *RuleSet
		want string
	}{
		{"no addresses", base(auto(1)), "needs the workload's addresses"},
		{"out of order", base(auto(1, ip("fd0e::2"), ip("10.250.1.2"))), "out of order or listed twice"},
		{"twice", base(auto(1, ip("10.250.1.2"), ip("10.250.1.2"))), "out of order or listed twice"},
		{"mapped", base(auto(1, ip("::ffff:10.250.1.2"))), "is not a workload address"},
		{"unspecified", base(auto(1, ip("0.0.0.0"))), "is not a workload address"},
		{"addresses on a named endpoint", base(named), "addresses are only given with interface"},
	} {
		err := c.rs.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}

	next := ok.Clone()
	next.Endpoints[1].Addresses = []netip.Addr{ip("10.250.1.9")}
	d := Diff(ok, next)
	if len(d.PutEndpoints) != 1 || d.PutEndpoints[0].ID != 2 {
		t.Fatalf("delta of a changed address: %+v", d.PutEndpoints)
	}
	got, err := ok.ApplyDelta(d)
	if err != nil {
		t.Fatal(err)
	}
	if got.Hash() != next.Hash() {
		t.Errorf("delta applied: hash %s, want %s", got.Hash(), next.Hash())
	}
}
