package ruleset

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Validate checks the structural invariants the datapath relies on. It
// returns every problem found, joined, each naming the element at fault, so
// a bad rule set is rejected whole with a useful message.
func (rs *RuleSet) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if rs.Node == "" {
		bad("node: empty node name")
	}

	rules := make(map[RuleID]bool, len(rs.Rules))
	for i, r := range rs.Rules {
		switch {
		case r.ID == RuleDefaultDeny:
			bad("rules[%d]: id 0 is reserved for the default deny", i)
		case rules[r.ID]:
			bad("rules[%d]: duplicate rule id %d", i, r.ID)
		case r.Name == "":
			bad("rules[%d]: rule id %d has no name", i, r.ID)
		}
		rules[r.ID] = true
	}

	endpoints := make(map[EndpointID]Endpoint, len(rs.Endpoints))
	interfaces := make(map[string]EndpointID)
	hostMode := EndpointID(0)
	for i, e := range rs.Endpoints {
		where := fmt.Sprintf("endpoints[%d] (workload %q)", i, e.Workload)
		if e.ID == 0 {
			bad("%s: endpoint id 0 is reserved", where)
		}
		if _, dup := endpoints[e.ID]; dup {
			bad("%s: duplicate endpoint id %d", where, e.ID)
		}
		endpoints[e.ID] = e
		if e.Workload == "" {
			bad("%s: empty workload name", where)
		}
		if e.Identity <= IdentityWorld {
			bad("%s: identity %d is reserved", where, e.Identity)
		}
		if e.Mode > ModeMonitor {
			bad("%s: invalid mode %d", where, e.Mode)
		}
		if e.HostMode() {
			if hostMode != 0 {
				bad("%s: endpoints %d and %d are both in host mode; a node has one", where, hostMode, e.ID)
			}
			hostMode = e.ID
			continue
		}
		if e.Auto() {
			if len(e.Addresses) == 0 {
				bad("%s: interface %q needs the workload's addresses to find its interface", where, e.Interface)
			}
			for j, a := range e.Addresses {
				switch {
				case !a.IsValid() || a.Zone() != "" || a.Is4In6() || a.IsUnspecified():
					bad("%s: addresses[%d]: %s is not a workload address", where, j, a)
				case j > 0 && e.Addresses[j-1].Compare(a) >= 0:
					bad("%s: addresses[%d]: %s is out of order or listed twice (addresses are sorted and unique)", where, j, a)
				}
			}
			continue // several endpoints may be auto
		}
		if len(e.Addresses) > 0 {
			bad("%s: addresses are only given with interface %q", where, InterfaceAuto)
		}
		if other, dup := interfaces[e.Interface]; dup {
			bad("%s: interface %q already belongs to endpoint %d", where, e.Interface, other)
		}
		interfaces[e.Interface] = e.ID
	}

	// The ipcache and entries can hold millions of items: nothing below
	// formats or allocates per item unless the item is wrong.
	identities := make(map[Identity]bool)
	// A sorted ipcache (a canonical rule set's: what the compiler makes
	// and an agent merges) has its duplicates side by side; only an
	// unsorted one needs a set of its prefixes (building it was most of
	// an agent's validation of an update).
	sorted := slices.IsSortedFunc(rs.IPCache, compareIPCache)
	var prefixes map[netip.Prefix]struct{}
	if !sorted {
		prefixes = make(map[netip.Prefix]struct{}, len(rs.IPCache))
	}
	for i, c := range rs.IPCache {
		switch {
		case !c.Prefix.IsValid():
			bad("ipcache[%d]: invalid prefix", i)
			continue
		case c.Prefix.Addr().Is4In6():
			bad("ipcache[%d]: %s is an IPv4-mapped IPv6 prefix; write it as IPv4", i, c.Prefix)
		case c.Prefix != c.Prefix.Masked():
			bad("ipcache[%d]: %s has host bits set (want %s)", i, c.Prefix, c.Prefix.Masked())
		case c.Prefix.Addr().Zone() != "":
			bad("ipcache[%d]: %s has a zone", i, c.Prefix)
		}
		if c.Identity == IdentityAny {
			bad("ipcache[%d]: %s maps to identity 0, which is the wildcard", i, c.Prefix)
		}
		var dup bool
		if sorted {
			dup = i > 0 && rs.IPCache[i-1].Prefix == c.Prefix
		} else {
			_, dup = prefixes[c.Prefix]
			prefixes[c.Prefix] = struct{}{}
		}
		if dup {
			bad("ipcache[%d]: duplicate prefix %s", i, c.Prefix)
		}
		identities[c.Identity] = true
	}
	// The datapath tells an endpoint's own packets from spoofed (container
	// mode) or forwarded (host mode) ones by the identity of the local
	// address. An endpoint without addresses would drop everything, or in
	// host mode let everything through unchecked: refuse it.
	for _, e := range rs.Endpoints {
		if e.Identity > IdentityWorld && !identities[e.Identity] {
			bad("endpoint %d (workload %q): no ipcache prefix has its identity %d; its own addresses are needed to enforce it",
				e.ID, e.Workload, e.Identity)
		}
	}

	for i, e := range rs.Entries {
		if err := validEntry(e, endpoints, rules); err != nil {
			bad("entries[%d]: %w", i, err)
		}
	}
	return errors.Join(errs...)
}

// validEntry checks one entry; it allocates only when the entry is wrong.
func validEntry(e Entry, endpoints map[EndpointID]Endpoint, rules map[RuleID]bool) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if _, ok := endpoints[e.Endpoint]; !ok {
		bad("unknown endpoint %d", e.Endpoint)
	}
	if e.Direction > Egress {
		bad("invalid direction %d", e.Direction)
	}
	if e.Verdict < VerdictAllowed || e.Verdict > VerdictWouldDeny {
		bad("invalid verdict %d", e.Verdict)
	}
	if e.Rule == RuleDefaultDeny {
		bad("rule id 0 is the default deny; entries name the rule they come from")
	} else if !rules[e.Rule] {
		bad("rule id %d is not in the rule table", e.Rule)
	}
	if _, ok := protocolNames[e.Protocol]; !ok {
		bad("unsupported protocol %d", e.Protocol)
	}
	if !e.Protocol.HasPorts() && (e.Port != 0 || e.EndPort != 0) {
		bad("ports are only valid with TCP or UDP, not %s", e.Protocol)
	}
	if e.EndPort != 0 && (e.Port == 0 || e.EndPort < e.Port) {
		bad("endPort %d needs a port <= it (port is %d)", e.EndPort, e.Port)
	}
	if !e.Protocol.IsICMP() && (e.ICMPType != nil || e.ICMPCode != nil) {
		bad("ICMP type and code are only valid with ICMP or ICMPv6, not %s", e.Protocol)
	}
	if e.ICMPCode != nil && e.ICMPType == nil {
		bad("ICMP code without a type")
	}
	return errors.Join(errs...)
}
