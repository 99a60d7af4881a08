package compile

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// DenyExpansionLimit is how many peer identities a deny rule may expand to
// at one end before it is stored there only where it overrides an allow
// (see the package comment).
const DenyExpansionLimit = 64

// Options tune a compilation.
type Options struct {
	// Limits are the datapath map capacities; the zero value means
	// ruleset.DefaultLimits().
	Limits ruleset.Limits
	// DefaultMode gives the mode of workloads without one on a node (an
	// agent's --default-mode); nil means enforce.
	DefaultMode func(node string) ruleset.Mode
	// Nodes restricts compilation to these nodes; nil compiles every node.
	Nodes []string
	// Validate runs ruleset.Validate on every node's rule set. The compiler
	// builds valid rule sets by construction (its tests and fuzz target
	// check every one) and the datapath validates whatever it applies, so
	// this is off by default: on a 10,000-workload cluster it would double
	// the compile time. egctl turns it on.
	Validate bool
}

// Result is the compiled policy: one rule set per node.
type Result struct {
	// Nodes lists the compiled nodes, sorted.
	Nodes    []string
	RuleSets map[string]*ruleset.RuleSet
	// Tables are the rule sets encoded as the datapath stores them; Sizes
	// their map entry counts.
	Tables map[string]*ruleset.Tables
	Sizes  map[string]ruleset.Size
	// Identities describes every identity for people ("{app=shop,role=db}",
	// "cidr 10.0.0.0/8", "world").
	Identities map[ruleset.Identity]string
	// Warnings found while compiling, in policy.Diagnostic form.
	Warnings policy.Diagnostics
}

// ErrUnknownNode is returned when Options.Nodes names a node no workload is on.
var ErrUnknownNode = errors.New("unknown node")

// Compile turns a validated policy set into per-node rule sets. Every rule
// set is encoded as the datapath will store it and sized against
// Options.Limits: Compile fails when a node's rule set does not fit (every
// error names the node and the map or the entry at fault). Identical input
// gives identical output.
func Compile(set *policy.Set, opts Options) (*Result, error) {
	if opts.Limits == (ruleset.Limits{}) {
		opts.Limits = ruleset.DefaultLimits()
	}
	m := newModel(set)
	c := &compiler{m: m, opts: opts}
	c.resolveRules()

	nodes, err := c.selectNodes()
	if err != nil {
		return nil, err
	}
	c.planEnds(nodes)

	res := &Result{
		RuleSets:   make(map[string]*ruleset.RuleSet, len(nodes)),
		Tables:     make(map[string]*ruleset.Tables, len(nodes)),
		Sizes:      make(map[string]ruleset.Size, len(nodes)),
		Identities: m.describeIdentities(),
	}
	outs := make([]nodeOutput, len(nodes))
	var wg sync.WaitGroup
	work := make(chan int)
	for range min(runtime.GOMAXPROCS(0), len(nodes)) {
		wg.Go(func() {
			for i := range work {
				outs[i] = c.compileNode(nodes[i])
			}
		})
	}
	for i := range nodes {
		work <- i
	}
	close(work)
	wg.Wait()

	var errs []error
	shadow := make(map[ruleset.RuleID]*shadowStat)
	for i, ni := range nodes {
		o := outs[i]
		name := m.nodes[ni].name
		if o.err != nil {
			// Each line of an error names its node (a size check
			// reports every full map at once).
			var joined interface{ Unwrap() []error }
			if errors.As(o.err, &joined) {
				for _, err := range joined.Unwrap() {
					errs = append(errs, fmt.Errorf("node %s: %w", name, err))
				}
			} else {
				errs = append(errs, fmt.Errorf("node %s: %w", name, o.err))
			}
			continue
		}
		res.Nodes = append(res.Nodes, name)
		res.RuleSets[name] = o.rs
		res.Tables[name] = o.tables
		res.Sizes[name] = o.size
		mergeShadow(shadow, o.shadow)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	res.Warnings = append(c.warnings, c.shadowWarnings(shadow, len(nodes) == len(m.nodes))...)
	res.Warnings.Sort()
	return res, nil
}

// compiler holds the node-independent results shared by node compilations.
type compiler struct {
	m        *model
	opts     Options
	rules    []compiledRule
	warnings policy.Diagnostics
	// items[node] are the rule ends on that node.
	items [][]endItem
	// globalIPCache maps every managed address to its label identity,
	// sorted; each node takes the part of it its ipcache needs
	// (scopedManaged) and patches its own host.
	globalIPCache []ruleset.IPCacheEntry
	// addrsOf[w] are the indexes in globalIPCache of workload w's
	// addresses; labelOf maps a label identity to its label set.
	addrsOf [][]int32
	labelOf map[ruleset.Identity]int
}

type compiledRule struct {
	ref       ruleRef
	from, to  *side
	verdict   ruleset.Verdict
	templates []ruleset.Entry
	ends      int // how many ends it has, over all compiled nodes
}

// endItem says: workload w is an end of rule r in direction dir. restricted
// ends are host-mode workloads that are an end only through a `host` peer:
// from the node's point of view, so their peers are limited to the other
// side's workloads on the same node.
type endItem struct {
	rule       int32
	w          int32
	dir        ruleset.Direction
	restricted bool
}

func (c *compiler) resolveRules() {
	sel := make(map[string]bitset)
	for _, ref := range c.m.rules {
		deny := ref.rule.Action == policy.ActionDeny
		cr := compiledRule{ref: ref, templates: templates(ref.rule.Ports), verdict: ruleset.VerdictAllowed}
		if deny {
			cr.verdict = ruleset.VerdictDenied
			if ref.policy.Monitor() {
				cr.verdict = ruleset.VerdictWouldDeny
			}
		}
		var pf, pt []partialOverlap
		cr.from, pf = c.m.newSide(ref.rule.From, deny, sel)
		cr.to, pt = c.m.newSide(ref.rule.To, deny, sel)
		c.partialWarnings(ref, "from", pf)
		c.partialWarnings(ref, "to", pt)
		if ref.name == ruleset.FailsafeName {
			c.warnings = append(c.warnings, policy.Diagnostic{Pos: ref.rule.Pos, Path: ref.rule.Path + ".name", Severity: policy.SeverityWarning,
				Message: fmt.Sprintf("rule %s has the name of the agent's failsafe: flows and explain cannot tell them apart; rename it", ref.name)})
		}
		c.rules = append(c.rules, cr)
	}
	c.addrsOf = make([][]int32, len(c.m.ws))
	for i, oa := range c.m.addrs {
		c.globalIPCache = append(c.globalIPCache, ruleset.IPCacheEntry{
			Prefix:   netip.PrefixFrom(oa.addr, oa.addr.BitLen()),
			Identity: c.m.labelSets[c.m.wLabel[oa.workload]].id,
		})
		c.addrsOf[oa.workload] = append(c.addrsOf[oa.workload], int32(i))
	}
	c.labelOf = make(map[ruleset.Identity]int, len(c.m.labelSets))
	for li, ls := range c.m.labelSets {
		c.labelOf[ls.id] = li
	}
}

func (c *compiler) partialWarnings(ref ruleRef, which string, ps []partialOverlap) {
	for _, p := range ps {
		treated := "outside (an allow never grants more than it says)"
		if p.treatedAsInside {
			treated = "inside (a deny never grants more than it says)"
		}
		c.warnings = append(c.warnings, policy.Diagnostic{
			Pos: ref.rule.Pos, Path: ref.rule.Path + "." + which, Severity: policy.SeverityWarning,
			Message: fmt.Sprintf("%s has %d of %d addresses inside the rule's CIDRs; treated as %s", p.what, p.inside, p.total, treated),
		})
	}
}

func (c *compiler) selectNodes() ([]int, error) {
	if c.opts.Nodes == nil {
		nodes := make([]int, len(c.m.nodes))
		for i := range nodes {
			nodes[i] = i
		}
		return nodes, nil
	}
	var nodes []int
	for _, name := range c.opts.Nodes {
		ni, ok := c.m.nodeOf[name]
		if !ok {
			return nil, fmt.Errorf("node %q: %w: no workload names it in spec.node", name, ErrUnknownNode)
		}
		if !slices.Contains(nodes, ni) {
			nodes = append(nodes, ni)
		}
	}
	slices.Sort(nodes)
	return nodes, nil
}

// planEnds finds every end of every rule on the compiled nodes: the
// managed sources get egress entries, the managed destinations ingress
// entries (docs/POLICY.md, semantics 3: one edge, enforced at both ends).
func (c *compiler) planEnds(nodes []int) {
	want := make([]bool, len(c.m.nodes))
	for _, ni := range nodes {
		want[ni] = true
	}
	c.items = make([][]endItem, len(c.m.nodes))
	add := func(ri int, w int, dir ruleset.Direction, restricted bool) {
		ni := c.m.wNode[w]
		if !want[ni] {
			return
		}
		c.items[ni] = append(c.items[ni], endItem{rule: int32(ri), w: int32(w), dir: dir, restricted: restricted})
		c.rules[ri].ends++
	}
	for ri := range c.rules {
		r := &c.rules[ri]
		for _, sd := range []struct {
			s   *side
			dir ruleset.Direction
		}{{r.from, ruleset.Egress}, {r.to, ruleset.Ingress}} {
			sd.s.labels.each(func(li int) {
				for _, w := range c.m.labelSets[li].members {
					if !c.m.ws[w].HostMode() {
						add(ri, w, sd.dir, false)
					}
				}
			})
			for _, n := range c.m.nodes {
				switch {
				case n.host < 0:
				case c.m.coversHost(sd.s, n.host):
					add(ri, n.host, sd.dir, false)
				case sd.s.host:
					add(ri, n.host, sd.dir, true)
				}
			}
		}
	}
}

// nodeOutput is one node's compilation.
type nodeOutput struct {
	rs     *ruleset.RuleSet
	tables *ruleset.Tables
	size   ruleset.Size
	shadow map[ruleset.RuleID]*shadowStat
	err    error
}

// nodeCompiler compiles one node; it only reads the compiler.
type nodeCompiler struct {
	*compiler
	node     *nodeModel
	prefixes []netip.Prefix // CIDR prefixes in this node's ipcache, sorted
	peers    map[peerKey][]ruleset.Identity
	entries  []ruleset.Entry
	deferred []deferredDeny
}

type peerKey struct {
	s          *side
	restricted bool
}

// deferredDeny is a deny stored only where it overrides an allow.
type deferredDeny struct {
	rule  *compiledRule
	ep    ruleset.EndpointID
	dir   ruleset.Direction
	peers []ruleset.Identity
}

func (c *compiler) compileNode(ni int) nodeOutput {
	nc := &nodeCompiler{compiler: c, node: &c.m.nodes[ni], peers: make(map[peerKey][]ruleset.Identity)}
	nc.collectPrefixes(c.items[ni])
	modes := make(map[ruleset.EndpointID]ruleset.Mode)
	for _, w := range nc.node.workloads {
		modes[c.m.wEndpoint[w]] = c.mode(w)
	}
	// Resolve every end's peers first, so the entries slice is allocated
	// once at its final size (a large node has hundreds of thousands).
	type planned struct {
		r     *compiledRule
		ep    ruleset.EndpointID
		dir   ruleset.Direction
		peers []ruleset.Identity
	}
	plan := make([]planned, 0, len(c.items[ni]))
	size := 0
	for _, it := range c.items[ni] {
		r := &c.rules[it.rule]
		other := r.to
		if it.dir == ruleset.Ingress {
			other = r.from
		}
		p := planned{r: r, ep: c.m.wEndpoint[it.w], dir: it.dir, peers: nc.peersOn(other, it.restricted)}
		if nc.storeInFull(r.verdict, p.peers, modes[p.ep]) {
			size += len(p.peers) * len(r.templates)
		}
		plan = append(plan, p)
	}
	nc.entries = make([]ruleset.Entry, 0, size)
	for _, p := range plan {
		if nc.storeInFull(p.r.verdict, p.peers, modes[p.ep]) {
			nc.emit(p.r, p.ep, p.dir, p.peers)
			continue
		}
		nc.deferred = append(nc.deferred, deferredDeny{rule: p.r, ep: p.ep, dir: p.dir, peers: p.peers})
	}
	nc.emitDeferred()
	return nc.finish(modes)
}

// storeInFull decides whether a rule's entries at an end are stored for
// every peer, or (for denies) only where they override an allow there.
// A would-deny entry with no allow under it would turn a default deny into
// a pass, so at an enforcing endpoint would-deny is only ever stored over
// allows. An enforced deny is stored in full unless its peers expand
// beyond DenyExpansionLimit: then storing it only over allows gives the
// same verdicts at a bounded cost.
func (nc *nodeCompiler) storeInFull(v ruleset.Verdict, peers []ruleset.Identity, mode ruleset.Mode) bool {
	switch {
	case v == ruleset.VerdictAllowed:
		return true
	case v == ruleset.VerdictWouldDeny && mode == ruleset.ModeEnforce:
		return false
	}
	return len(peers) <= DenyExpansionLimit || (len(peers) == 1 && peers[0] == ruleset.IdentityAny)
}

func (c *compiler) mode(w int) ruleset.Mode {
	switch c.m.ws[w].Mode {
	case policy.ModeMonitor:
		return ruleset.ModeMonitor
	case policy.ModeEnforce:
		return ruleset.ModeEnforce
	}
	if c.opts.DefaultMode != nil {
		return c.opts.DefaultMode(c.m.ws[w].Node)
	}
	return ruleset.ModeEnforce
}

// collectPrefixes picks the CIDR prefixes this node's ipcache needs: those
// of the far side of every rule end on the node. A prefix that is exactly a
// managed address is left out: the workload's own entry is the same prefix,
// and address coverage already puts the workload's identity in the peers.
func (nc *nodeCompiler) collectPrefixes(items []endItem) {
	seen := make(map[netip.Prefix]bool)
	seenSide := make(map[*side]bool)
	for _, it := range items {
		r := &nc.rules[it.rule]
		other := r.to
		if it.dir == ruleset.Ingress {
			other = r.from
		}
		// A universal side resolves to the any-peer wildcard and a
		// restricted end to local workloads: neither needs a prefix.
		if seenSide[other] || other.universal || it.restricted {
			continue
		}
		seenSide[other] = true
		for _, p := range other.cidrs {
			for _, q := range append([]netip.Prefix{p.CIDR}, p.Except...) {
				if seen[q] {
					continue
				}
				seen[q] = true
				if _, managed := nc.m.managed[q.Addr()]; managed && q.IsSingleIP() {
					continue
				}
				nc.prefixes = append(nc.prefixes, q)
			}
		}
	}
	slices.SortFunc(nc.prefixes, comparePrefix)
}

// peersOn returns the identities, as this node's ipcache resolves them,
// that side s covers: sorted, or just IdentityAny when s covers every
// identity. restricted limits them to the node's own workloads (see
// endItem).
func (nc *nodeCompiler) peersOn(s *side, restricted bool) []ruleset.Identity {
	key := peerKey{s, restricted}
	if p, ok := nc.peers[key]; ok {
		return p
	}
	hostIn := s.host || (nc.node.host >= 0 && nc.m.coversHost(s, nc.node.host))
	out := make([]ruleset.Identity, 0, len(s.labelIDs)+len(nc.prefixes)+2)
	switch {
	case restricted:
		if hostIn {
			out = append(out, ruleset.IdentityHost)
		}
		s.labels.each(func(li int) {
			if nc.node.local.has(li) {
				out = append(out, nc.m.labelSets[li].id)
			}
		})
		sortIdentities(out)
	case s.universal || (s.allLabels && s.world && hostIn):
		out = []ruleset.Identity{ruleset.IdentityAny}
	default:
		if s.world {
			out = append(out, ruleset.IdentityWorld)
		}
		if hostIn {
			out = append(out, ruleset.IdentityHost)
		}
		out = append(out, s.labelIDs...)
		var cidr []ruleset.Identity
		for _, q := range nc.prefixes {
			if s.world || s.coversPrefix(q) {
				cidr = append(cidr, nc.m.cidrID[q])
			}
		}
		sortIdentities(cidr)
		out = append(out, cidr...) // CIDR identities are above every label identity
	}
	nc.peers[key] = out
	return out
}

func sortIdentities(ids []ruleset.Identity) { slices.Sort(ids) }

func (nc *nodeCompiler) emit(r *compiledRule, ep ruleset.EndpointID, dir ruleset.Direction, peers []ruleset.Identity) {
	for _, t := range r.templates {
		for _, p := range peers {
			nc.add(t, r, ep, dir, p)
		}
	}
}

func (nc *nodeCompiler) add(t ruleset.Entry, r *compiledRule, ep ruleset.EndpointID, dir ruleset.Direction, peer ruleset.Identity) {
	t.Endpoint, t.Direction, t.Peer, t.Verdict, t.Rule = ep, dir, peer, r.verdict, r.ref.id
	if t.Protocol.IsICMP() {
		t.OwnICMP()
	}
	nc.entries = append(nc.entries, t)
}

// emitDeferred stores each deferred deny where it overlaps an allow of the
// same endpoint and direction: at the allow's peer (or every deny peer
// under an any-peer allow) and on the ports both match.
func (nc *nodeCompiler) emitDeferred() {
	if len(nc.deferred) == 0 {
		return
	}
	allows := make(map[ruleset.ShapeKey][]ruleset.Entry)
	for _, e := range nc.entries {
		if e.Verdict == ruleset.VerdictAllowed {
			k := ruleset.ShapeKey{Endpoint: e.Endpoint, Direction: e.Direction}
			allows[k] = append(allows[k], e)
		}
	}
	for _, d := range nc.deferred {
		anyPeer := len(d.peers) == 1 && d.peers[0] == ruleset.IdentityAny
		for _, a := range allows[ruleset.ShapeKey{Endpoint: d.ep, Direction: d.dir}] {
			for _, t := range d.rule.templates {
				both, ok := intersectPorts(t, a)
				if !ok {
					continue
				}
				switch {
				case a.Peer == ruleset.IdentityAny:
					for _, p := range d.peers {
						nc.add(both, d.rule, d.ep, d.dir, p)
					}
				case anyPeer:
					nc.add(both, d.rule, d.ep, d.dir, a.Peer)
				default:
					if _, in := slices.BinarySearch(d.peers, a.Peer); in {
						nc.add(both, d.rule, d.ep, d.dir, a.Peer)
					}
				}
			}
		}
	}
}

// finish assembles, checks, encodes and sizes the node's rule set.
func (nc *nodeCompiler) finish(modes map[ruleset.EndpointID]ruleset.Mode) nodeOutput {
	m := nc.m
	rs := &ruleset.RuleSet{Node: nc.node.name, Entries: nc.entries}
	for _, w := range nc.node.workloads {
		wl := &m.ws[w]
		id := m.labelSets[m.wLabel[w]].id
		if wl.HostMode() {
			id = ruleset.IdentityHost
		}
		ep := m.wEndpoint[w]
		e := ruleset.Endpoint{ID: ep, Workload: wl.Name, Interface: wl.Interface, Identity: id, Mode: modes[ep]}
		if wl.Auto() {
			// The agent finds the interface from these (docs/POLICY.md,
			// "interface: auto"); other endpoints leave them out, so their
			// rule sets hash as before.
			e.Addresses = slices.SortedFunc(slices.Values(wl.Addresses), netip.Addr.Compare)
			e.Addresses = slices.Compact(e.Addresses)
		}
		rs.Endpoints = append(rs.Endpoints, e)
	}

	if managed, shared := nc.scopedManaged(rs.Entries); shared || len(nc.prefixes) > 0 {
		rs.IPCache = mergeIPCache(managed, nc.prefixes, m.cidrID)
	} else {
		rs.IPCache = managed // the node's own list: patched below, and kept, without a second copy
	}
	if nc.node.host >= 0 {
		// The node's own addresses are the host identity here (docs/POLICY.md, semantics 5 of docs/POLICY.md).
		for _, a := range m.ws[nc.node.host].Addresses {
			i, found := slices.BinarySearchFunc(rs.IPCache, a, func(e ruleset.IPCacheEntry, a netip.Addr) int {
				return cmp.Or(e.Prefix.Addr().Compare(a), cmp.Compare(e.Prefix.Bits(), a.BitLen()))
			})
			if found {
				rs.IPCache[i].Identity = ruleset.IdentityHost
			}
		}
	}
	used := make(map[ruleset.RuleID]bool)
	for _, e := range rs.Entries {
		used[e.Rule] = true
	}
	for _, r := range nc.rules {
		if used[r.ref.id] {
			rs.Rules = append(rs.Rules, ruleset.RuleName{ID: r.ref.id, Name: r.ref.name})
		}
	}

	// Sorting here with packed keys leaves Canonicalize (which must still
	// run: it is what makes equal rule sets equal) an already sorted input.
	rs.Entries = sortEntries(rs.Entries)
	rs.Canonicalize()
	if nc.opts.Validate {
		if err := rs.Validate(); err != nil {
			return nodeOutput{err: fmt.Errorf("compiled rule set is invalid (a compiler bug): %w", err)}
		}
	}
	tables, err := ruleset.Encode(rs)
	if err != nil {
		return nodeOutput{err: nc.explainEncodeError(rs, err)}
	}
	size := tables.Size(rs)
	if err := size.Check(nc.opts.Limits); err != nil {
		return nodeOutput{err: err}
	}
	return nodeOutput{rs: rs, tables: tables, size: size, shadow: shadowStats(rs.Entries)}
}

// scopedManaged returns the managed addresses this node's ipcache holds,
// sorted: globalIPCache itself (shared is true: never to be modified), or a
// new slice holding part of it. They are those of the
// identities its entries name as peers, its own workloads' (the datapath
// checks a workload's own traffic against them), and every one inside one
// of its CIDR prefixes; all of them when an entry names world.
//
// Why that is exact: an address left out resolves on this node to world
// (it is inside none of the node's prefixes), which no entry names, and
// its own identity is named by none either; so only any-peer entries or
// the default decide it, as they would have with its identity. The
// ipcache thus grows with what the node's policy names, not with the
// cluster: an apply on 10,000 nodes no longer costs nodes x workloads
// (docs/ARCHITECTURE.md, "What changes where").
func (nc *nodeCompiler) scopedManaged(entries []ruleset.Entry) (list []ruleset.IPCacheEntry, shared bool) {
	named := make(map[ruleset.Identity]bool)
	for i := range entries {
		named[entries[i].Peer] = true
	}
	if named[ruleset.IdentityWorld] {
		return nc.globalIPCache, true
	}
	// Sized first: keep is allocated once (this runs for every node).
	n := 0
	for _, w := range nc.node.workloads {
		n += len(nc.addrsOf[w])
	}
	for id := range named {
		if li, ok := nc.labelOf[id]; ok {
			n += nc.m.labelSets[li].naddrs
		}
	}
	ranges := make([][2]int, len(nc.prefixes))
	for pi, q := range nc.prefixes {
		i, j := nc.m.addrRange(q)
		ranges[pi] = [2]int{i, j}
		n += j - i
	}
	keep := make([]int32, 0, n)
	for _, w := range nc.node.workloads {
		keep = append(keep, nc.addrsOf[w]...)
	}
	for id := range named {
		li, ok := nc.labelOf[id]
		if !ok {
			continue // reserved or CIDR identity
		}
		for _, w := range nc.m.labelSets[li].members {
			keep = append(keep, nc.addrsOf[w]...)
		}
	}
	for _, r := range ranges {
		for k := r[0]; k < r[1]; k++ {
			keep = append(keep, int32(k))
		}
	}
	slices.Sort(keep)
	keep = slices.Compact(keep)
	if len(keep) == len(nc.globalIPCache) {
		return nc.globalIPCache, true
	}
	out := make([]ruleset.IPCacheEntry, len(keep))
	for i, k := range keep {
		out[i] = nc.globalIPCache[k]
	}
	return out, false
}

// explainEncodeError adds the workload and the rules involved to an Encode
// failure (too many disjoint port ranges for one peer).
func (nc *nodeCompiler) explainEncodeError(rs *ruleset.RuleSet, err error) error {
	names := make(map[string]bool)
	for _, e := range rs.Entries {
		lo, hi := e.PortRange()
		if e.Protocol.HasPorts() && hi > lo && hi-lo < 0xffff {
			names[rs.RuleName(e.Rule)] = true
		}
	}
	var list []string
	for n := range names {
		list = append(list, n)
	}
	slices.Sort(list)
	workloads := make([]string, 0, len(rs.Endpoints))
	for _, ep := range rs.Endpoints {
		workloads = append(workloads, fmt.Sprintf("%d=%s", ep.ID, ep.Workload))
	}
	return fmt.Errorf("%w (endpoints: %v; rules with port ranges: %v)", err, workloads, list)
}
