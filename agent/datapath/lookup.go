package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// LookupQuery is a new flow at one endpoint, from the endpoint's point of
// view: Direction is ruleset's (ingress: to the workload), Peer the other
// end's address, Port in the datapath's port space (type<<8|code for ICMP).
type LookupQuery struct {
	Endpoint  ruleset.EndpointID
	Direction ruleset.Direction
	Peer      netip.Addr
	Protocol  ruleset.Protocol
	Port      uint16
}

// LookupResult is what the kernel's maps decide for a LookupQuery's first
// packet.
type LookupResult struct {
	// Generation is the active rule-set generation the maps were read in.
	Generation uint32
	// Interfaces counts the interfaces whose endpoint entry the program
	// finds and that carry the endpoint. With none, the endpoint's packets
	// meet the no-endpoint default instead: Mode is then the datapath's
	// default mode and the verdict its default deny.
	Interfaces int
	// Identity and Mode are the endpoint's, as its kernel entry says.
	Identity ruleset.Identity
	Mode     ruleset.Mode
	// PeerIdentity is what the ipcache gives Peer (exact host entry, else
	// the longest prefix, else world).
	PeerIdentity ruleset.Identity
	// Verdict and Rule are the decision after the mode downgrade; Rule 0
	// is the default deny.
	Verdict ruleset.Verdict
	Rule    ruleset.RuleID
}

// ErrNoRuleSet is returned by Lookup when nothing was ever applied here.
var ErrNoRuleSet = errors.New("no rule set in force in the datapath")

// Lookup decides a new flow from the kernel's maps the way the program
// does (bpf/eastguard.c: eg_endpoint_find, eg_identity, eg_policy_decide,
// eg_downgrade), read-only. It never runs the program: a synthetic packet
// would insert a conntrack entry, count and emit an event. What it reads
// is the active generation at the time of the call, the one a packet
// arriving then would meet; the inner maps are held open while they are
// read, so a swap that happens meanwhile cannot mix two generations.
func (d *Datapath) Lookup(q LookupQuery) (LookupResult, error) {
	if !q.Peer.IsValid() {
		return LookupResult{}, errors.New("lookup: no peer address")
	}
	peer := q.Peer.Unmap()
	word, inner, err := d.activeMaps()
	if err != nil {
		return LookupResult{}, err
	}
	defer inner.close()
	res := LookupResult{Generation: word >> 1}
	if res.Generation == 0 {
		return res, ErrNoRuleSet
	}
	ep, n, err := findEndpoint(inner[mEndpoints], q.Endpoint)
	if err != nil {
		return res, err
	}
	res.Interfaces = n
	if n == 0 {
		// No interface carries it: its packets (if any reach our
		// programs) get the no-endpoint default (eg_process).
		res.Mode = d.cfg.DefaultMode
		res.Verdict = downgrade(res.Mode, ruleset.VerdictDenied)
		res.PeerIdentity, err = resolveIdentity(inner, peer)
		return res, err
	}
	res.Identity, res.Mode = ruleset.Identity(ep.Identity), ruleset.Mode(ep.Mode)
	if res.PeerIdentity, err = resolveIdentity(inner, peer); err != nil {
		return res, err
	}
	v, err := decide(inner, ep, q.Direction, res.PeerIdentity, q.Protocol, q.Port)
	if err != nil {
		return res, err
	}
	res.Verdict, res.Rule = downgrade(res.Mode, ruleset.Verdict(v.Verdict)), ruleset.RuleID(v.RuleId)
	return res, nil
}

// activeMaps reads eg_state from the kernel and opens the inner maps of its
// active slot. d.mu keeps Apply from re-filling the retired slot between
// the two reads; the handles keep the maps alive after.
func (d *Datapath) activeMaps() (uint32, generation, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var g generation
	if d.closed {
		return 0, g, errClosed
	}
	var st bpfEgGeneration
	if err := d.objs.EgState.Lookup(uint32(0), &st); err != nil {
		return 0, g, fmt.Errorf("read eg_state: %w", err)
	}
	if st.Word>>1 == 0 {
		return st.Word, g, nil
	}
	slot := st.Word & 1
	for i, outer := range d.objs.outer() {
		var m *ebpf.Map
		if err := outer.Lookup(slot, &m); err != nil {
			g.close()
			return 0, generation{}, fmt.Errorf("read %s slot %d: %w", innerNames[i], slot, err)
		}
		g[i] = m
	}
	return st.Word, g, nil
}

// findEndpoint scans the endpoint table for the entries of id, and keeps
// those the program's probe sequence (eg_endpoint_find) reaches from their
// ifindex. It returns one of them and how many there are.
func findEndpoint(eps *ebpf.Map, id ruleset.EndpointID) (bpfEgEndpoint, int, error) {
	all := make([]bpfEgEndpoint, epSlots)
	keys := make([]uint32, epSlots)
	var cursor ebpf.MapBatchCursor
	n, err := eps.BatchLookup(&cursor, keys, all, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return bpfEgEndpoint{}, 0, fmt.Errorf("read %s: %w", ruleset.MapEndpoints, err)
	}
	table := make([]bpfEgEndpoint, epSlots)
	for i := range n {
		table[keys[i]&(epSlots-1)] = all[i]
	}
	var found bpfEgEndpoint
	count := 0
	for _, e := range table {
		if e.Id != uint32(id) || e.Ifindex == 0 || e.Ifindex == epTombstone {
			continue
		}
		if got, ok := probeEndpoint(table, e.Ifindex); ok && got.Id == uint32(id) {
			found = got
			count++
		}
	}
	return found, count, nil
}

// probeEndpoint is eg_endpoint_find over a copy of the table.
func probeEndpoint(table []bpfEgEndpoint, ifindex uint32) (bpfEgEndpoint, bool) {
	for i := range uint32(epProbes) {
		e := table[(ifindex+i)&(epSlots-1)]
		if e.Ifindex == 0 {
			return bpfEgEndpoint{}, false
		}
		if e.Ifindex == ifindex {
			return e, true
		}
	}
	return bpfEgEndpoint{}, false
}

// resolveIdentity is eg_identity: the exact host entry, else the longest
// prefix, else world.
func resolveIdentity(g generation, a netip.Addr) (ruleset.Identity, error) {
	var v bpfEgIpcacheValue
	err := g[mHosts].Lookup(hostKey(a), &v)
	if err == nil {
		return ruleset.Identity(v.Identity), nil
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, fmt.Errorf("read eg_ipcache_hosts: %w", err)
	}
	err = g[mPrefixes].Lookup(ipcacheKey(netip.PrefixFrom(a, a.BitLen())), &v)
	switch {
	case err == nil:
		return ruleset.Identity(v.Identity), nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return ruleset.IdentityWorld, nil
	}
	return 0, fmt.Errorf("read %s: %w", ruleset.MapIPCache, err)
}

// decide is eg_policy_decide: the probes in the program's order, gated by
// the endpoint's shape bits; the first hit is final, no hit the default
// deny.
func decide(g generation, ep bpfEgEndpoint, dir ruleset.Direction, peer ruleset.Identity, proto ruleset.Protocol, port uint16) (bpfEgPolicyValue, error) {
	deny := bpfEgPolicyValue{Verdict: uint8(ruleset.VerdictDenied)}
	shape := ruleset.Shape(ep.Shapes[dir&1])
	exact := func(bit ruleset.Shape, p ruleset.Identity, x ruleset.Protocol, port uint16) (bpfEgPolicyValue, bool, error) {
		var v bpfEgPolicyValue
		if shape&bit == 0 {
			return v, false, nil
		}
		k := bpfEgPolicyKey{EndpointId: ep.Id, PeerIdentity: uint32(p), Direction: uint8(dir), Protocol: uint8(x), Port: port}
		err := g[mPolicy].Lookup(k, &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return v, false, nil
		}
		if err != nil {
			return v, false, fmt.Errorf("read %s: %w", ruleset.MapPolicy, err)
		}
		return v, true, nil
	}
	ranged := func(bit ruleset.Shape, p ruleset.Identity) (bpfEgPolicyValue, bool, error) {
		var rv bpfEgRangeValue
		if shape&bit == 0 {
			return bpfEgPolicyValue{}, false, nil
		}
		k := bpfEgRangeKey{EndpointId: ep.Id, PeerIdentity: uint32(p), Direction: uint8(dir), Protocol: uint8(proto)}
		err := g[mRanges].Lookup(k, &rv)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return bpfEgPolicyValue{}, false, nil
		}
		if err != nil {
			return bpfEgPolicyValue{}, false, fmt.Errorf("read %s: %w", ruleset.MapPolicyRanges, err)
		}
		v, ok := rangeFind(rv, port)
		return v, ok, nil
	}
	probes := []func() (bpfEgPolicyValue, bool, error){
		func() (bpfEgPolicyValue, bool, error) { return exact(ruleset.ShapeExactPeer, peer, proto, port) },
		func() (bpfEgPolicyValue, bool, error) { return ranged(ruleset.ShapeRangePeer, peer) },
		func() (bpfEgPolicyValue, bool, error) {
			return exact(ruleset.ShapeExactAny, ruleset.IdentityAny, proto, port)
		},
		func() (bpfEgPolicyValue, bool, error) { return ranged(ruleset.ShapeRangeAny, ruleset.IdentityAny) },
		func() (bpfEgPolicyValue, bool, error) {
			return exact(ruleset.ShapeAnyProtoPeer, peer, ruleset.ProtocolAny, 0)
		},
		func() (bpfEgPolicyValue, bool, error) {
			return exact(ruleset.ShapeAnyProtoAny, ruleset.IdentityAny, ruleset.ProtocolAny, 0)
		},
	}
	for _, p := range probes {
		v, ok, err := p()
		if err != nil || ok {
			return v, err
		}
	}
	return deny, nil
}

// rangeFind is eg_range_find: a binary search over the value's sorted
// disjoint intervals, at most EG_MAX_RANGES of them.
func rangeFind(rv bpfEgRangeValue, port uint16) (bpfEgPolicyValue, bool) {
	lo, hi := uint32(0), min(rv.Count, uint32(len(rv.Iv)))
	for lo < hi {
		mid := (lo + hi) / 2
		iv := rv.Iv[mid]
		switch {
		case port < iv.Lo:
			hi = mid
		case port > iv.Hi:
			lo = mid + 1
		default:
			return bpfEgPolicyValue{RuleId: iv.RuleId, Verdict: iv.Verdict}, true
		}
	}
	return bpfEgPolicyValue{}, false
}

// downgrade is eg_downgrade: monitor mode reports what it would deny.
func downgrade(m ruleset.Mode, v ruleset.Verdict) ruleset.Verdict {
	if m == ruleset.ModeMonitor && v == ruleset.VerdictDenied {
		return ruleset.VerdictWouldDeny
	}
	return v
}
