package datapath

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/internal/ruleset"
)

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
	capacity sizes              // of the active generation's inner maps
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
	if len(d.cfg.GuardInterfaces) > 0 {
		if _, ok := rs.Endpoint(GuardEndpoint); ok {
			return nil, fmt.Errorf("invalid rule set: endpoint id %d is reserved for guarded interfaces", GuardEndpoint)
		}
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
	if err := d.swap(rs, tables, bindings, pending); err != nil {
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
		zap.Int("guarded-interfaces", len(guardedNames(d.current.bindings))),
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
func (d *Datapath) swap(rs *ruleset.RuleSet, tables *ruleset.Tables, bindings map[uint32]binding, pending []string) error {
	slot := (d.word & 1) ^ 1
	sh := newShadow(d.seed)
	gen, capacity, err := d.stage(slot, rs, tables, bindings, needOf(rs, tables, bindings), sh)
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
	d.shadow = sh
	d.innerIDs = gen.ids()
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
	var before map[uint32]binding
	if d.current != nil {
		before = d.current.bindings
	}
	d.logGuardChanges(before, bindings)
	d.current = &applied{rs: rs, tables: tables, bindings: bindings, pending: slices.Compact(pending), capacity: capacity}
	return nil
}

// stage fills maps for slot with the rule set: the prepared ones if the
// rule set fits, else new ones installed now. It returns the generation and
// the capacity of its maps.
func (d *Datapath) stage(slot uint32, rs *ruleset.RuleSet, tables *ruleset.Tables, bindings map[uint32]binding, need sizes, sh *shadow) (*generation, sizes, error) {
	if p := d.takePrepared(); p != nil {
		if p.slot == slot && need.fits(p.capacity) {
			if err := d.fill(p.gen, rs, tables, bindings, p.capacity, sh); err != nil {
				// Half-filled, in the inactive slot: harmless, never
				// reused; the next swap takes the slow path.
				p.gen.close()
				return nil, sizes{}, err
			}
			return p.gen, p.capacity, nil
		}
		p.gen.close()
	}
	capacity := capacityOf(need, d.cfg.Limits)
	gen, err := d.create(slot, capacity)
	if err != nil {
		return nil, sizes{}, err
	}
	if err := d.fill(gen, rs, tables, bindings, capacity, sh); err != nil {
		gen.close()
		return nil, sizes{}, err
	}
	// The slot is inactive, so a failure half-way is harmless: nothing
	// reads it until the flip.
	if err := d.install(slot, gen); err != nil {
		gen.close()
		return nil, sizes{}, err
	}
	return gen, capacity, nil
}

func (d *Datapath) setWord(word uint32) error {
	if err := d.objs.EgState.Update(uint32(0), bpfEgGeneration{Word: word}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("switch generation: update eg_state: %w", err)
	}
	d.word = word
	return nil
}

// The endpoint table is a direct-mapped array (see bpf/maps.h).
const (
	epSlots     = uint32(bpfEgEndpointTableEG_EP_SLOTS)
	epProbes    = int(bpfEgEndpointTableEG_EP_PROBES)
	epTombstone = 0xffffffff // EG_EP_TOMBSTONE
)

// freeSlot returns the first slot of ifindex's probe sequence that used
// says is free.
func freeSlot(ifindex uint32, used func(slot uint32) bool) (uint32, bool) {
	for i := range uint32(epProbes) {
		if s := (ifindex + i) & (epSlots - 1); !used(s) {
			return s, true
		}
	}
	return 0, false
}

// endpointValue is an endpoint's entry of the endpoint table; ctSlot gives
// the endpoint's conntrack quota slot (ctSlots.of).
func endpointValue(e ruleset.Endpoint, b binding, tables *ruleset.Tables, ctSlot func(ruleset.EndpointID) uint16) bpfEgEndpoint {
	if b.isGuard() {
		e = guardEndpoint
	}
	v := bpfEgEndpoint{Ifindex: b.ifindex, Id: uint32(e.ID), Identity: uint32(e.Identity), Mode: uint8(e.Mode), CtSlot: ctSlot(e.ID)}
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
	if !needOf(rs, cur.tables, cur.bindings).fits(cur.capacity) {
		size := cur.tables.Size(rs)
		size.Endpoints = len(cur.bindings)
		if err := size.Check(d.cfg.Limits); err != nil {
			return fmt.Errorf("update ipcache: %w", err)
		}
		return d.swap(rs, cur.tables, maps.Clone(cur.bindings), slices.Clone(cur.pending))
	}
	gen := d.gens[d.word&1]
	for _, p := range remove {
		var err error
		if isHost(p) {
			k := hostKey(p.Addr())
			err = gen[mHosts].Delete(k)
			d.shadow.del(mHosts, raw(&k))
		} else {
			k := ipcacheKey(p)
			err = gen[mPrefixes].Delete(k)
			d.shadow.del(mPrefixes, raw(&k))
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("update ipcache: delete %s: %w", p, err)
		}
	}
	for _, c := range upsert {
		v := bpfEgIpcacheValue{Identity: uint32(c.Identity)}
		var err error
		which := mPrefixes
		if isHost(c.Prefix) {
			which = mHosts
			k := hostKey(c.Prefix.Addr())
			if err = gen[mHosts].Update(k, v, ebpf.UpdateAny); err == nil {
				d.shadow.set(mHosts, raw(&k), raw(&v))
			}
		} else {
			k := ipcacheKey(c.Prefix)
			if err = gen[mPrefixes].Update(k, v, ebpf.UpdateAny); err == nil {
				d.shadow.set(mPrefixes, raw(&k), raw(&v))
			}
		}
		if err != nil {
			return fmt.Errorf("update ipcache: %s: %w", c.Prefix, mapErr(which, cur.capacity, err))
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
