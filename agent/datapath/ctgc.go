package datapath

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Conntrack garbage collection (docs/ARCHITECTURE.md, "Conntrack").
//
// eg_ct4 and eg_ct6 are preallocated hashes: the datapath never evicts,
// so expired entries stay until the agent deletes them, and a full map
// refuses new flows. GC sweeps both maps in batches (BPF_MAP_LOOKUP_BATCH,
// BPF_MAP_DELETE_BATCH; entry by entry where the kernel has no batch
// operations), deletes what has expired, and gives each endpoint's quota
// (eg_ct_ep) back what it deleted, with eg_ct_adjust's atomic add.
//
// Invariant: eg_ct_ep[slot].count[family] is the number of entries of the
// endpoints with that slot in that family's map, give or take the adds in
// flight: the datapath adds one per insert of a new key and takes one per
// delete it does (re-validation), GC subtracts what its deletes removed,
// and a delete that finds no entry (someone else deleted it) subtracts
// nothing. An endpoint keeps its slot (eg_ct_slots) while it is in the
// rule set or has entries, so no other endpoint inherits its count.
//
// A race GC accepts, as Cilium's user-space GC does: an entry read as
// expired may be replaced by a new flow of the same tuple before GC's
// delete lands; that flow then loses its entry and its next packet is
// decided as a new flow (the origin's direction is admitted again, a reply
// may be dropped once and retransmitted). It can only remove state, never
// admit anything.

// ctSlotCount is the number of per-endpoint quota slots; slot 0 is shared
// by endpoints that found no free slot.
const ctSlotCount = int(bpfEgCtLimitsEG_CT_EP_SLOTS)

// ctSlots assigns each endpoint its slot in eg_ct_ep, and remembers the
// assignment in eg_ct_slots so a restarted agent keeps it. Safe for
// concurrent use.
type ctSlots struct {
	mu   sync.Mutex
	m    *ebpf.Map // eg_ct_slots
	byID map[ruleset.EndpointID]uint16
	used []bool
	// asked: endpoints of asked for since the last release. release
	// keeps their slots: an Apply may have written the slot into the
	// endpoint table after release's caller looked at the rule set.
	asked map[ruleset.EndpointID]bool
	log   *zap.Logger
}

func newCTSlots(m *ebpf.Map, log *zap.Logger) (*ctSlots, error) {
	s := &ctSlots{m: m, byID: make(map[ruleset.EndpointID]uint16), used: make([]bool, ctSlotCount),
		asked: make(map[ruleset.EndpointID]bool), log: log}
	s.used[0] = true
	var id, slot uint32
	it := m.Iterate()
	for it.Next(&id, &slot) {
		if slot == 0 || int(slot) >= ctSlotCount || s.used[slot] {
			// Not one we wrote: drop it, the endpoint gets a slot anew.
			_ = m.Delete(id)
			continue
		}
		s.byID[ruleset.EndpointID(id)] = uint16(slot)
		s.used[slot] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read eg_ct_slots: %w", err)
	}
	return s, nil
}

// of returns the endpoint's slot, assigning a free one on first use (0,
// the shared slot, when none is free or it cannot be recorded).
func (s *ctSlots) of(id ruleset.EndpointID) uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked[id] = true
	if slot, ok := s.byID[id]; ok {
		return slot
	}
	for i := 1; i < ctSlotCount; i++ {
		if s.used[i] {
			continue
		}
		if err := s.m.Put(uint32(id), uint32(i)); err != nil {
			s.log.Error("conntrack quota slot not recorded; the endpoint shares the common quota", zap.Uint32("endpoint", uint32(id)), zap.Error(err))
			return 0
		}
		s.used[i] = true
		s.byID[id] = uint16(i)
		return uint16(i)
	}
	s.log.Warn("no conntrack quota slot left; the endpoint shares the common quota", zap.Uint32("endpoint", uint32(id)))
	return 0
}

// lookup returns the endpoint's slot without assigning one.
func (s *ctSlots) lookup(id ruleset.EndpointID) (uint16, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	slot, ok := s.byID[id]
	return slot, ok
}

// release frees the slots of endpoints that keep is false for (not in the
// rule set in force) and that have no entries left.
func (s *ctSlots) release(keep func(ruleset.EndpointID) bool, live map[ruleset.EndpointID]int, counts *ebpf.Map) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer clear(s.asked)
	for id, slot := range s.byID {
		if keep(id) || live[id] > 0 || s.asked[id] {
			continue
		}
		var c bpfEgCtCount
		if err := counts.Lookup(uint32(slot), &c); err != nil || c.Count[0] != 0 || c.Count[1] != 0 {
			continue // an insert in flight, or a count to settle first
		}
		if err := s.m.Delete(uint32(id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		delete(s.byID, id)
		s.used[slot] = false
	}
}

// GCStats describes the conntrack and its garbage collection.
type GCStats struct {
	// Entries and Capacity: IPv4 ([0]) and IPv6 ([1]) conntrack entries
	// after the last sweep, and the maps' sizes.
	Entries  [2]int `json:"entries"`
	Capacity [2]int `json:"capacity"`
	// EndpointQuota is the most entries one endpoint may hold in each.
	EndpointQuota [2]int `json:"endpointQuota"`
	// Sweeps and Deleted count the sweeps done and the expired entries
	// they deleted since this process started.
	Sweeps  uint64 `json:"sweeps"`
	Deleted uint64 `json:"deleted"`
	// EarlyDropped counts the never answered flows deleted before their
	// expiry because their endpoint neared its quota or a map neared
	// full (included in Deleted).
	EarlyDropped uint64 `json:"earlyDropped"`
	// LastSweep, LastDuration, LastDeleted describe the last sweep.
	LastSweep    time.Time     `json:"lastSweep"`
	LastDuration time.Duration `json:"lastDurationNs"`
	LastDeleted  int           `json:"lastDeleted"`
	// Batch says whether the kernel's batch operations were used.
	Batch bool `json:"batch"`
}

// gcState is GC's own state, under its own lock (GC never takes d.mu
// while it walks the maps: Apply must not wait for a sweep).
type gcState struct {
	mu sync.Mutex // one sweep at a time
	// statsMu guards stats: Status reads them under d.mu and must not
	// wait for a sweep.
	statsMu sync.Mutex
	stats   GCStats
	high    *ebpf.Program // returns the high 32 bits of bpf_jiffies64()
	noBatch bool          // the kernel refused a batch operation once
}

// gcBatch is how many entries one batch syscall moves.
const gcBatch = 4096

// jiffies64 reads the kernel's 64-bit jiffies (the datapath's clock).
func (d *Datapath) jiffies64() (uint64, error) {
	if d.gc.high == nil {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: "eg_jiffies_hi", Type: ebpf.SchedCLS, License: "Dual BSD/GPL",
			Instructions: asm.Instructions{asm.FnJiffies64.Call(), asm.RSh.Imm(asm.R0, 32), asm.Return()},
		})
		if err != nil {
			return 0, fmt.Errorf("load jiffies probe: %w", err)
		}
		d.gc.high = p
	}
	for range 3 {
		hi, _, err := d.gc.high.Test(make([]byte, 14))
		if err != nil {
			return 0, fmt.Errorf("read jiffies: %w", err)
		}
		lo, err := readJiffies(d.probe)
		if err != nil {
			return 0, err
		}
		hi2, _, err := d.gc.high.Test(make([]byte, 14))
		if err != nil {
			return 0, fmt.Errorf("read jiffies: %w", err)
		}
		if hi == hi2 {
			return uint64(hi)<<32 | uint64(lo), nil
		}
	}
	return 0, errors.New("read jiffies: the high word kept changing")
}

// ctAdjust adds delta to an endpoint slot's count of one family (0 IPv4,
// 1 IPv6), atomically (eg_ct_adjust).
func (d *Datapath) ctAdjust(slot uint16, family int, delta int64) error {
	req := make([]byte, 16) // struct eg_ct_adjust_req; TestLayout checks it
	binary.NativeEndian.PutUint32(req[0:], uint32(slot))
	binary.NativeEndian.PutUint32(req[4:], uint32(family))
	binary.NativeEndian.PutUint64(req[8:], uint64(delta))
	ret, _, err := d.objs.EgCtAdjust.Test(req)
	if err != nil {
		return fmt.Errorf("adjust conntrack quota of slot %d: %w", slot, err)
	}
	if ret != 0 {
		return fmt.Errorf("adjust conntrack quota of slot %d: refused (%d)", slot, ret)
	}
	return nil
}

// GCResult is what one sweep did.
type GCResult struct {
	Scanned, Deleted int
	// EarlyDropped counts the unexpired, never answered entries deleted
	// (included in Deleted) because their endpoint neared its quota or
	// the map neared full.
	EarlyDropped int
	// Pressure: an endpoint held 90% of its quota, or a map 90% of its
	// capacity (RunGC then sweeps every second).
	Pressure bool
	// Live counts the unexpired entries per endpoint.
	Live     map[ruleset.EndpointID]int
	Duration time.Duration
}

// GC sweeps both conntrack maps once and deletes the entries expired for
// longer than grace (0: every expired entry). grace only applies while a
// map is less than half full: a map filling up gets every expired entry
// deleted at once.
func (d *Datapath) GC(grace time.Duration) (GCResult, error) {
	d.gc.mu.Lock()
	defer d.gc.mu.Unlock()
	start := time.Now()
	res := GCResult{Live: make(map[ruleset.EndpointID]int)}
	now, err := d.jiffies64()
	if err != nil {
		return res, err
	}
	graceJ := uint64(0)
	if grace > 0 {
		graceJ = uint64(jiffies(grace, d.hz))
	}
	var entries [2]int
	for fam, m := range []*ebpf.Map{d.objs.EgCt4, d.objs.EgCt6} {
		g := graceJ
		if m.MaxEntries() > 0 && d.ctCount(fam) > int(m.MaxEntries())/2 {
			g = 0
		}
		var n int
		if fam == 0 {
			n, err = gcMap[bpfEgCt4Key](d, m, fam, now, g, &res)
		} else {
			n, err = gcMap[bpfEgCt6Key](d, m, fam, now, g, &res)
		}
		entries[fam] = n
		if err != nil {
			return res, fmt.Errorf("conntrack GC of %s: %w", []string{"eg_ct4", "eg_ct6"}[fam], err)
		}
	}
	res.Duration = time.Since(start)
	d.gc.statsMu.Lock()
	defer d.gc.statsMu.Unlock()
	st := &d.gc.stats
	st.Entries = entries
	st.Sweeps++
	st.Deleted += uint64(res.Deleted)
	st.EarlyDropped += uint64(res.EarlyDropped)
	st.LastSweep, st.LastDuration, st.LastDeleted = start, res.Duration, res.Deleted
	st.Batch = !d.gc.noBatch // under gc.mu
	return res, nil
}

// ctCount is the entry count of the last sweep of one family.
func (d *Datapath) ctCount(fam int) int {
	d.gc.statsMu.Lock()
	defer d.gc.statsMu.Unlock()
	return d.gc.stats.Entries[fam]
}

// ctKey is either conntrack key type.
type ctKey interface{ bpfEgCt4Key | bpfEgCt6Key }

func tailOf[K ctKey](k *K) *bpfEgCtTail {
	switch k := any(k).(type) {
	case *bpfEgCt4Key:
		return &k.T
	case *bpfEgCt6Key:
		return &k.T
	}
	panic("unreachable")
}

// gcMap sweeps one map: it reads it in batches, deletes the expired
// entries, and returns the quota of their endpoints. It returns the
// number of entries left.
func gcMap[K ctKey](d *Datapath, m *ebpf.Map, fam int, now, grace uint64, res *GCResult) (int, error) {
	var dead []K
	left := 0
	live := make(map[ruleset.EndpointID]int)
	// Entries that never saw a reply, older than ctEarlyDropAge: what
	// goes first under pressure (below).
	unanswered := make(map[ruleset.EndpointID][]K)
	// Expired entries kept for the grace: they go too under pressure.
	graced := make(map[ruleset.EndpointID][]K)
	age := uint64(d.cfg.ctEarlyDropAge) * uint64(d.hz) / uint64(time.Second)
	visit := func(k *K, v *bpfEgCtEntry) {
		res.Scanned++
		if v.Expires+grace <= now {
			dead = append(dead, *k)
			return
		}
		id := ruleset.EndpointID(tailOf(k).EndpointId)
		left++
		live[id]++
		switch {
		case v.Expires <= now:
			graced[id] = append(graced[id], *k)
		case v.State&uint8(bpfEgCtStateEG_CT_SEEN_REPLY) == 0 && v.Created+age <= now:
			unanswered[id] = append(unanswered[id], *k)
		}
	}
	if err := readCT(d, m, visit); err != nil {
		return left, err
	}
	// Early drop, as Linux conntrack does when its table is full: an
	// endpoint at 90% of its quota, or any endpoint while the map is 90%
	// full, loses its flows that never had an answer, and its expired
	// entries kept for the grace (they would count against its quota). Without it, a SYN
	// flood from outside to a workload's open port (1,100 SYNs/s fill a
	// quota of 65,536 with the 60 s SYN timeout) would get that
	// workload's new flows refused; with it, the flood must fill the
	// quota within ctEarlyDropAge plus a GC interval.
	quota := int(ctQuota(m.MaxEntries(), d.cfg.CTEndpointPercent))
	tableFull := left*10 >= int(m.MaxEntries())*9
	for id, n := range live {
		if !tableFull && n*10 < quota*9 {
			continue
		}
		res.Pressure = true
		dead = append(dead, graced[id]...)
		dead = append(dead, unanswered[id]...)
		res.EarlyDropped += len(unanswered[id])
		drop := len(graced[id]) + len(unanswered[id])
		left -= drop
		live[id] -= drop
	}
	for id, n := range live {
		res.Live[id] += n
	}
	deleted := make(map[ruleset.EndpointID]int64)
	if err := deleteCT(d, m, dead, func(k *K) { deleted[ruleset.EndpointID(tailOf(k).EndpointId)]++ }); err != nil {
		return left, err
	}
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(deleted)) {
		res.Deleted += int(deleted[id])
		slot, ok := d.ctSlots.lookup(id)
		if !ok {
			slot = 0 // counted in the shared slot
		}
		if err := d.ctAdjust(slot, fam, -deleted[id]); err != nil {
			errs = append(errs, err)
		}
	}
	return left, errors.Join(errs...)
}

// readCT reads every entry of m, in batches where the kernel can.
func readCT[K ctKey](d *Datapath, m *ebpf.Map, visit func(*K, *bpfEgCtEntry)) error {
	if !d.gc.noBatch {
		keys := make([]K, gcBatch)
		vals := make([]bpfEgCtEntry, gcBatch)
		var cursor ebpf.MapBatchCursor
		for {
			n, err := m.BatchLookup(&cursor, keys, vals, nil)
			for i := range n {
				visit(&keys[i], &vals[i])
			}
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return nil // the end of the map
			}
			if errors.Is(err, ebpf.ErrNotSupported) {
				d.gc.noBatch = true
				break
			}
			if err != nil {
				return fmt.Errorf("batch lookup: %w", err)
			}
		}
	}
	var k K
	var v bpfEgCtEntry
	it := m.Iterate()
	for it.Next(&k, &v) {
		visit(&k, &v)
	}
	return it.Err()
}

// deleteCT deletes keys from m, calling deleted for each key this call
// removed (not for keys already gone).
func deleteCT[K ctKey](d *Datapath, m *ebpf.Map, keys []K, deleted func(*K)) error {
	for len(keys) > 0 && !d.gc.noBatch {
		chunk := keys[:min(len(keys), gcBatch)]
		n, err := m.BatchDelete(chunk, nil)
		for i := range n {
			deleted(&chunk[i])
		}
		switch {
		case err == nil:
			keys = keys[len(chunk):]
		case errors.Is(err, ebpf.ErrKeyNotExist):
			// chunk[n] was gone already (the datapath deleted it,
			// and took it off the quota itself): skip it.
			keys = keys[min(n+1, len(keys)):]
		case errors.Is(err, ebpf.ErrNotSupported):
			d.gc.noBatch = true
			keys = keys[n:]
		default:
			return fmt.Errorf("batch delete: %w", err)
		}
	}
	for i := range keys {
		err := m.Delete(&keys[i])
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		deleted(&keys[i])
	}
	return nil
}

// RunGC sweeps the conntrack until ctx is done: every Config.CTGCInterval
// at most, sooner while a sweep finds a map over a quarter full or
// deletes much (down to a second between sweeps). grace is passed to GC.
// Slots of endpoints that left the rule set are freed once their entries
// are gone.
func (d *Datapath) RunGC(ctx context.Context, grace time.Duration) {
	interval := d.cfg.CTGCInterval
	for {
		res, err := d.GC(grace)
		if err != nil {
			d.log.Error("conntrack GC", zap.Error(err))
		} else {
			d.releaseSlots(res.Live)
		}
		wait := interval
		st := d.GCStats()
		for fam := range 2 {
			if st.Capacity[fam] > 0 && st.Entries[fam] > st.Capacity[fam]/4 {
				wait = min(wait, time.Second)
			}
		}
		if res.Pressure || res.Deleted > 0 && res.Scanned > 0 && res.Deleted*4 > res.Scanned {
			wait = min(wait, time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-d.stopped:
			return
		case <-time.After(wait):
		}
	}
}

// releaseSlots frees the quota slots of endpoints gone from the rule set
// with no entry left.
func (d *Datapath) releaseSlots(live map[ruleset.EndpointID]int) {
	d.mu.Lock()
	inSet := make(map[ruleset.EndpointID]bool)
	if d.current != nil {
		for _, e := range d.current.rs.Endpoints {
			inSet[e.ID] = true
		}
	}
	inSet[GuardEndpoint] = true
	closed, none := d.closed, d.current == nil
	d.mu.Unlock()
	if closed || none {
		return // nothing known to be out of the rule set
	}
	d.ctSlots.release(func(id ruleset.EndpointID) bool { return inSet[id] }, live, d.objs.EgCtEp)
}

// GCStats returns the conntrack's size, quota and GC figures.
func (d *Datapath) GCStats() GCStats {
	d.gc.statsMu.Lock()
	defer d.gc.statsMu.Unlock()
	st := d.gc.stats
	st.Capacity = [2]int{int(d.objs.EgCt4.MaxEntries()), int(d.objs.EgCt6.MaxEntries())}
	st.EndpointQuota = [2]int{int(ctQuota(d.objs.EgCt4.MaxEntries(), d.cfg.CTEndpointPercent)), int(ctQuota(d.objs.EgCt6.MaxEntries(), d.cfg.CTEndpointPercent))}
	return st
}

// Upgrades. eg_ct4 and eg_ct6 were LRU hashes before; a pin of the old
// type cannot be opened as the new one, so Open creates new maps
// (loadObjects: replaced) and the previous agent's programs keep running
// on the old maps until the first rule set is in the new ones. Then
// finishUpgrade, before it switches the links, copies every unexpired
// entry over (migrateCT) and counts each endpoint's entries into its
// quota (reconcileCT): the new programs never run on a half-filled
// conntrack. Entries the old programs add between the copy and the switch
// are copied in a second pass right after it (a reply in that window of
// microseconds is decided as a new flow). If the first copy fails, nothing
// is switched and Apply fails: the old programs and maps stay in force.

// migrateCT copies the unexpired entries of the replaced conntrack maps'
// old pins into the new maps, keeping any entry the new map has already.
// With count, each copied entry is added to its endpoint's quota (the new
// programs run: atomic adds). It returns how many it copied.
func (d *Datapath) migrateCT(old map[string]*ebpf.Map, count bool) (int, error) {
	d.gc.mu.Lock()
	defer d.gc.mu.Unlock()
	now, err := d.jiffies64()
	if err != nil {
		return 0, err
	}
	copied := 0
	for fam, name := range ctMaps {
		src := old[name]
		if src == nil {
			continue
		}
		dst := d.objs.mapsByName()[name]
		added := make(map[ruleset.EndpointID]int64)
		var cerr error
		full := 0
		put := func(k any, id uint32, v *bpfEgCtEntry) {
			if cerr != nil || v.Expires <= now {
				return
			}
			err := dst.Update(k, v, ebpf.UpdateNoExist)
			switch {
			case err == nil:
				copied++
				added[ruleset.EndpointID(id)]++
			case errors.Is(err, ebpf.ErrKeyExist):
			case errors.Is(err, unix.E2BIG):
				// A smaller map (--conntrack-entries lowered): what
				// does not fit is decided anew, as after a restart of
				// a full conntrack; failing would wedge every apply.
				full++
			default:
				cerr = fmt.Errorf("copy %s entries to the new map: %w", name, err)
			}
		}
		var v bpfEgCtEntry
		if fam == 0 {
			var k bpfEgCt4Key
			it := src.Iterate()
			for it.Next(&k, &v) {
				put(&k, k.T.EndpointId, &v)
			}
			err = it.Err()
		} else {
			var k bpfEgCt6Key
			it := src.Iterate()
			for it.Next(&k, &v) {
				put(&k, k.T.EndpointId, &v)
			}
			err = it.Err()
		}
		if full > 0 {
			d.log.Warn("upgrade: the new conntrack map is full; flows that did not fit are decided anew",
				zap.String("map", name), zap.Int("not-copied", full))
		}
		if cerr != nil {
			return copied, cerr
		}
		if err != nil {
			return copied, fmt.Errorf("read the old %s: %w", name, err)
		}
		if count {
			for id, n := range added {
				if err := d.ctAdjust(d.ctSlots.of(id), fam, n); err != nil {
					return copied, err
				}
			}
		}
	}
	return copied, nil
}

// reconcileCT sets every endpoint's quota count to its entries in the
// conntrack maps, assigning slots as needed. For maps no program counts
// on yet (an upgrade before its switch, or a quota map that was lost):
// an insert running meanwhile may be counted twice, which only makes
// its endpoint's quota one entry tighter until the entry is deleted.
func (d *Datapath) reconcileCT() error {
	d.gc.mu.Lock()
	defer d.gc.mu.Unlock()
	var counts [2]map[ruleset.EndpointID]int64
	for fam, m := range []*ebpf.Map{d.objs.EgCt4, d.objs.EgCt6} {
		counts[fam] = make(map[ruleset.EndpointID]int64)
		var err error
		if fam == 0 {
			err = readCT(d, m, func(k *bpfEgCt4Key, _ *bpfEgCtEntry) { counts[fam][ruleset.EndpointID(k.T.EndpointId)]++ })
		} else {
			err = readCT(d, m, func(k *bpfEgCt6Key, _ *bpfEgCtEntry) { counts[fam][ruleset.EndpointID(k.T.EndpointId)]++ })
		}
		if err != nil {
			return fmt.Errorf("count conntrack entries: %w", err)
		}
	}
	perSlot := make(map[uint16][2]int64)
	for fam := range 2 {
		for id, n := range counts[fam] {
			s := d.ctSlots.of(id)
			c := perSlot[s]
			c[fam] += n
			perSlot[s] = c
		}
	}
	var cur bpfEgCtCount
	for slot := range uint32(ctSlotCount) {
		want := perSlot[uint16(slot)]
		if err := d.objs.EgCtEp.Lookup(slot, &cur); err != nil {
			return fmt.Errorf("read eg_ct_ep[%d]: %w", slot, err)
		}
		for fam := range 2 {
			if delta := want[fam] - cur.Count[fam]; delta != 0 {
				if err := d.ctAdjust(uint16(slot), fam, delta); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// needsReconcile says whether the conntrack quota must be recounted after
// loading: one of the conntrack or quota maps is new or replaced, and the
// conntrack may hold entries (all new: every count is zero, as it must be).
func needsReconcile(l *loaded) bool {
	isNew := func(name string) bool { return l.replaced[name] || slices.Contains(l.fresh, name) }
	if !isNew("eg_ct_ep") && !isNew("eg_ct_slots") && !isNew("eg_ct4") && !isNew("eg_ct6") {
		return false
	}
	emptyCT := slices.Contains(l.fresh, "eg_ct4") && slices.Contains(l.fresh, "eg_ct6")
	return !(emptyCT && isNew("eg_ct_ep"))
}

// conntrackStatus reads the conntrack's figures for Status.
func (d *Datapath) conntrackStatus() *ConntrackStatus {
	cs := &ConntrackStatus{GCStats: d.GCStats()}
	for fam := range 2 {
		cs.Full[fam] = cs.Capacity[fam] > 0 && cs.Entries[fam]*100 > cs.Capacity[fam]*95
	}
	var perCPU []uint64
	for _, c := range []struct {
		k   Counter
		out *uint64
	}{{CounterCTFull, &cs.RefusedTableFull}, {CounterCTEndpointFull, &cs.RefusedEndpointQuota}} {
		if err := d.objs.EgCounters.Lookup(uint32(c.k), &perCPU); err == nil {
			for _, v := range perCPU {
				*c.out += v
			}
		}
	}
	return cs
}
