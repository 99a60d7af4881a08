package ruleset

import (
	"cmp"
	"container/heap"
	"fmt"
	"slices"
)

// The datapath decides a new flow with at most six hash probes, in this
// order, and the first hit is final:
//
//  1. exact      (endpoint, peer,  dir, proto, port)
//  2. range      (endpoint, peer,  dir, proto) -> sorted port intervals
//  3. exact      (endpoint, any,   dir, proto, port)
//  4. range      (endpoint, any,   dir, proto)
//  5. any-proto  (endpoint, peer,  dir, 0, 0)
//  6. any-proto  (endpoint, any,   dir, 0, 0)
//
// and no hit means default deny. "port" is the TCP/UDP destination port or
// type<<8|code for ICMP. Per (endpoint, direction) a Shape says which probes
// can hit at all, so the common endpoint with only exact peer/port entries
// pays for one probe on every new flow, allowed or denied.
//
// "First hit wins" is only correct because Encode resolves all overlaps
// ahead of time: every key it writes already carries the strongest verdict
// of every entry that matches a packet reaching that probe. In particular a
// broad deny (any peer, port 22) is folded into every narrower allow it
// overlaps, which is how "deny beats allow" holds in the kernel without the
// kernel ever looking for a second match.
//
// Port ranges cost one range-table entry per (endpoint, peer, direction,
// protocol) holding up to MaxIntervals disjoint intervals, instead of one
// entry per port; single-port results go to the exact table.
//
// A would-deny (the deny of a monitor-mode policy) reports a flow that an
// enforced deny would drop, and lets it pass. It must never let through a
// flow that nothing allows: at an enforcing endpoint, where no allow lies
// beneath a would-deny, the default deny applies, and Encode stores an
// explicit default deny there (verdict denied, rule 0). A monitor-mode
// endpoint drops nothing anyway, so there the would-deny keeps its rule.

// MaxIntervals is the capacity of one range-table value. It must equal
// EG_MAX_RANGES in bpf/maps.h (a layout test checks).
const MaxIntervals = 32

// PolicyKey is the key of an exact-table entry.
type PolicyKey struct {
	Endpoint  EndpointID
	Peer      Identity
	Direction Direction
	Protocol  Protocol
	Port      uint16
}

// PolicyValue is a resolved verdict and the rule that decided it.
type PolicyValue struct {
	Verdict Verdict
	Rule    RuleID
}

// beats reports whether a decides over b: the agent's failsafe allow
// first (its own control connection must survive any policy, denies
// included), then the stronger verdict, then the lower rule id, so the
// choice does not depend on input order.
func (a PolicyValue) beats(b PolicyValue) bool {
	if fa, fb := a.failsafe(), b.failsafe(); fa != fb {
		return fa
	}
	if pa, pb := a.Verdict.precedence(), b.Verdict.precedence(); pa != pb {
		return pa > pb
	}
	return a.Rule < b.Rule
}

func (a PolicyValue) failsafe() bool { return a.Rule == RuleFailsafe && a.Verdict == VerdictAllowed }

// RangeKey is the key of a range-table entry.
type RangeKey struct {
	Endpoint  EndpointID
	Peer      Identity
	Direction Direction
	Protocol  Protocol
}

// Interval is a port interval [Lo, Hi] with its resolved verdict.
type Interval struct {
	Lo, Hi uint16
	PolicyValue
}

// ShapeKey selects the probe shape of one endpoint and direction.
type ShapeKey struct {
	Endpoint  EndpointID
	Direction Direction
}

// Shape is a bit set of the probes that can hit for an endpoint and
// direction. The bit values are shared with bpf/maps.h (EG_SHAPE_*).
type Shape uint8

const (
	ShapeExactPeer Shape = 1 << iota
	ShapeRangePeer
	ShapeExactAny
	ShapeRangeAny
	ShapeAnyProtoPeer
	ShapeAnyProtoAny
)

// Tables is a rule set's policy in the form the datapath stores it.
type Tables struct {
	Exact  map[PolicyKey]PolicyValue
	Ranges map[RangeKey][]Interval
	Shapes map[ShapeKey]Shape

	monitor map[EndpointID]bool // endpoints in monitor mode, while encoding
}

// Encode resolves the rule set's entries into datapath tables. The rule set
// must be valid (Validate). Encode fails only when one range-table value
// would need more than MaxIntervals intervals; the error names the
// endpoint, peer, direction and protocol.
func Encode(rs *RuleSet) (*Tables, error) {
	t := &Tables{
		Exact:   make(map[PolicyKey]PolicyValue),
		Ranges:  make(map[RangeKey][]Interval),
		Shapes:  make(map[ShapeKey]Shape),
		monitor: make(map[EndpointID]bool),
	}
	for _, e := range rs.Endpoints {
		if e.Mode == ModeMonitor {
			t.monitor[e.ID] = true
		}
	}
	groups := make(map[ShapeKey][]Entry)
	for _, e := range rs.Entries {
		k := ShapeKey{e.Endpoint, e.Direction}
		groups[k] = append(groups[k], e)
	}
	keys := make([]ShapeKey, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b ShapeKey) int {
		return cmp.Or(cmp.Compare(a.Endpoint, b.Endpoint), cmp.Compare(a.Direction, b.Direction))
	})
	for _, k := range keys {
		if err := t.encodeGroup(k, groups[k]); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// span is a port interval carrying a verdict; contributions to a resolution.
// allow says an allow matches there (the verdict itself, or beneath it).
type span struct {
	lo, hi int // inclusive, 0..0xffff
	v      PolicyValue
	allow  bool
}

// effective is what the datapath stores for a resolved value: at an
// enforcing endpoint, a would-deny with no allow beneath it is the default
// deny.
func (t *Tables) effective(k ShapeKey, s span) PolicyValue {
	if s.v.Verdict == VerdictWouldDeny && !s.allow && !t.monitor[k.Endpoint] {
		return PolicyValue{VerdictDenied, RuleDefaultDeny}
	}
	return s.v
}

type peerProto struct {
	peer  Identity
	proto Protocol
}

func (t *Tables) encodeGroup(k ShapeKey, entries []Entry) error {
	byPP := make(map[peerProto][]span)
	peerSet := make(map[Identity]bool)
	protoSet := make(map[Protocol]bool)
	for _, e := range entries {
		lo, hi := e.PortRange()
		pp := peerProto{e.Peer, e.Protocol}
		byPP[pp] = append(byPP[pp], span{int(lo), int(hi), PolicyValue{e.Verdict, e.Rule}, e.Verdict == VerdictAllowed})
		if e.Peer != IdentityAny {
			peerSet[e.Peer] = true
		}
		if e.Protocol != ProtocolAny {
			protoSet[e.Protocol] = true
		}
	}
	peers := sortedKeys(peerSet)
	protos := sortedKeys(protoSet)

	// Any-protocol entries: one verdict per peer (and for "any peer"). A
	// peer-specific one must include the any-peer verdict, because probe 5
	// comes before probe 6.
	a0, hasA0 := strongest(byPP[peerProto{IdentityAny, ProtocolAny}])
	if hasA0 {
		t.putExact(k, IdentityAny, ProtocolAny, 0, a0)
	}
	anyProto := make(map[Identity]span)
	for _, p := range peers {
		ap, ok := strongest(byPP[peerProto{p, ProtocolAny}])
		if !ok {
			continue
		}
		if hasA0 {
			ap = strongest2(ap, a0)
		}
		anyProto[p] = ap
		t.putExact(k, p, ProtocolAny, 0, ap)
	}

	for _, x := range protos {
		// Any peer, protocol x: a hit here ends the search, so it must
		// include the any-peer any-protocol verdict.
		own0 := byPP[peerProto{IdentityAny, x}]
		contrib0 := slices.Clone(own0)
		if hasA0 {
			contrib0 = append(contrib0, a0)
		}
		r0 := resolve(contrib0, regionOf(own0))
		if err := t.putSegments(k, IdentityAny, x, r0); err != nil {
			return err
		}

		for _, p := range peers {
			ownP := byPP[peerProto{p, x}]
			ap, pHasAny := anyProto[p]
			if len(ownP) == 0 && !(pHasAny && len(r0) > 0) {
				continue
			}
			// The peer's own entries decide where its tables answer; if the
			// peer has any-protocol entries they must also answer wherever
			// the any-peer table would, or probe 3/4 would hide them.
			region := regionOf(ownP)
			if pHasAny {
				region = mergeRegions(region, regionOf(r0))
			}
			contrib := slices.Clone(ownP)
			contrib = append(contrib, r0...)
			switch {
			case pHasAny:
				contrib = append(contrib, ap)
			case hasA0:
				contrib = append(contrib, a0)
			}
			if err := t.putSegments(k, p, x, resolve(contrib, region)); err != nil {
				return err
			}
		}
	}
	return nil
}

func (t *Tables) putExact(k ShapeKey, peer Identity, proto Protocol, port uint16, s span) {
	t.putExactValue(k, peer, proto, port, t.effective(k, s))
}

func (t *Tables) putExactValue(k ShapeKey, peer Identity, proto Protocol, port uint16, v PolicyValue) {
	t.Exact[PolicyKey{k.Endpoint, peer, k.Direction, proto, port}] = v
	switch {
	case proto == ProtocolAny && peer == IdentityAny:
		t.Shapes[k] |= ShapeAnyProtoAny
	case proto == ProtocolAny:
		t.Shapes[k] |= ShapeAnyProtoPeer
	case peer == IdentityAny:
		t.Shapes[k] |= ShapeExactAny
	default:
		t.Shapes[k] |= ShapeExactPeer
	}
}

// putSegments stores resolved segments: single ports in the exact table,
// longer intervals in the range table.
func (t *Tables) putSegments(k ShapeKey, peer Identity, proto Protocol, segs []span) error {
	rk := RangeKey{k.Endpoint, peer, k.Direction, proto}
	// Adjacent segments that differ only in what lies beneath them store
	// the same value: merge them.
	var merged []Interval
	for _, s := range segs {
		v := t.effective(k, s)
		if n := len(merged); n > 0 && int(merged[n-1].Hi)+1 == s.lo && merged[n-1].PolicyValue == v {
			merged[n-1].Hi = uint16(s.hi)
			continue
		}
		merged = append(merged, Interval{uint16(s.lo), uint16(s.hi), v})
	}
	for _, iv := range merged {
		if iv.Lo == iv.Hi {
			t.putExactValue(k, peer, proto, iv.Lo, iv.PolicyValue)
			continue
		}
		t.Ranges[rk] = append(t.Ranges[rk], iv)
	}
	if n := len(t.Ranges[rk]); n > MaxIntervals {
		peerName := fmt.Sprintf("identity %d", peer)
		if peer == IdentityAny {
			peerName = "any peer"
		}
		return fmt.Errorf("endpoint %d %s %s from %s: %d disjoint port ranges, the datapath holds at most %d per peer and protocol",
			k.Endpoint, k.Direction, proto, peerName, n, MaxIntervals)
	}
	if len(t.Ranges[rk]) > 0 {
		if peer == IdentityAny {
			t.Shapes[k] |= ShapeRangeAny
		} else {
			t.Shapes[k] |= ShapeRangePeer
		}
	}
	return nil
}

// strongest resolves any-protocol entries (no ports) into one full-range
// span.
func strongest(spans []span) (span, bool) {
	if len(spans) == 0 {
		return span{}, false
	}
	best := span{0, 0xffff, spans[0].v, spans[0].allow}
	for _, s := range spans[1:] {
		best = strongest2(best, s)
	}
	return best, true
}

// strongest2 combines two full-range spans.
func strongest2(a, b span) span {
	out := span{0, 0xffff, a.v, a.allow || b.allow}
	if b.v.beats(a.v) {
		out.v = b.v
	}
	return out
}

// regionOf returns the union of the spans as sorted, disjoint, non-adjacent
// intervals (verdicts dropped).
func regionOf(spans []span) []span {
	r := make([]span, 0, len(spans))
	for _, s := range spans {
		r = append(r, span{lo: s.lo, hi: s.hi})
	}
	return mergeRegions(r, nil)
}

func mergeRegions(a, b []span) []span {
	all := append(slices.Clone(a), b...)
	slices.SortFunc(all, func(x, y span) int { return cmp.Compare(x.lo, y.lo) })
	var out []span
	for _, s := range all {
		if n := len(out); n > 0 && s.lo <= out[n-1].hi+1 {
			out[n-1].hi = max(out[n-1].hi, s.hi)
			continue
		}
		out = append(out, span{lo: s.lo, hi: s.hi})
	}
	return out
}

// resolve computes, over region, the strongest contribution at every port,
// as maximal runs of equal verdict and rule. Every port of region must be
// covered by some contribution (the callers build region from their own
// contributions). Sweep with a lazy max-heap: O(n log n).
func resolve(contrib []span, region []span) []span {
	if len(region) == 0 {
		return nil
	}
	sorted := slices.Clone(contrib)
	slices.SortFunc(sorted, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })

	var bounds []int
	for _, s := range sorted {
		bounds = append(bounds, s.lo, s.hi+1)
	}
	for _, r := range region {
		bounds = append(bounds, r.lo, r.hi+1)
	}
	slices.Sort(bounds)
	bounds = slices.Compact(bounds)

	var allows []span
	for _, s := range contrib {
		if s.allow {
			allows = append(allows, s)
		}
	}
	allowRegion := regionOf(allows)

	var (
		active spanHeap
		next   int // next contribution in sorted to activate
		reg    int // current region interval
		al     int // current allow-region interval
		out    []span
	)
	for i := 0; i+1 < len(bounds); i++ {
		lo, hi := bounds[i], bounds[i+1]-1
		for next < len(sorted) && sorted[next].lo <= lo {
			heap.Push(&active, sorted[next])
			next++
		}
		for active.Len() > 0 && active[0].hi < lo {
			heap.Pop(&active)
		}
		for reg < len(region) && region[reg].hi < lo {
			reg++
		}
		if reg == len(region) {
			break
		}
		if region[reg].lo > lo || active.Len() == 0 {
			continue // outside region, or a gap no contribution covers
		}
		// Segments are elementary with respect to every contribution's
		// bounds, so each is wholly inside or outside the allow region.
		for al < len(allowRegion) && allowRegion[al].hi < lo {
			al++
		}
		allow := al < len(allowRegion) && allowRegion[al].lo <= lo
		v := active[0].v
		if n := len(out); n > 0 && out[n-1].hi+1 == lo && out[n-1].v == v && out[n-1].allow == allow {
			out[n-1].hi = hi
			continue
		}
		out = append(out, span{lo, hi, v, allow})
	}
	return out
}

// spanHeap orders spans so the strongest contribution is on top.
type spanHeap []span

func (h spanHeap) Len() int           { return len(h) }
func (h spanHeap) Less(i, j int) bool { return h[i].v.beats(h[j].v) }
func (h spanHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *spanHeap) Push(x any)        { *h = append(*h, x.(span)) }
func (h *spanHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func sortedKeys[K cmp.Ordered](m map[K]bool) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
