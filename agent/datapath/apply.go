package datapath

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// generation is the set of inner maps of one slot, built by this process.
type generation struct {
	endpoints, ipcache, policy, ranges *ebpf.Map
}

func (g *generation) maps() []*ebpf.Map {
	return []*ebpf.Map{g.endpoints, g.ipcache, g.policy, g.ranges}
}

func (g *generation) close() error {
	var errs []error
	for _, m := range g.maps() {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// binding ties an interface to the endpoint enforced on it.
type binding struct {
	ifindex  uint32
	ifname   string
	endpoint ruleset.EndpointID
	l3       bool // no Ethernet header
}

// applied is what the active generation holds.
type applied struct {
	rs       *ruleset.RuleSet
	tables   *ruleset.Tables
	bindings map[uint32]binding // by ifindex
	pending  []string           // interfaces named by the rule set but not present
	capacity ruleset.Size       // of the active generation's inner maps
}

// ApplyResult reports an applied rule set.
type ApplyResult struct {
	Generation uint32
	Version    uint64
	Hash       string
	// Pending lists interfaces the rule set names that do not exist (yet):
	// their workloads are enforced as soon as they appear.
	Pending  []string
	Size     ruleset.Size
	Duration time.Duration
}

// Apply enforces rs, replacing the previous rule set atomically: the new
// maps are built aside and one store switches every interface to them. On
// any error the previous rule set stays in force, unchanged.
func (d *Datapath) Apply(rs *ruleset.RuleSet) (*ApplyResult, error) {
	start := time.Now()
	if err := rs.Validate(); err != nil {
		return nil, fmt.Errorf("invalid rule set: %w", err)
	}
	tables, err := ruleset.Encode(rs)
	if err != nil {
		return nil, fmt.Errorf("encode rule set: %w", err)
	}
	rs = rs.Clone()

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errClosed
	}
	bindings, pending, err := d.resolve(rs)
	if err != nil {
		return nil, err
	}
	size := tables.Size(rs)
	size.Endpoints = len(bindings)
	if err := size.Check(d.cfg.Limits); err != nil {
		return nil, fmt.Errorf("rule set does not fit: %w", err)
	}
	if err := d.swap(rs, tables, bindings, pending, size); err != nil {
		return nil, err
	}
	// Duration is the time to enforcement; hashing comes after it.
	res := &ApplyResult{
		Generation: d.word >> 1,
		Version:    rs.Version,
		Pending:    d.current.pending,
		Size:       size,
		Duration:   time.Since(start),
	}
	res.Hash = rs.Hash()
	d.log.Info("rule set applied",
		zap.Uint32("generation", res.Generation),
		zap.Uint64("policy-version", rs.Version),
		zap.Int("policy-entries", size.Policy),
		zap.Int("ipcache-entries", size.IPCache),
		zap.Int("interfaces", len(bindings)),
		zap.Strings("pending-interfaces", pending),
		zap.Duration("duration", res.Duration))
	return res, nil
}

// swap makes rs the rule set in force: it fills the inactive slot's maps,
// attaches programs to interfaces that do not have them yet, flips
// eg_state and detaches interfaces that are no longer bound. Called with
// d.mu held.
//
// Installing a map into a map-of-maps slot makes the kernel wait for an RCU
// grace period (10 ms or more each). So after every flip, a background
// goroutine prepares empty maps in the slot just retired, paying those
// waits off the critical path, and the next swap only fills them and
// flips. The grace periods are also what guarantees that no program still
// reads the retired generation when its slot is written again. A rule set
// that does not fit the prepared maps takes the slow path: maps sized for
// it, installed on the spot.
func (d *Datapath) swap(rs *ruleset.RuleSet, tables *ruleset.Tables, bindings map[uint32]binding, pending []string, size ruleset.Size) error {
	slot := (d.word & 1) ^ 1
	gen, capacity, err := d.stage(slot, rs, tables, bindings, size)
	if err != nil {
		return err
	}
	// Interfaces new to this rule set get programs before the flip. Until
	// then the active generation has no endpoint for them: they get the
	// node's default mode (enforce drops), never an open window.
	var added []uint32
	undo := func() {
		for _, i := range added {
			d.detach(i)
		}
		gen.close()
	}
	for ifindex, b := range bindings {
		if d.attached(ifindex) {
			continue
		}
		if err := d.attach(b); err != nil {
			if errors.Is(err, errInterfaceGone) {
				pending = append(pending, b.ifname)
				delete(bindings, ifindex)
				continue
			}
			undo()
			return err
		}
		added = append(added, ifindex)
	}
	if err := d.finishUpgrade(); err != nil {
		undo()
		return err
	}
	word := ((d.word>>1)+1)<<1 | slot
	if err := d.setWord(word); err != nil {
		undo()
		return err
	}
	d.gens[slot] = gen
	// The previous generation is retired; the kernel keeps its maps until
	// the slot is reused.
	if old := d.gens[slot^1]; old != nil {
		old.close()
		d.gens[slot^1] = nil
	}
	d.startPrepare(slot^1, capacity)
	// Interfaces that lost their endpoint: the new generation already
	// treats them as endpoint-less; take the programs off.
	for h := range d.links {
		if _, ok := bindings[h.ifindex]; !ok {
			d.detach(h.ifindex)
		}
	}
	slices.Sort(pending)
	d.current = &applied{rs: rs, tables: tables, bindings: bindings, pending: slices.Compact(pending), capacity: capacity}
	return nil
}

// stage fills maps for slot with the rule set: the prepared ones if the
// rule set fits, else new ones installed now. It returns the generation and
// the capacity of its maps.
func (d *Datapath) stage(slot uint32, rs *ruleset.RuleSet, tables *ruleset.Tables, bindings map[uint32]binding, size ruleset.Size) (*generation, ruleset.Size, error) {
	if p := d.takePrepared(); p != nil {
		if p.slot == slot && fits(size, p.capacity) {
			if err := d.fill(p.gen, rs, tables, bindings, p.capacity); err != nil {
				// Half-filled, in the inactive slot: harmless, never
				// reused; the next swap takes the slow path.
				p.gen.close()
				return nil, ruleset.Size{}, err
			}
			return p.gen, p.capacity, nil
		}
		p.gen.close()
	}
	capacity := capacityOf(size, d.cfg.Limits)
	gen, err := d.create(slot, capacity)
	if err != nil {
		return nil, ruleset.Size{}, err
	}
	if err := d.fill(gen, rs, tables, bindings, capacity); err != nil {
		gen.close()
		return nil, ruleset.Size{}, err
	}
	// The slot is inactive, so a failure half-way is harmless: nothing
	// reads it until the flip.
	if err := d.install(slot, gen); err != nil {
		gen.close()
		return nil, ruleset.Size{}, err
	}
	return gen, capacity, nil
}

// prepared is a slot's set of empty maps, installed ahead of the next swap.
type prepared struct {
	slot     uint32
	gen      *generation
	capacity ruleset.Size
}

// startPrepare creates and installs empty maps for slot in the background.
// Called with d.mu held.
func (d *Datapath) startPrepare(slot uint32, capacity ruleset.Size) {
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

func fits(need, capacity ruleset.Size) bool {
	return need.Endpoints <= capacity.Endpoints && need.IPCache <= capacity.IPCache &&
		need.Policy <= capacity.Policy && need.PolicyRanges <= capacity.PolicyRanges
}

func capacityOf(size ruleset.Size, limits ruleset.Limits) ruleset.Size {
	return ruleset.Size{
		Endpoints:    capacityFor(size.Endpoints, limits.Endpoints),
		IPCache:      capacityFor(size.IPCache, limits.IPCache),
		Policy:       capacityFor(size.Policy, limits.Policy),
		PolicyRanges: capacityFor(size.PolicyRanges, limits.PolicyRanges),
	}
}

// capacityFor sizes an inner map: room for incremental growth, never above
// the configured limit. Hash maps are preallocated, so this bounds memory
// to what the rule set needs.
func capacityFor(need, limit int) int {
	return max(min(need+need/4+64, limit), 1)
}

func (d *Datapath) setWord(word uint32) error {
	if err := d.objs.EgState.Update(uint32(0), bpfEgGeneration{Word: word}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("switch generation: update eg_state: %w", err)
	}
	d.word = word
	return nil
}

// create makes the four empty inner maps of a generation.
func (d *Datapath) create(slot uint32, capacity ruleset.Size) (*generation, error) {
	g := &generation{}
	var err error
	for _, m := range []struct {
		dst  **ebpf.Map
		name string
		n    int
	}{
		{&g.endpoints, ruleset.MapEndpoints, capacity.Endpoints},
		{&g.ipcache, ruleset.MapIPCache, capacity.IPCache},
		{&g.policy, ruleset.MapPolicy, capacity.Policy},
		{&g.ranges, ruleset.MapPolicyRanges, capacity.PolicyRanges},
	} {
		if *m.dst, err = d.innerMap(m.name, slot, m.n); err != nil {
			g.close()
			return nil, err
		}
	}
	return g, nil
}

// fill writes a rule set into a generation's empty maps.
func (d *Datapath) fill(g *generation, rs *ruleset.RuleSet, tables *ruleset.Tables, bindings map[uint32]binding, capacity ruleset.Size) error {
	eps := make(map[ruleset.EndpointID]ruleset.Endpoint, len(rs.Endpoints))
	for _, e := range rs.Endpoints {
		eps[e.ID] = e
	}
	var epKeys []uint32
	var epVals []bpfEgEndpoint
	for ifindex, b := range bindings {
		epKeys = append(epKeys, ifindex)
		epVals = append(epVals, endpointValue(eps[b.endpoint], b, tables))
	}
	if err := batchUpdate(g.endpoints, ruleset.MapEndpoints, epKeys, epVals); err != nil {
		return err
	}

	for _, c := range rs.IPCache {
		if err := g.ipcache.Update(ipcacheKey(c.Prefix), bpfEgIpcacheValue{Identity: uint32(c.Identity)}, ebpf.UpdateAny); err != nil {
			return mapErr(ruleset.MapIPCache, capacity.IPCache, err)
		}
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
	if err := batchUpdate(g.policy, ruleset.MapPolicy, pKeys, pVals); err != nil {
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
	return batchUpdate(g.ranges, ruleset.MapPolicyRanges, rKeys, rVals)
}

func endpointValue(e ruleset.Endpoint, b binding, tables *ruleset.Tables) bpfEgEndpoint {
	v := bpfEgEndpoint{Id: uint32(e.ID), Identity: uint32(e.Identity), Mode: uint8(e.Mode)}
	if e.HostMode() {
		v.Flags |= uint8(bpfEgEndpointFlagsEG_EP_F_HOST)
	}
	if b.l3 {
		v.Flags |= uint8(bpfEgEndpointFlagsEG_EP_F_L3)
	}
	v.Shapes[ruleset.Ingress] = uint8(tables.Shapes[ruleset.ShapeKey{Endpoint: e.ID, Direction: ruleset.Ingress}])
	v.Shapes[ruleset.Egress] = uint8(tables.Shapes[ruleset.ShapeKey{Endpoint: e.ID, Direction: ruleset.Egress}])
	return v
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

// innerMap creates an inner map for slot from the outer map's template.
func (d *Datapath) innerMap(outer string, slot uint32, capacity int) (*ebpf.Map, error) {
	spec := d.spec.Maps[outer].InnerMap.Copy()
	spec.Name = fmt.Sprintf("%.12s_%d", outer, slot)
	spec.MaxEntries = uint32(capacity)
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("create %s (%d entries): %w", outer, capacity, err)
	}
	return m, nil
}

func batchUpdate[K, V any](m *ebpf.Map, name string, keys []K, vals []V) error {
	if len(keys) == 0 {
		return nil
	}
	if _, err := m.BatchUpdate(keys, vals, &ebpf.BatchOptions{}); err != nil {
		return mapErr(name, int(m.MaxEntries()), err)
	}
	return nil
}

// mapErr names the map in a kernel error, as a MapFullError when it is.
func mapErr(name string, capacity int, err error) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
		return fmt.Errorf("%w: %v", &ruleset.MapFullError{Map: name, Need: capacity + 1, Limit: capacity}, err)
	}
	return fmt.Errorf("write %s: %w", name, err)
}

// install puts a generation's inner maps into the outer maps' slot. Each
// update waits for an RCU grace period; done concurrently, the four share
// one.
func (d *Datapath) install(slot uint32, g *generation) error {
	outer := []*ebpf.Map{d.objs.EgEndpoints, d.objs.EgIpcache, d.objs.EgPolicy, d.objs.EgPolicyRanges}
	errs := make([]error, len(outer))
	var wg sync.WaitGroup
	for i, inner := range g.maps() {
		wg.Go(func() {
			if err := outer[i].Update(slot, inner, ebpf.UpdateAny); err != nil {
				errs[i] = fmt.Errorf("install %s slot %d: %w", outerMaps[i], slot, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// UpdateIPCache changes address-to-identity entries of the rule set in
// force, in place (a pod got a new address; a CIDR identity moved). Flows
// already established are re-checked once against the new identities.
// The change is validated as part of the whole rule set first; if it does
// not fit the current maps, the rule set is rebuilt and swapped instead.
func (d *Datapath) UpdateIPCache(upsert []ruleset.IPCacheEntry, remove []netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed
	}
	cur := d.current
	if cur == nil || d.gens[d.word&1] == nil {
		return errors.New("update ipcache: no rule set applied by this agent yet")
	}
	rs := cur.rs.Clone()
	rs.IPCache = mergeIPCache(rs.IPCache, upsert, remove)
	if err := rs.Validate(); err != nil {
		return fmt.Errorf("update ipcache: %w", err)
	}
	if len(rs.IPCache) > cur.capacity.IPCache {
		size := cur.tables.Size(rs)
		size.Endpoints = len(cur.bindings)
		if err := size.Check(d.cfg.Limits); err != nil {
			return fmt.Errorf("update ipcache: %w", err)
		}
		return d.swap(rs, cur.tables, maps.Clone(cur.bindings), slices.Clone(cur.pending), size)
	}
	ipc := d.gens[d.word&1].ipcache
	for _, p := range remove {
		if err := ipc.Delete(ipcacheKey(p)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("update ipcache: delete %s: %w", p, err)
		}
	}
	for _, c := range upsert {
		if err := ipc.Update(ipcacheKey(c.Prefix), bpfEgIpcacheValue{Identity: uint32(c.Identity)}, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("update ipcache: %s: %w", c.Prefix, mapErr(ruleset.MapIPCache, cur.capacity.IPCache, err))
		}
	}
	// Same slot, next generation: established flows re-check identities.
	if err := d.setWord(d.word + 2); err != nil {
		return err
	}
	d.current = &applied{rs: rs, tables: cur.tables, bindings: cur.bindings, pending: cur.pending, capacity: cur.capacity}
	return nil
}

func mergeIPCache(cur []ruleset.IPCacheEntry, upsert []ruleset.IPCacheEntry, remove []netip.Prefix) []ruleset.IPCacheEntry {
	byPrefix := make(map[netip.Prefix]ruleset.Identity, len(cur)+len(upsert))
	for _, c := range cur {
		byPrefix[c.Prefix] = c.Identity
	}
	for _, p := range remove {
		delete(byPrefix, p)
	}
	for _, c := range upsert {
		byPrefix[c.Prefix] = c.Identity
	}
	out := make([]ruleset.IPCacheEntry, 0, len(byPrefix))
	for p, id := range byPrefix {
		out = append(out, ruleset.IPCacheEntry{Prefix: p, Identity: id})
	}
	return out
}
