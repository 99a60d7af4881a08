package compile

import (
	"fmt"
	"net/netip"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// side is one end of a rule (its from or to list) resolved against the
// model: which label sets it covers and which non-label identities it adds.
// It is node-independent; peersOn turns it into the identities one node's
// ipcache resolves.
type side struct {
	// sel: label sets matched by selectors. labels: sel plus the label sets
	// whose addresses the cidr peers cover (see cover).
	sel, labels bitset
	labelIDs    []ruleset.Identity // identities of labels, sorted
	allLabels   bool
	world, host bool
	cidrs       []policy.Peer
	// universal: the cidr peers hold every IPv4 and every IPv6 address, so
	// the side covers every identity there can be.
	universal bool
	deny      bool
}

// partialOverlap is a label set (or a host workload) whose addresses are
// partly inside a side's cidr peers.
type partialOverlap struct {
	what            string
	inside, total   int
	treatedAsInside bool
}

// newSide resolves peers. deny says whether the rule denies: a label set
// partly inside the cidr peers counts as inside for a deny and as outside
// for an allow, so neither ever grants more than the rule says.
func (m *model) newSide(peers []policy.Peer, deny bool, selCache map[string]bitset) (*side, []partialOverlap) {
	s := &side{sel: newBitset(len(m.labelSets)), deny: deny}
	var v4all, v6all bool
	for _, p := range peers {
		switch {
		case p.Selector != nil:
			key := policy.Labels(p.Selector).String()
			b, ok := selCache[key]
			if !ok {
				b = m.selectorSet(p.Selector)
				selCache[key] = b
			}
			s.sel.or(b)
		case p.CIDR.IsValid():
			s.cidrs = append(s.cidrs, p)
			if p.CIDR.Bits() == 0 && len(p.Except) == 0 {
				if p.CIDR.Addr().Is4() {
					v4all = true
				} else {
					v6all = true
				}
			}
		case p.World:
			s.world = true
		case p.Host:
			s.host = true
		}
	}
	s.universal = v4all && v6all
	s.labels = s.sel.clone()
	var partial []partialOverlap
	if len(s.cidrs) > 0 {
		inside := m.countInside(s.cidrs)
		for li, n := range inside {
			ls := &m.labelSets[li]
			switch {
			case n == ls.naddrs:
				s.labels.set(li)
			case s.sel.has(li):
				// selected by label anyway
			default:
				partial = append(partial, partialOverlap{
					what:            fmt.Sprintf("label set {%s} (workloads %s)", ls.key, m.workloadNames(ls.members, 3)),
					inside:          n,
					total:           ls.naddrs,
					treatedAsInside: deny,
				})
				if deny {
					s.labels.set(li)
				}
			}
		}
	}
	s.allLabels = s.labels.count() == len(m.labelSets)
	s.labels.each(func(li int) { s.labelIDs = append(s.labelIDs, m.labelSets[li].id) })
	sortIdentities(s.labelIDs)
	return s, partial
}

// countInside counts, per label set, the managed addresses inside the union
// of the cidr peers (each minus its excepts). Only label sets with at least
// one address inside appear.
func (m *model) countInside(cidrs []policy.Peer) map[int]int {
	inside := make(map[int]int)
	seen := make(map[netip.Addr]bool)
	for _, p := range cidrs {
		for _, oa := range m.addrsIn(p.CIDR) {
			if seen[oa.addr] || inAny(p.Except, oa.addr) {
				continue
			}
			seen[oa.addr] = true
			inside[m.wLabel[oa.workload]]++
		}
	}
	return inside
}

func inAny(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// coversAddr reports whether the cidr peers hold address a.
func (s *side) coversAddr(a netip.Addr) bool {
	for _, p := range s.cidrs {
		if p.CIDR.Contains(a) && !inAny(p.Except, a) {
			return true
		}
	}
	return false
}

// coversHost reports whether the side covers host-mode workload w as the
// node itself (identity host on its own node): by a selector matching its
// labels, or by cidr peers holding its addresses (all of them, or some of
// them for a deny). The host peer is separate (see ends).
func (m *model) coversHost(s *side, w int) bool {
	if s.sel.has(m.wLabel[w]) {
		return true
	}
	if len(s.cidrs) == 0 {
		return false
	}
	in := 0
	addrs := m.ws[w].Addresses
	for _, a := range addrs {
		if s.coversAddr(a) {
			in++
		}
	}
	return in == len(addrs) || (in > 0 && s.deny)
}

// coversPrefix reports whether the addresses that resolve to CIDR prefix q
// in an ipcache holding every prefix of the side are all inside the side:
// q lies inside a cidr peer and inside none of its excepts. Because every
// except is itself in the ipcache, this is exact.
func (s *side) coversPrefix(q netip.Prefix) bool {
	for _, p := range s.cidrs {
		if !prefixInside(q, p.CIDR) {
			continue
		}
		excluded := false
		for _, e := range p.Except {
			if prefixInside(q, e) {
				excluded = true
				break
			}
		}
		if !excluded {
			return true
		}
	}
	return false
}

// prefixInside reports whether q lies inside p.
func prefixInside(q, p netip.Prefix) bool {
	return q.Addr().Is4() == p.Addr().Is4() && q.Bits() >= p.Bits() && p.Contains(q.Addr())
}
