package ruleset

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
)

// The failsafe keeps an agent's own control traffic open whatever the
// policy says, as Calico's failsafe rules do: a host-mode workload whose
// policy forgets the controller must not cut the agent off from the one
// place a fix can come from. The agent adds it to the rule set it
// enforces (never to the rule set it received, saved or hashes); egctl
// explain adds it on request.
//
// The controller's and the resolvers' addresses get exact ipcache entries
// with reserved identities (IdentityFailsafeFirst..Last), and the
// host-mode endpoint gets allow entries towards them, named RuleFailsafe,
// whose allows beat every deny. Taking an address out of the identity it
// had must change nothing else: every entry, of any endpoint, whose peer
// was that identity is copied to the failsafe identity. So each failsafe
// identity stands for one (former identity, ports opened) pair, and a
// workload that could reach the controller before can still reach it,
// and no more.

// ControlPlane is the agent's own control traffic the failsafe keeps open.
type ControlPlane struct {
	// Controller holds the controller's addresses; Port is its gRPC port
	// (TCP, both directions).
	Controller []netip.Addr
	Port       uint16
	// Resolvers are the DNS servers the agent finds the controller's
	// addresses with (UDP and TCP 53, to them).
	Resolvers []netip.Addr
}

// DNSPort is the port the failsafe opens to the resolvers.
const DNSPort = 53

// Equal reports whether cp and o open the same traffic.
func (cp ControlPlane) Equal(o ControlPlane) bool {
	return cp.Port == o.Port && slices.Equal(cp.Controller, o.Controller) && slices.Equal(cp.Resolvers, o.Resolvers)
}

// failsafe roles an address can have (a bit set).
const (
	roleController uint8 = 1 << iota
	roleResolver
)

// Resolve returns the identity the rule set's ipcache gives an address: its
// longest matching prefix, or world when none matches, as the datapath's
// lookups do (exact host entries first, then the LPM trie).
func (rs *RuleSet) Resolve(a netip.Addr) Identity {
	return rs.resolveAll([]netip.Addr{a.Unmap().WithZone("")})[0].identity
}

// resolved is an address's longest ipcache match: its identity and, if
// the match is the address's own full-length entry, that entry's index.
type resolved struct {
	identity Identity
	bits     int
	exact    int // -1: none
}

// resolveAll resolves several addresses in one pass over the ipcache
// (which can hold 131,072 entries).
func (rs *RuleSet) resolveAll(addrs []netip.Addr) []resolved {
	out := make([]resolved, len(addrs))
	for j := range out {
		out[j] = resolved{identity: IdentityWorld, bits: -1, exact: -1}
	}
	for i, c := range rs.IPCache {
		bits := c.Prefix.Bits()
		for j, a := range addrs {
			if bits > out[j].bits && c.Prefix.Contains(a) {
				out[j].identity, out[j].bits = c.Identity, bits
				if bits == a.BitLen() {
					out[j].exact = i
				}
			}
		}
	}
	return out
}

// ErrReserved is wrapped by the error of CheckReserved and WithFailsafe for
// a rule set that uses an id reserved for the failsafe.
var ErrReserved = errors.New("reserved for the agent's failsafe (" + FailsafeName + ")")

// CheckReserved says whether rs uses the failsafe's reserved identities or
// rule id, which only WithFailsafe may add.
func (rs *RuleSet) CheckReserved() error {
	reserved := func(id Identity) bool { return id >= IdentityFailsafeFirst && id <= IdentityFailsafeLast }
	for i, e := range rs.Endpoints {
		if reserved(e.Identity) {
			return fmt.Errorf("endpoints[%d] (workload %q): identity %d is %w", i, e.Workload, e.Identity, ErrReserved)
		}
	}
	for i, c := range rs.IPCache {
		if reserved(c.Identity) {
			return fmt.Errorf("ipcache[%d]: %s: identity %d is %w", i, c.Prefix, c.Identity, ErrReserved)
		}
	}
	for i, r := range rs.Rules {
		if r.ID == RuleFailsafe {
			return fmt.Errorf("rules[%d]: rule id %d is %w", i, r.ID, ErrReserved)
		}
	}
	for i, e := range rs.Entries {
		if reserved(e.Peer) {
			return fmt.Errorf("entries[%d]: peer identity %d is %w", i, e.Peer, ErrReserved)
		}
		if e.Rule == RuleFailsafe {
			return fmt.Errorf("entries[%d]: rule id %d is %w", i, e.Rule, ErrReserved)
		}
	}
	return nil
}

// HostEndpoint returns the rule set's host-mode endpoint, if it has one.
func (rs *RuleSet) HostEndpoint() (Endpoint, bool) {
	for _, e := range rs.Endpoints {
		if e.HostMode() {
			return e, true
		}
	}
	return Endpoint{}, false
}

// WithFailsafe returns rs completed with the failsafe for cp (see above),
// or rs itself when it has no host-mode endpoint (the node's own traffic
// is not enforced then) or cp opens nothing. rs is not modified.
//
// An address whose identity is one of this node's endpoints' is left
// alone: the node's own addresses and its containers' never cross the
// host-mode endpoint's interfaces, and the datapath needs their identity
// unchanged to tell an endpoint's own packets (a remote workload that
// shares a local one's labels is left alone too, as it cannot be told
// apart). Loopback, unspecified and multicast addresses are ignored.
// It fails for a rule set that already uses the reserved ids, and for
// more distinct addresses than there are reserved identities.
func WithFailsafe(rs *RuleSet, cp ControlPlane) (*RuleSet, error) {
	if err := rs.CheckReserved(); err != nil {
		return nil, err
	}
	host, ok := rs.HostEndpoint()
	if !ok {
		return rs, nil
	}
	roles := make(map[netip.Addr]uint8)
	add := func(addrs []netip.Addr, role uint8) {
		for _, a := range addrs {
			a = a.Unmap().WithZone("")
			if a.IsValid() && !a.IsUnspecified() && !a.IsLoopback() && !a.IsMulticast() {
				roles[a] |= role
			}
		}
	}
	if cp.Port != 0 {
		add(cp.Controller, roleController)
	}
	add(cp.Resolvers, roleResolver)
	if len(roles) == 0 {
		return rs, nil
	}
	local := map[Identity]bool{IdentityHost: true}
	for _, e := range rs.Endpoints {
		local[e.Identity] = true
	}

	type group struct {
		was  Identity
		role uint8
	}
	groups := make(map[group]Identity)
	addrs := slices.SortedFunc(maps.Keys(roles), netip.Addr.Compare)
	found := rs.resolveAll(addrs)
	out := *rs
	out.IPCache = slices.Clone(rs.IPCache)
	next := IdentityFailsafeFirst
	for j, a := range addrs {
		was := found[j].identity
		if local[was] {
			continue
		}
		g := group{was, roles[a]}
		id, ok := groups[g]
		if !ok {
			if next > IdentityFailsafeLast {
				return nil, fmt.Errorf("%s: more than %d distinct control-plane peers", FailsafeName, IdentityFailsafeLast-IdentityFailsafeFirst+1)
			}
			id = next
			groups[g] = id
			next++
		}
		if i := found[j].exact; i >= 0 {
			out.IPCache[i].Identity = id
		} else {
			out.IPCache = append(out.IPCache, IPCacheEntry{Prefix: netip.PrefixFrom(a, a.BitLen()), Identity: id})
		}
	}
	if len(groups) == 0 {
		return rs, nil
	}

	// What the addresses' former identities got, their failsafe
	// identities get too, at every endpoint.
	sorted := slices.SortedFunc(maps.Keys(groups), func(a, b group) int {
		return cmp.Compare(groups[a], groups[b])
	})
	heirs := make(map[Identity][]Identity)
	for _, g := range sorted {
		heirs[g.was] = append(heirs[g.was], groups[g])
	}
	// Sized once: rule sets run to millions of entries.
	extra := 4 * len(sorted)
	for _, e := range rs.Entries {
		extra += len(heirs[e.Peer])
	}
	out.Entries = make([]Entry, len(rs.Entries), len(rs.Entries)+extra)
	copy(out.Entries, rs.Entries)
	for _, e := range rs.Entries {
		for _, id := range heirs[e.Peer] {
			c := e
			c.Peer = id
			out.Entries = append(out.Entries, c)
		}
	}
	allow := func(dir Direction, peer Identity, proto Protocol, port uint16) Entry {
		return Entry{Endpoint: host.ID, Direction: dir, Peer: peer, Protocol: proto, Port: port, Verdict: VerdictAllowed, Rule: RuleFailsafe}
	}
	for _, g := range sorted {
		id := groups[g]
		if g.role&roleController != 0 {
			out.Entries = append(out.Entries,
				allow(Egress, id, ProtocolTCP, cp.Port),
				allow(Ingress, id, ProtocolTCP, cp.Port))
		}
		if g.role&roleResolver != 0 {
			out.Entries = append(out.Entries,
				allow(Egress, id, ProtocolUDP, DNSPort),
				allow(Egress, id, ProtocolTCP, DNSPort))
		}
	}
	out.Rules = append(slices.Clone(rs.Rules), RuleName{ID: RuleFailsafe, Name: FailsafeName})
	return &out, nil
}
