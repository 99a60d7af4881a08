package compile

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// model indexes a validated policy.Set for compilation: label sets and
// their identities, nodes, addresses, CIDR identities and rule ids. It is
// read-only once built, so node compilations can share it concurrently.
type model struct {
	ws        []policy.Workload // sorted by name
	wLabel    []int             // workload -> label set
	wNode     []int             // workload -> node
	wEndpoint []ruleset.EndpointID
	labelSets []labelSet // sorted by canonical key
	kv        map[string][]int
	nodes     []nodeModel // sorted by name
	nodeOf    map[string]int
	addrs     []ownedAddr // sorted by address
	cidrID    map[netip.Prefix]ruleset.Identity
	managed   map[netip.Addr]int // address -> workload
	rules     []ruleRef          // every rule, sorted by "policy/rule"
}

type labelSet struct {
	key     string
	labels  policy.Labels
	id      ruleset.Identity
	members []int // workloads, sorted
	naddrs  int
}

type nodeModel struct {
	name      string
	workloads []int  // sorted by name
	host      int    // host-mode workload, or -1
	local     bitset // label sets of the node's container-mode workloads
}

type ownedAddr struct {
	addr     netip.Addr
	workload int
}

type ruleRef struct {
	policy *policy.Policy
	rule   *policy.Rule
	name   string // "policy/rule"
	id     ruleset.RuleID
}

func newModel(set *policy.Set) *model {
	m := &model{
		ws:      slices.Clone(set.Workloads),
		kv:      make(map[string][]int),
		nodeOf:  make(map[string]int),
		managed: make(map[netip.Addr]int),
	}
	slices.SortFunc(m.ws, func(a, b policy.Workload) int { return cmp.Compare(a.Name, b.Name) })

	// Label sets and their identities.
	byKey := make(map[string]int)
	var keys []string
	for _, w := range m.ws {
		k := w.Labels.String()
		if _, ok := byKey[k]; !ok {
			byKey[k] = 0
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	ids := allocateAs[ruleset.Identity](keys, labelIdentityFirst, labelIdentityLast)
	m.labelSets = make([]labelSet, len(keys))
	for i, k := range keys {
		byKey[k] = i
		m.labelSets[i] = labelSet{key: k, id: ids[i]}
	}
	m.wLabel = make([]int, len(m.ws))
	for wi, w := range m.ws {
		li := byKey[w.Labels.String()]
		m.wLabel[wi] = li
		ls := &m.labelSets[li]
		ls.labels = w.Labels
		ls.members = append(ls.members, wi)
		ls.naddrs += len(w.Addresses)
		for _, a := range w.Addresses {
			m.addrs = append(m.addrs, ownedAddr{a, wi})
			m.managed[a] = wi
		}
	}
	for li, ls := range m.labelSets {
		for k, v := range ls.labels {
			kv := k + "=" + v
			m.kv[kv] = append(m.kv[kv], li) // label sets are visited in order: stays sorted
		}
	}
	slices.SortFunc(m.addrs, func(a, b ownedAddr) int { return a.addr.Compare(b.addr) })

	// Nodes, their host-mode workload and endpoint ids.
	var nodeNames []string
	for _, w := range m.ws {
		if _, ok := m.nodeOf[w.Node]; !ok {
			m.nodeOf[w.Node] = 0
			nodeNames = append(nodeNames, w.Node)
		}
	}
	slices.Sort(nodeNames)
	m.nodes = make([]nodeModel, len(nodeNames))
	for i, n := range nodeNames {
		m.nodeOf[n] = i
		m.nodes[i] = nodeModel{name: n, host: -1, local: newBitset(len(m.labelSets))}
	}
	m.wNode = make([]int, len(m.ws))
	for wi, w := range m.ws {
		ni := m.nodeOf[w.Node]
		m.wNode[wi] = ni
		n := &m.nodes[ni]
		n.workloads = append(n.workloads, wi)
		if w.HostMode() {
			n.host = wi
		} else {
			n.local.set(m.wLabel[wi])
		}
	}
	m.wEndpoint = make([]ruleset.EndpointID, len(m.ws))
	for _, n := range m.nodes {
		names := make([]string, len(n.workloads))
		for i, wi := range n.workloads {
			names[i] = m.ws[wi].Name
		}
		for i, id := range endpointIDs(names) {
			m.wEndpoint[n.workloads[i]] = id
		}
	}

	// CIDR identities for every prefix written in a cidr or except.
	seen := make(map[netip.Prefix]bool)
	var prefixes []netip.Prefix
	var names []string
	for pi := range set.Policies {
		p := &set.Policies[pi]
		for ri := range p.Rules {
			r := &p.Rules[ri]
			m.rules = append(m.rules, ruleRef{policy: p, rule: r, name: p.Name + "/" + r.Name})
			for _, peer := range slices.Concat(r.From, r.To) {
				if !peer.CIDR.IsValid() {
					continue
				}
				for _, q := range append([]netip.Prefix{peer.CIDR}, peer.Except...) {
					if !seen[q] {
						seen[q] = true
						prefixes = append(prefixes, q)
					}
				}
			}
		}
	}
	slices.SortFunc(prefixes, comparePrefix)
	m.cidrID = cidrIdentities(prefixes)

	slices.SortFunc(m.rules, func(a, b ruleRef) int { return cmp.Compare(a.name, b.name) })
	for _, r := range m.rules {
		names = append(names, r.name)
	}
	for i, id := range ruleIDs(names) {
		m.rules[i].id = id
	}
	return m
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// lastAddr returns the highest address of a prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// addrsIn returns the managed addresses inside p, as a sub-slice of the
// sorted address list.
func (m *model) addrsIn(p netip.Prefix) []ownedAddr {
	i, j := m.addrRange(p)
	return m.addrs[i:j]
}

// addrRange returns the indexes [i, j) of the managed addresses inside p
// in the sorted address list.
func (m *model) addrRange(p netip.Prefix) (i, j int) {
	lo, hi := p.Masked().Addr(), lastAddr(p)
	i, _ = slices.BinarySearchFunc(m.addrs, lo, func(o ownedAddr, a netip.Addr) int { return o.addr.Compare(a) })
	j, found := slices.BinarySearchFunc(m.addrs, hi, func(o ownedAddr, a netip.Addr) int { return o.addr.Compare(a) })
	if found {
		j++
	}
	return i, j
}

// selectorSet returns the label sets a selector matches.
func (m *model) selectorSet(sel policy.Selector) bitset {
	b := newBitset(len(m.labelSets))
	if len(sel) == 0 {
		for i := range m.labelSets {
			b.set(i)
		}
		return b
	}
	keys := make([]string, 0, len(sel))
	for k := range sel {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var cur []int
	for i, k := range keys {
		list := m.kv[k+"="+sel[k]]
		if i == 0 {
			cur = slices.Clone(list)
			continue
		}
		cur = intersectSorted(cur, list)
	}
	for _, li := range cur {
		b.set(li)
	}
	return b
}

func intersectSorted(a, b []int) []int {
	out := a[:0]
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] < b[j]:
			i++
		case a[i] > b[j]:
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	return out
}

// describeIdentity names an identity for people: its labels, its prefix,
// or a reserved name.
func (m *model) describeIdentities() map[ruleset.Identity]string {
	out := map[ruleset.Identity]string{
		ruleset.IdentityAny:   "any",
		ruleset.IdentityWorld: "world",
		ruleset.IdentityHost:  "host",
	}
	for _, ls := range m.labelSets {
		out[ls.id] = "{" + ls.key + "}"
	}
	for p, id := range m.cidrID {
		out[id] = "cidr " + p.String()
	}
	return out
}

// workloadNames lists workload names, for messages.
func (m *model) workloadNames(ws []int, limit int) string {
	var names []string
	for i, wi := range ws {
		if i == limit {
			names = append(names, "...")
			break
		}
		names = append(names, m.ws[wi].Name)
	}
	return strings.Join(names, ", ")
}
