package datapath

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"go.uber.org/zap"
)

// linksDir holds the pinned tcx links, one per (interface, hook).
const linksDir = "links"

// loadSpec returns the object's spec with the configuration applied:
// runtime switches and the sizes of the stateful maps.
func loadSpec(cfg *Config, hz uint32) (*ebpf.CollectionSpec, error) {
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load eBPF object: %w", err)
	}
	ring, err := eventRingOf(cfg.RingBufBytes)
	if err != nil {
		return nil, err
	}
	consts := map[string]uint64{
		"eg_cfg_default_mode":         uint64(cfg.DefaultMode),
		"eg_cfg_deny_events_per_sec":  uint64(cfg.DenyEventsPerSecond),
		"eg_cfg_deny_events_burst":    uint64(cfg.DenyEventsBurst),
		"eg_cfg_events_wakeup_bytes":  uint64(cfg.EventsWakeupBytes),
		"eg_cfg_ct_revalidate":        uint64(boolByte(!cfg.KeepEstablished)),
		"eg_cfg_ct_accounting":        uint64(boolByte(!cfg.NoFlowAccounting)),
		"eg_cfg_hz":                   uint64(hz),
		"eg_cfg_ct_tcp_syn_j":         uint64(jiffies(cfg.Timeouts.TCPSyn, hz)),
		"eg_cfg_ct_tcp_established_j": uint64(jiffies(cfg.Timeouts.TCPEstablished, hz)),
		"eg_cfg_ct_tcp_close_j":       uint64(jiffies(cfg.Timeouts.TCPClose, hz)),
		"eg_cfg_ct_other_j":           uint64(jiffies(cfg.Timeouts.Other, hz)),
		"eg_cfg_frag_timeout_j":       uint64(jiffies(cfg.Timeouts.Fragment, hz)),
		"eg_cfg_ct_ep_max4":           uint64(ctQuota(cfg.CTEntries, cfg.CTEndpointPercent)),
		"eg_cfg_ct_ep_max6":           uint64(ctQuota(cfg.CT6Entries, cfg.CTEndpointPercent)),
		"eg_cfg_ev_slots":             ring.slots,
		"eg_cfg_ev_mask":              ring.slots - 1,
	}
	if cfg.synExpiresAtOnce {
		consts["eg_cfg_ct_tcp_syn_j"] = 0
	}
	if err := setConstants(spec, consts); err != nil {
		return nil, err
	}
	spec.Maps["eg_ct4"].MaxEntries = cfg.CTEntries
	spec.Maps["eg_ct6"].MaxEntries = cfg.CT6Entries
	spec.Maps["eg_events"].MaxEntries = ring.cpus
	spec.Maps["eg_events"].ValueSize = ring.valueSize()
	return spec, nil
}

// configPrefix starts the names of the configuration constants of
// bpf/eastguard.c (EG_CONFIG).
const configPrefix = "eg_cfg_"

// setConstants writes each configuration value into the instructions that
// read it: EG_CONFIG compiles to a 64-bit immediate load referring to an
// undefined symbol, which the ELF reader leaves as a reference. Left
// unresolved, such a load would run with 0, so an object that refers to a
// configuration symbol not in values, or values naming one no program
// reads (a renamed constant), is refused.
func setConstants(spec *ebpf.CollectionSpec, values map[string]uint64) error {
	used := make(map[string]bool, len(values))
	for _, name := range slices.Sorted(maps.Keys(spec.Programs)) {
		insns := spec.Programs[name].Instructions
		for i := range insns {
			ins := &insns[i]
			ref := ins.Reference()
			if !strings.HasPrefix(ref, configPrefix) {
				continue
			}
			v, ok := values[ref]
			if !ok {
				return fmt.Errorf("eBPF program %s reads configuration %s, which the loader does not set", name, ref)
			}
			if !ins.OpCode.IsDWordLoad() || ins.Src != asm.R0 {
				return fmt.Errorf("eBPF program %s: configuration %s read by %v, not a 64-bit immediate load", name, ref, ins)
			}
			ins.Constant = int64(v)
			*ins = ins.WithReference("")
			used[ref] = true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(values)) {
		if !used[name] {
			return fmt.Errorf("eBPF object reads no configuration %s", name)
		}
	}
	return nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// loaded is the result of loading: programs and maps, and which pinned maps
// could not be reused.
type loaded struct {
	objs bpfObjects
	// replaced holds maps created fresh because the pinned one was
	// incompatible (an upgrade changed its layout, or a size flag
	// changed). They are pinned in place of the old ones once a rule set
	// is in them; until then the old programs keep enforcing with the old
	// maps.
	replaced map[string]bool
	// fresh lists maps that had no pin (first start).
	fresh []string
	// oldCT holds the replaced conntrack maps' pins (an upgrade from the
	// LRU conntrack): finishUpgrade copies their entries over before
	// the new programs run, so established flows survive the upgrade.
	oldCT map[string]*ebpf.Map
}

// ctMaps are the conntrack maps whose entries an upgrade carries over.
var ctMaps = []string{"eg_ct4", "eg_ct6"}

// loadObjects opens the pinned maps under dir that match the spec, creates
// the missing ones, and loads the programs against them. Programs are
// always loaded anew: the running links are switched to them by Update,
// atomically.
func loadObjects(spec *ebpf.CollectionSpec, dir string, log *zap.Logger) (*loaded, error) {
	l := &loaded{replaced: make(map[string]bool), oldCT: make(map[string]*ebpf.Map)}
	repl := make(map[string]*ebpf.Map)
	closeAll := func() {
		for _, m := range repl {
			m.Close()
		}
	}
	fail := func() {
		closeAll()
		for _, m := range l.oldCT {
			m.Close()
		}
	}
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		ms.Pinning = ebpf.PinNone
		path := filepath.Join(dir, name)
		pinned, err := ebpf.LoadPinnedMap(path, nil)
		switch {
		case errors.Is(err, os.ErrNotExist):
			m, err := ebpf.NewMap(ms)
			if err != nil {
				fail()
				return nil, fmt.Errorf("create map %s: %w", name, err)
			}
			if err := m.Pin(path); err != nil {
				m.Close()
				fail()
				return nil, fmt.Errorf("pin map %s: %w", name, err)
			}
			repl[name] = m
			l.fresh = append(l.fresh, name)
		case err != nil:
			fail()
			return nil, fmt.Errorf("open pinned map %s: %w", path, err)
		default:
			if cerr := compatible(ms, pinned); cerr != nil {
				log.Warn("pinned map is incompatible with this agent; a new one replaces it after the first rule set is applied",
					zap.String("map", name), zap.String("pin", path), zap.Error(cerr))
				if slices.Contains(ctMaps, name) {
					l.oldCT[name] = pinned
				} else {
					pinned.Close()
				}
				m, err := ebpf.NewMap(ms)
				if err != nil {
					fail()
					return nil, fmt.Errorf("create map %s: %w", name, err)
				}
				repl[name] = m
				l.replaced[name] = true
				continue
			}
			repl[name] = pinned
		}
	}
	err := spec.LoadAndAssign(&l.objs, &ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		fail()
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load eBPF programs (verifier): %+v", ve)
		}
		return nil, fmt.Errorf("load eBPF programs: %w", err)
	}
	// LoadAndAssign cloned the maps it assigned.
	closeAll()
	return l, nil
}

// compatible extends MapSpec.Compatible to map-of-maps: the inner map
// template must match too (max_entries may differ: we size inner maps per
// rule set).
func compatible(ms *ebpf.MapSpec, m *ebpf.Map) error {
	if err := ms.Compatible(m); err != nil {
		return err
	}
	if ms.InnerMap == nil {
		return nil
	}
	for slot := uint32(0); slot < 2; slot++ {
		var inner *ebpf.Map
		if err := m.Lookup(slot, &inner); err != nil {
			continue // empty slot
		}
		im := ms.InnerMap.Copy()
		im.MaxEntries = inner.MaxEntries()
		err := im.Compatible(inner)
		inner.Close()
		if err != nil {
			return fmt.Errorf("inner map: %w", err)
		}
	}
	return nil
}

// mapsByName lists the pinned maps of objs by their C name.
func (o *bpfObjects) mapsByName() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		"eg_state":         o.EgState,
		"eg_endpoints":     o.EgEndpoints,
		"eg_ipcache":       o.EgIpcache,
		"eg_ipcache_hosts": o.EgIpcacheHosts,
		"eg_policy":        o.EgPolicy,
		"eg_policy_ranges": o.EgPolicyRanges,
		"eg_ct4":           o.EgCt4,
		"eg_ct6":           o.EgCt6,
		"eg_ct_ep":         o.EgCtEp,
		"eg_ct_slots":      o.EgCtSlots,
		"eg_frags":         o.EgFrags,
		"eg_nd_neigh":      o.EgNdNeigh,
		"eg_events":        o.EgEvents,
		"eg_wake":          o.EgWake,
		"eg_counters":      o.EgCounters,
		"eg_ratelimit":     o.EgRatelimit,
	}
}

// ctQuota is how many entries of a conntrack map of the given capacity
// one endpoint may hold: percent of it, at least one.
func ctQuota(capacity, percent uint32) uint32 {
	return max(uint32(uint64(capacity)*uint64(percent)/100), 1)
}
