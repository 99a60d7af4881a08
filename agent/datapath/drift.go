package datapath

import (
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
)

// DriftKind names what a check found changed under the agent: something
// other than this process changed a kernel object it owns. Each kind is a
// label value of eastguard_agent_datapath_drift_total and an alert's
// destination on the controller.
type DriftKind string

const (
	// DriftLinkDetached: one of our tcx links is no longer attached to
	// its interface (BPF_LINK_DETACH, bpftool link detach) while the
	// interface is still there. Packets on that hook are not enforced.
	DriftLinkDetached DriftKind = "link-detached"
	// DriftProgReplaced: our link runs another program (BPF_LINK_UPDATE
	// on our link's pin or id).
	DriftProgReplaced DriftKind = "prog-replaced"
	// DriftStateModified: eg_state holds another generation word than
	// the one we wrote (a switch to the other slot, or to a number
	// established flows would not be re-checked against).
	DriftStateModified DriftKind = "state-modified"
	// DriftMapReplaced: a map-of-maps slot of the active generation holds
	// another inner map than the one we built.
	DriftMapReplaced DriftKind = "map-replaced"
	// DriftMapModified: an inner map of the active generation holds other
	// entries than we wrote (an entry changed, added or deleted).
	DriftMapModified DriftKind = "map-modified"
	// DriftProgPreceded: a program that was not there when we attached
	// runs before ours on our hook: returning TCX_PASS, it lets packets
	// through without ours ever seeing them.
	DriftProgPreceded DriftKind = "prog-preceded"
	// DriftPinRemoved: a pin that keeps enforcement after this process
	// (a link's or a map's) is gone or names another object.
	DriftPinRemoved DriftKind = "pin-removed"
)

// DriftKinds lists every kind, in a fixed order.
var DriftKinds = []DriftKind{DriftLinkDetached, DriftProgReplaced, DriftProgPreceded, DriftStateModified, DriftMapReplaced, DriftMapModified, DriftPinRemoved}

// Drift is one thing a check found changed.
type Drift struct {
	Kind DriftKind
	// Object names what drifted: a hook and its interface
	// ("tcx-7-ingress (eth0)"), a map, a pin path.
	Object string
	// Detail says what was found instead of what was written.
	Detail string
	// Repaired says a repair put it back as this process had it;
	// RepairError why a repair failed. Both empty: not repaired
	// (CheckOptions.Repair off).
	Repaired    bool
	RepairError string
}

func (d Drift) String() string {
	s := fmt.Sprintf("%s: %s: %s", d.Kind, d.Object, d.Detail)
	switch {
	case d.Repaired:
		s += " (repaired)"
	case d.RepairError != "":
		s += " (repair failed: " + d.RepairError + ")"
	}
	return s
}

// CheckOptions say how thorough a check is and whether it repairs.
type CheckOptions struct {
	// Full compares every map entry by entry (the cheap check compares
	// each map's checksum and count, and only looks closer on a
	// mismatch) and checks the pins too.
	Full bool
	// Repair puts back what drifted, from this process's own copy of
	// what it wrote (never from the kernel's contents): re-attaches,
	// switches links back, rewrites entries. Off, drift is only reported.
	Repair bool
}

// Check compares the kernel objects this datapath owns with what it
// made of them: its tcx links (still attached, running the programs it
// loaded: program ids are unique, so the id also stands for the tag), the
// generation word, the active generation's maps (the map-of-maps slots,
// then each inner map's contents against the shadow) and, with Full, the
// pins. It returns what drifted, repaired if opts.Repair; an error only
// when it could not check.
//
// A repaired map also moves the generation number on (same slot): like a
// rule-set change, that makes established flows be checked again, so a
// connection a forged allow entry let in is cut once the entry is gone.
//
// Until this process applied a rule set (an adopted generation after a
// restart, before Restore), there is no shadow: only links, programs and
// the generation word are checked.
func (d *Datapath) Check(opts CheckOptions) ([]Drift, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errClosed
	}
	var out []Drift
	out = append(out, d.checkLinks(opts.Repair)...)
	out = append(out, d.checkState(opts.Repair)...)
	ms, err := d.checkMaps(opts)
	out = append(out, ms...)
	if opts.Full {
		out = append(out, d.checkPins(opts.Repair)...)
	}
	return out, err
}

// CheckRequests delivers a value when something happened that deserves a
// check before the next tick: an interface appeared, vanished or changed.
// One pending request covers any number of events.
func (d *Datapath) CheckRequests() <-chan struct{} { return d.kicks }

// requestCheck never blocks.
func (d *Datapath) requestCheck() {
	select {
	case d.kicks <- struct{}{}:
	default:
	}
}

func repaired(dr *Drift, err error) {
	if err != nil {
		dr.RepairError = err.Error()
		return
	}
	dr.Repaired = true
}

// checkLinks checks every link this process holds. Called with d.mu held.
func (d *Datapath) checkLinks(repair bool) []Drift {
	var out []Drift
	hooks := slices.SortedFunc(maps.Keys(d.links), func(a, b hook) int {
		if a.ifindex != b.ifindex {
			return int(a.ifindex) - int(b.ifindex)
		}
		if a.egress == b.egress {
			return 0
		}
		if b.egress {
			return -1
		}
		return 1
	})
	for _, h := range hooks {
		l := d.links[h]
		info, err := l.Info()
		var tcx *link.TCXInfo
		if err == nil {
			tcx = info.TCX()
		}
		if tcx == nil || tcx.Ifindex == 0 {
			name, present := d.interfaceName(h.ifindex)
			if !present {
				// The interface is gone and the kernel detached the link
				// with it: the interface watch takes care of that.
				continue
			}
			dr := Drift{Kind: DriftLinkDetached, Object: fmt.Sprintf("%s (%s)", h, name),
				Detail: "our tcx link is no longer attached to the interface: its packets were not enforced"}
			if repair {
				repaired(&dr, d.reattach(h, name))
			}
			out = append(out, dr)
			continue
		}
		if len(d.replaced) > 0 {
			// An upgrade in progress: adopted links still run the
			// previous agent's programs until the first rule set.
			continue
		}
		if want := d.progIDs[boolIndex(h.egress)]; info.Program != want {
			name, _ := d.interfaceName(h.ifindex)
			dr := Drift{Kind: DriftProgReplaced, Object: fmt.Sprintf("%s (%s)", h, name),
				Detail: fmt.Sprintf("link %d runs program %d, not ours (%d)", info.ID, info.Program, want)}
			if repair {
				err := l.Update(d.program(h))
				if err != nil {
					err = fmt.Errorf("switch the link back to our program: %w", err)
				}
				repaired(&dr, err)
			}
			out = append(out, dr)
		}
	}
	if len(d.replaced) == 0 {
		out = append(out, d.checkPreceding(repair)...)
	}
	return out
}

// precedeSettle is how long after we attach to a new interface programs
// put ahead of ours are taken as the interface's own (a CNI attaching its
// programs as it sets up a pod's veth, racing our attach), not drift.
const precedeSettle = 5 * time.Second

// precedingNow lists the programs that run before program id on h's hook
// now (nil if id is not there). Runs in the datapath's namespace.
func precedingNow(h hook, id ebpf.ProgramID) ([]ebpf.ProgramID, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(h.ifindex), Attach: h.attachType()})
	if err != nil {
		return nil, err
	}
	var before []ebpf.ProgramID
	for _, p := range res.Programs {
		if p.ID == id {
			return before, nil
		}
		before = append(before, p.ID)
	}
	return nil, nil
}

// checkPreceding finds programs put ahead of ours since we attached, and
// moves ours to the head of the hook again. Called with d.mu held, after
// checkLinks made sure every link is attached and runs our program.
func (d *Datapath) checkPreceding(repair bool) []Drift {
	var out []Drift
	type found struct {
		h   hook
		new []ebpf.ProgramID
	}
	var todo []found
	err := inNetNS(d.netns(), func() error {
		for h := range d.links {
			before, err := precedingNow(h, d.progIDs[boolIndex(h.egress)])
			if err != nil {
				continue // the interface went away meanwhile: the watch's business
			}
			if at, ok := d.settling[h]; ok {
				if time.Since(at) < precedeSettle {
					d.preceding[h] = before
					continue
				}
				delete(d.settling, h)
			}
			var added []ebpf.ProgramID
			for _, id := range before {
				if !slices.Contains(d.preceding[h], id) {
					added = append(added, id)
				}
			}
			if len(added) > 0 {
				todo = append(todo, found{h, added})
			}
		}
		return nil
	})
	if err != nil {
		d.log.Warn("drift check: querying the programs on our hooks failed", zap.Error(err))
	}
	slices.SortFunc(todo, func(a, b found) int { return strings.Compare(a.h.String(), b.h.String()) })
	for _, f := range todo {
		name, _ := d.interfaceName(f.h.ifindex)
		dr := Drift{Kind: DriftProgPreceded, Object: fmt.Sprintf("%s (%s)", f.h, name),
			Detail: fmt.Sprintf("programs %v were put before ours: they can pass packets ours never sees", f.new)}
		if repair {
			repaired(&dr, d.moveToHead(f.h))
		}
		out = append(out, dr)
	}
	return out
}

// moveToHead detaches our link from h's hook and attaches our program
// again at its head, pinned in place of the old link. tcx refuses one
// program twice on a hook, so there is a moment (microseconds) without
// ours on it; the program ahead of ours could pass everything anyway.
// Called with d.mu held.
func (d *Datapath) moveToHead(h hook) error {
	old := d.links[h]
	path := d.pinPath(h)
	_ = old.Unpin()
	_ = os.Remove(path)
	old.Close() // detaches: no pin and no other descriptor hold it
	delete(d.links, h)
	var nl link.Link
	err := inNetNS(d.netns(), func() error {
		var err error
		nl, err = link.AttachTCX(link.TCXOptions{Interface: int(h.ifindex), Program: d.program(h), Attach: h.attachType(), Anchor: link.Head()})
		return err
	})
	if err != nil {
		// Not on the hook at all now: the next check finds the link
		// missing only if it is in d.links, so attach it at the tail.
		name, _ := d.interfaceName(h.ifindex)
		if aerr := d.attach(binding{ifindex: h.ifindex, ifname: name}); aerr != nil {
			return fmt.Errorf("attach ahead of them: %w; attach again at all: %w", err, aerr)
		}
		return fmt.Errorf("attach ahead of them: %w (attached behind them again)", err)
	}
	if err := nl.Pin(path); err != nil {
		// Attached but unpinned: enforcing while this process lives;
		// the next full check pins it.
		d.log.Warn("drift repair: pin the moved link", zap.String("pin", path), zap.Error(err))
	}
	d.links[h] = nl
	d.preceding[h] = nil
	delete(d.settling, h)
	return nil
}

func boolIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}

// interfaceName names an interface and says whether it exists. Called
// with d.mu held.
func (d *Datapath) interfaceName(ifindex uint32) (string, bool) {
	var name string
	err := inNetNS(d.netns(), func() error {
		l, err := netlink.LinkByIndex(int(ifindex))
		if err != nil {
			return err
		}
		name = l.Attrs().Name
		return nil
	})
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return "", false
	}
	if err != nil {
		// Cannot tell: assume it is there, so that drift is not missed.
		d.log.Warn("drift check: looking up an interface failed", zap.Uint32("ifindex", ifindex), zap.Error(err))
		if d.current != nil {
			if b, ok := d.current.bindings[ifindex]; ok {
				return b.ifname, true
			}
		}
		return fmt.Sprintf("ifindex %d", ifindex), true
	}
	return name, true
}

// reattach replaces a detached link of ours by a new one, pinned in its
// place. Called with d.mu held.
func (d *Datapath) reattach(h hook, name string) error {
	// What ran before ours stays the baseline: a program the attacker
	// put there with the detach must still show as prog-preceded.
	baseline := d.preceding[h]
	defer func() {
		d.preceding[h] = baseline
		delete(d.settling, h) // no window for whoever detached it
	}()
	if l, ok := d.links[h]; ok {
		_ = l.Unpin()
		l.Close()
		delete(d.links, h)
	}
	_ = os.Remove(d.pinPath(h))
	if err := d.attach(binding{ifindex: h.ifindex, ifname: name}); err != nil {
		return fmt.Errorf("re-attach: %w", err)
	}
	return nil
}

// checkState checks the generation word. Called with d.mu held.
func (d *Datapath) checkState(repair bool) []Drift {
	var g bpfEgGeneration
	if err := d.objs.EgState.Lookup(uint32(0), &g); err != nil {
		dr := Drift{Kind: DriftStateModified, Object: "eg_state", Detail: fmt.Sprintf("cannot be read: %v", err)}
		if repair {
			repaired(&dr, d.setWord(d.word))
		}
		return []Drift{dr}
	}
	if g.Word == d.word {
		return nil
	}
	dr := Drift{Kind: DriftStateModified, Object: "eg_state",
		Detail: fmt.Sprintf("generation %d slot %d, ours is generation %d slot %d", g.Word>>1, g.Word&1, d.word>>1, d.word&1)}
	if repair {
		// Our word, one generation on: established flows that the
		// forged one let through are checked again.
		repaired(&dr, d.setWord(d.word+2))
	}
	return []Drift{dr}
}

// ids returns the kernel ids of a generation's inner maps.
func (g *generation) ids() [numInner]ebpf.MapID {
	var ids [numInner]ebpf.MapID
	for i, m := range g {
		if m == nil {
			continue
		}
		if info, err := m.Info(); err == nil {
			ids[i], _ = info.ID()
		}
	}
	return ids
}

// checkMaps checks the active generation's map-of-maps slots and inner
// maps against what this process built and wrote. Called with d.mu held.
func (d *Datapath) checkMaps(opts CheckOptions) ([]Drift, error) {
	slot := d.word & 1
	gen := d.gens[slot]
	if gen == nil || d.shadow == nil || d.current == nil {
		return nil, nil
	}
	var out []Drift
	var errs []error
	bump := false
	outer := d.objs.outer()
	for i := range numInner {
		var id uint32
		err := outer[i].Lookup(slot, &id)
		if err != nil || ebpf.MapID(id) != d.innerIDs[i] {
			detail := fmt.Sprintf("slot %d holds map %d, not ours (%d)", slot, id, d.innerIDs[i])
			if err != nil {
				detail = fmt.Sprintf("slot %d cannot be read: %v", slot, err)
			}
			dr := Drift{Kind: DriftMapReplaced, Object: innerNames[i], Detail: detail}
			if opts.Repair {
				err := outer[i].Update(slot, gen[i], ebpf.UpdateAny)
				if err != nil {
					err = fmt.Errorf("put our map back: %w", err)
				}
				repaired(&dr, err)
				bump = bump || err == nil
			}
			out = append(out, dr)
		}
		if !opts.Full {
			n, sum, err := d.checksum(i, gen[i])
			if err != nil {
				errs = append(errs, fmt.Errorf("read %s: %w", innerNames[i], err))
				continue
			}
			if n == len(d.shadow.entries[i]) && sum == d.shadow.sum[i] {
				continue
			}
		}
		diff, err := d.diff(i, gen[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", innerNames[i], err))
			continue
		}
		if diff.empty() {
			continue
		}
		dr := Drift{Kind: DriftMapModified, Object: innerNames[i], Detail: diff.String()}
		if opts.Repair {
			err := d.rewrite(i, gen[i], diff)
			repaired(&dr, err)
			bump = bump || err == nil
		}
		out = append(out, dr)
	}
	if bump {
		// Same slot, next generation: established flows are checked
		// again against what we restored.
		if err := d.setWord(d.word + 2); err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// scanInner reads inner map which, m, entry by entry, array slots of all
// zero bytes left out (never written). Called with d.mu held.
func scanInner(which int, m *ebpf.Map, f func(k, v []byte)) error {
	switch which {
	case mEndpoints:
		return scanMap[uint32, bpfEgEndpoint](m, func(k, v []byte) {
			if !allZero(v) {
				f(k, v)
			}
		})
	case mHosts:
		return scanMap[bpfEgHostKey, bpfEgIpcacheValue](m, f)
	case mPrefixes:
		return scanMap[bpfEgIpcacheKey, bpfEgIpcacheValue](m, f)
	case mPolicy:
		return scanMap[bpfEgPolicyKey, bpfEgPolicyValue](m, f)
	case mRanges:
		return scanMap[bpfEgRangeKey, bpfEgRangeValue](m, f)
	}
	return fmt.Errorf("no inner map %d", which)
}

// checksum counts and sums the kernel's entries as the shadow does.
func (d *Datapath) checksum(which int, m *ebpf.Map) (int, uint64, error) {
	n, sum := 0, uint64(0)
	seed := d.shadow.seed
	err := scanInner(which, m, func(k, v []byte) {
		n++
		sum += entryHash(seed, k, v)
	})
	return n, sum, err
}

// mapDiff is how a kernel map differs from the shadow, by key bytes.
type mapDiff struct {
	name                    string
	changed, missing, extra []string
}

func (m *mapDiff) empty() bool { return len(m.changed)+len(m.missing)+len(m.extra) == 0 }

func (m *mapDiff) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d entries changed, %d deleted, %d added", len(m.changed), len(m.missing), len(m.extra))
	for _, c := range []struct {
		what string
		keys []string
	}{{"changed", m.changed}, {"deleted", m.missing}, {"added", m.extra}} {
		if len(c.keys) > 0 {
			fmt.Fprintf(&b, "; first %s key %s", c.what, hex.EncodeToString([]byte(c.keys[0])))
		}
	}
	return b.String()
}

// diff compares a kernel map with the shadow entry by entry.
func (d *Datapath) diff(which int, m *ebpf.Map) (*mapDiff, error) {
	want := d.shadow.entries[which]
	seen := make(map[string]bool, len(want))
	r := &mapDiff{name: innerNames[which]}
	err := scanInner(which, m, func(k, v []byte) {
		w, ok := want[string(k)]
		switch {
		case !ok:
			r.extra = append(r.extra, string(k))
		case w != string(v):
			r.changed = append(r.changed, string(k))
		}
		seen[string(k)] = true
	})
	if err != nil {
		return nil, err
	}
	for k := range want {
		if !seen[k] {
			r.missing = append(r.missing, k)
		}
	}
	slices.Sort(r.changed)
	slices.Sort(r.missing)
	slices.Sort(r.extra)
	return r, nil
}

// rewrite puts the shadow's entries back into a kernel map: changed and
// deleted ones written again, added ones deleted (an array slot zeroed).
func (d *Datapath) rewrite(which int, m *ebpf.Map, diff *mapDiff) error {
	want := d.shadow.entries[which]
	var errs []error
	for _, k := range slices.Concat(diff.changed, diff.missing) {
		if err := m.Update([]byte(k), []byte(want[k]), ebpf.UpdateAny); err != nil {
			errs = append(errs, fmt.Errorf("rewrite %s key %x: %w", innerNames[which], k, err))
		}
	}
	for _, k := range diff.extra {
		var err error
		if which == mEndpoints {
			err = m.Update([]byte(k), make([]byte, m.ValueSize()), ebpf.UpdateAny)
		} else {
			err = m.Delete([]byte(k))
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				err = nil
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove %s key %x: %w", innerNames[which], k, err))
		}
	}
	return errors.Join(errs...)
}

// checkPins checks that the pins of every link and map are there and
// ours (CheckPins), and pins ours again in place of what is not. Called
// with d.mu held.
func (d *Datapath) checkPins(repair bool) []Drift {
	var out []Drift
	for _, h := range slices.SortedFunc(maps.Keys(d.links), func(a, b hook) int { return strings.Compare(a.String(), b.String()) }) {
		l := d.links[h]
		path := d.pinPath(h)
		if samePinnedLink(path, l) {
			continue
		}
		dr := Drift{Kind: DriftPinRemoved, Object: path, Detail: "the link's pin is gone or names another link: enforcement would end with this process"}
		if repair {
			repaired(&dr, repin(path, l.Unpin, l.Pin))
		}
		out = append(out, dr)
	}
	byName := d.objs.mapsByName()
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		if d.replaced[name] {
			continue // pinned only after the first rule set (finishUpgrade)
		}
		m := byName[name]
		path := filepath.Join(d.cfg.BPFFSDir, name)
		if samePinnedMap(path, m) {
			continue
		}
		dr := Drift{Kind: DriftPinRemoved, Object: path, Detail: "the map's pin is gone or names another map: a restarted agent would not find it"}
		if repair {
			repaired(&dr, repin(path, m.Unpin, m.Pin))
		}
		out = append(out, dr)
	}
	return out
}

// repin pins an object at path again, in place of whatever is there.
func repin(path string, unpin func() error, pin func(string) error) error {
	_ = unpin() // forget the old path (removes whatever is there)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("pin directory: %w", err)
	}
	if err := pin(path); err != nil {
		return fmt.Errorf("pin %s: %w", path, err)
	}
	return nil
}
