package datapath

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// The inner maps of a rule-set generation, in a fixed order; each lives in
// a two-slot map-of-maps of the same name (see bpf/maps.h).
const (
	mEndpoints = iota
	mHosts     // ipcache entries of full length (/32, /128)
	mPrefixes  // the other ipcache entries (LPM trie)
	mPolicy
	mRanges
	numInner
)

var innerNames = [numInner]string{
	mEndpoints: ruleset.MapEndpoints,
	mHosts:     "eg_ipcache_hosts",
	mPrefixes:  ruleset.MapIPCache,
	mPolicy:    ruleset.MapPolicy,
	mRanges:    ruleset.MapPolicyRanges,
}

// outer returns the map-of-maps of each inner map.
func (o *bpfObjects) outer() [numInner]*ebpf.Map {
	return [numInner]*ebpf.Map{o.EgEndpoints, o.EgIpcacheHosts, o.EgIpcache, o.EgPolicy, o.EgPolicyRanges}
}

// generation is the set of inner maps of one slot, built by this process.
type generation [numInner]*ebpf.Map

func (g *generation) close() error {
	var errs []error
	for _, m := range g {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// sizes counts entries per inner map: what a rule set needs, or what a
// generation's maps can hold.
type sizes [numInner]int

// needOf counts what a rule set needs.
func needOf(rs *ruleset.RuleSet, tables *ruleset.Tables, bindings map[uint32]binding) sizes {
	var n sizes
	n[mEndpoints] = len(bindings)
	for _, c := range rs.IPCache {
		if isHost(c.Prefix) {
			n[mHosts]++
		} else {
			n[mPrefixes]++
		}
	}
	n[mPolicy] = len(tables.Exact)
	n[mRanges] = len(tables.Ranges)
	return n
}

func isHost(p netip.Prefix) bool { return p.Bits() == p.Addr().BitLen() }

// limitsOf is the most each inner map may hold. The two ipcache maps share
// the ipcache limit: a rule set's ipcache entries, in either map, count
// against it together (ruleset.Size.Check).
func limitsOf(l ruleset.Limits) sizes {
	return sizes{
		mEndpoints: l.Endpoints,
		mHosts:     l.IPCache,
		mPrefixes:  l.IPCache,
		mPolicy:    l.Policy,
		mRanges:    l.PolicyRanges,
	}
}

// capacityOf sizes a generation for need: room for incremental growth,
// never above the configured limits. Hash maps are preallocated, so this
// bounds memory to what the rule set needs.
func capacityOf(need sizes, l ruleset.Limits) sizes {
	c := limitsOf(l)
	for i := range c {
		if i != mEndpoints { // its limit is logical; the table itself is a fixed array
			c[i] = max(min(need[i]+need[i]/4+64, c[i]), 1)
		}
	}
	return c
}

func (s sizes) fits(capacity sizes) bool {
	for i := range s {
		if s[i] > capacity[i] {
			return false
		}
	}
	return true
}

// create makes the empty inner maps of a generation for slot.
func (d *Datapath) create(slot uint32, capacity sizes) (*generation, error) {
	var g generation
	for i, name := range innerNames {
		spec := d.spec.Maps[name].InnerMap.Copy()
		spec.Name = fmt.Sprintf("%.12s_%d", name, slot)
		if i != mEndpoints { // an array of fixed geometry
			spec.MaxEntries = uint32(capacity[i])
		}
		m, err := ebpf.NewMap(spec)
		if err != nil {
			g.close()
			return nil, fmt.Errorf("create %s (%d entries): %w", name, spec.MaxEntries, err)
		}
		g[i] = m
	}
	return &g, nil
}

// fill writes a rule set into a generation's empty maps.
// What it writes goes into sh too (see shadow).
func (d *Datapath) fill(g *generation, rs *ruleset.RuleSet, tables *ruleset.Tables, bindings map[uint32]binding, capacity sizes, sh *shadow) error {
	eps := make(map[ruleset.EndpointID]ruleset.Endpoint, len(rs.Endpoints))
	for _, e := range rs.Endpoints {
		eps[e.ID] = e
	}
	table := make(map[uint32]bpfEgEndpoint, len(bindings))
	for _, ifindex := range slices.Sorted(maps.Keys(bindings)) {
		b := bindings[ifindex]
		slot, ok := freeSlot(ifindex, func(s uint32) bool { _, used := table[s]; return used })
		if !ok {
			return fmt.Errorf("%s: interface %s (ifindex %d) collides with %d others in the endpoint table; recreate it to get another index",
				ruleset.MapEndpoints, b.ifname, ifindex, epProbes)
		}
		table[slot] = endpointValue(eps[b.endpoint], b, tables, d.ctSlots.of)
	}
	slots := slices.Sorted(maps.Keys(table))
	vals := make([]bpfEgEndpoint, len(slots))
	for i, s := range slots {
		vals[i] = table[s]
	}
	if err := batchUpdate(g[mEndpoints], mEndpoints, slots, vals, capacity, sh); err != nil {
		return err
	}

	var hostKeys []bpfEgHostKey
	var hostVals []bpfEgIpcacheValue
	for _, c := range rs.IPCache {
		v := bpfEgIpcacheValue{Identity: uint32(c.Identity)}
		if isHost(c.Prefix) {
			hostKeys = append(hostKeys, hostKey(c.Prefix.Addr()))
			hostVals = append(hostVals, v)
			continue
		}
		// The LPM trie has no batch update.
		k := ipcacheKey(c.Prefix)
		if err := g[mPrefixes].Update(k, v, ebpf.UpdateAny); err != nil {
			return mapErr(mPrefixes, capacity, err)
		}
		sh.set(mPrefixes, raw(&k), raw(&v))
	}
	if err := batchUpdate(g[mHosts], mHosts, hostKeys, hostVals, capacity, sh); err != nil {
		return err
	}

	pKeys := make([]bpfEgPolicyKey, 0, len(tables.Exact))
	pVals := make([]bpfEgPolicyValue, 0, len(tables.Exact))
	for k, v := range tables.Exact {
		pKeys = append(pKeys, bpfEgPolicyKey{
			EndpointId: uint32(k.Endpoint), PeerIdentity: uint32(k.Peer),
			Direction: uint8(k.Direction), Protocol: uint8(k.Protocol), Port: k.Port,
		})
		pVals = append(pVals, bpfEgPolicyValue{RuleId: uint32(v.Rule), Verdict: uint8(v.Verdict)})
	}
	if err := batchUpdate(g[mPolicy], mPolicy, pKeys, pVals, capacity, sh); err != nil {
		return err
	}

	rKeys := make([]bpfEgRangeKey, 0, len(tables.Ranges))
	rVals := make([]bpfEgRangeValue, 0, len(tables.Ranges))
	for k, ivs := range tables.Ranges {
		rKeys = append(rKeys, bpfEgRangeKey{
			EndpointId: uint32(k.Endpoint), PeerIdentity: uint32(k.Peer),
			Direction: uint8(k.Direction), Protocol: uint8(k.Protocol),
		})
		var v bpfEgRangeValue
		v.Count = uint32(len(ivs))
		for i, iv := range ivs {
			v.Iv[i] = bpfEgPortInterval{Lo: iv.Lo, Hi: iv.Hi, RuleId: uint32(iv.Rule), Verdict: uint8(iv.Verdict)}
		}
		rVals = append(rVals, v)
	}
	return batchUpdate(g[mRanges], mRanges, rKeys, rVals, capacity, sh)
}

// install puts a generation's inner maps into the outer maps' slot. Each
// update waits for an RCU grace period; done concurrently, they share one.
func (d *Datapath) install(slot uint32, g *generation) error {
	outer := d.objs.outer()
	errs := make([]error, numInner)
	var wg sync.WaitGroup
	for i, inner := range g {
		wg.Go(func() {
			if err := outer[i].Update(slot, inner, ebpf.UpdateAny); err != nil {
				errs[i] = fmt.Errorf("install %s slot %d: %w", innerNames[i], slot, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// prepared is a slot's set of empty maps, installed ahead of the next swap.
type prepared struct {
	slot     uint32
	gen      *generation
	capacity sizes
}

// startPrepare creates and installs empty maps for slot in the background.
// Called with d.mu held.
func (d *Datapath) startPrepare(slot uint32, capacity sizes) {
	ch := make(chan *prepared, 1)
	d.preparing = ch
	go func() {
		gen, err := d.create(slot, capacity)
		if err == nil {
			if err = d.install(slot, gen); err != nil {
				gen.close()
			}
		}
		if err != nil {
			d.log.Warn("preparing the next generation failed; the next rule set takes the slow path", zap.Error(err))
			ch <- nil
			return
		}
		ch <- &prepared{slot: slot, gen: gen, capacity: capacity}
	}()
}

// takePrepared waits for the background preparation, if one is running,
// and returns its maps (nil if none). Called with d.mu held.
func (d *Datapath) takePrepared() *prepared {
	if d.preparing == nil {
		return nil
	}
	p := <-d.preparing
	d.preparing = nil
	return p
}

func batchUpdate[K, V any](m *ebpf.Map, which int, keys []K, vals []V, capacity sizes, sh *shadow) error {
	if len(keys) == 0 {
		return nil
	}
	if _, err := m.BatchUpdate(keys, vals, &ebpf.BatchOptions{}); err != nil {
		return mapErr(which, capacity, err)
	}
	record(sh, which, keys, vals)
	return nil
}

// mapErr names the map in a kernel error, as a MapFullError when it is.
func mapErr(which int, capacity sizes, err error) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
		c := capacity[which]
		return fmt.Errorf("%w: %v", &ruleset.MapFullError{Map: innerNames[which], Need: c + 1, Limit: c}, err)
	}
	return fmt.Errorf("write %s: %w", innerNames[which], err)
}

// ipcacheKey encodes a prefix for the LPM trie: 32 bits of family and
// padding, then the address bits.
func ipcacheKey(p netip.Prefix) bpfEgIpcacheKey {
	k := bpfEgIpcacheKey{Prefixlen: uint32(32 + p.Bits())}
	a := p.Addr()
	if a.Is4() {
		k.Family = 4
		b := a.As4()
		copy(k.Addr[:], b[:])
	} else {
		k.Family = 6
		k.Addr = a.As16()
	}
	return k
}

// hostKey encodes an address for eg_ipcache_hosts.
func hostKey(a netip.Addr) bpfEgHostKey {
	if a.Is4() {
		k := bpfEgHostKey{Family: 4}
		b := a.As4()
		copy(k.Addr[:], b[:])
		return k
	}
	return bpfEgHostKey{Family: 6, Addr: a.As16()}
}
