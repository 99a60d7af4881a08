package datapath

import (
	"encoding/binary"
	"hash/maphash"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/eastguard/eastguard/internal/ruleset"
	"github.com/eastguard/eastguard/internal/wire"
)

// TestShadowLayouts: the shadow hashes the Go memory of the generated
// types as the kernel's bytes. That holds only if Go adds no padding of
// its own: every field accounted for by encoding/binary (which skips
// nothing and adds nothing).
func TestShadowLayouts(t *testing.T) {
	for _, c := range []struct {
		name string
		mem  uintptr
		bin  int
	}{
		{"endpoint", unsafe.Sizeof(bpfEgEndpoint{}), binary.Size(bpfEgEndpoint{})},
		{"host key", unsafe.Sizeof(bpfEgHostKey{}), binary.Size(bpfEgHostKey{})},
		{"ipcache key", unsafe.Sizeof(bpfEgIpcacheKey{}), binary.Size(bpfEgIpcacheKey{})},
		{"ipcache value", unsafe.Sizeof(bpfEgIpcacheValue{}), binary.Size(bpfEgIpcacheValue{})},
		{"policy key", unsafe.Sizeof(bpfEgPolicyKey{}), binary.Size(bpfEgPolicyKey{})},
		{"policy value", unsafe.Sizeof(bpfEgPolicyValue{}), binary.Size(bpfEgPolicyValue{})},
		{"range key", unsafe.Sizeof(bpfEgRangeKey{}), binary.Size(bpfEgRangeKey{})},
		{"range value", unsafe.Sizeof(bpfEgRangeValue{}), binary.Size(bpfEgRangeValue{})},
	} {
		if int(c.mem) != c.bin {
			t.Errorf("%s: %d bytes in memory, %d encoded: hidden padding", c.name, c.mem, c.bin)
		}
	}
}

// TestShadowChecksum: the checksum does not depend on the order entries
// are written in, follows overwrites and deletions, and leaves all-zero
// array slots out.
func TestShadowChecksum(t *testing.T) {
	a, b := newShadow(seedForTest), newShadow(seedForTest)
	a.set(mPolicy, []byte{1}, []byte{10})
	a.set(mPolicy, []byte{2}, []byte{20})
	b.set(mPolicy, []byte{2}, []byte{99})
	b.set(mPolicy, []byte{1}, []byte{10})
	b.set(mPolicy, []byte{3}, []byte{30})
	b.set(mPolicy, []byte{2}, []byte{20})
	b.del(mPolicy, []byte{3})
	if a.sum[mPolicy] != b.sum[mPolicy] || len(a.entries[mPolicy]) != 2 || len(b.entries[mPolicy]) != 2 {
		t.Errorf("same entries, different checksums or counts: %x/%d, %x/%d", a.sum[mPolicy], len(a.entries[mPolicy]), b.sum[mPolicy], len(b.entries[mPolicy]))
	}
	b.set(mPolicy, []byte{2}, []byte{21})
	if a.sum[mPolicy] == b.sum[mPolicy] {
		t.Error("a changed value left the checksum as it was")
	}
	a.set(mEndpoints, []byte{1, 0, 0, 0}, make([]byte, 16))
	if len(a.entries[mEndpoints]) != 0 || a.sum[mEndpoints] != 0 {
		t.Error("an all-zero array slot is in the shadow")
	}
	var nilShadow *shadow
	nilShadow.set(mPolicy, []byte{1}, []byte{1}) // must not panic: no rule set yet
	nilShadow.del(mPolicy, []byte{1})
}

// tamperer is what a root attacker on the node does, by hand, with the
// kernel's ids and pins (as bpftool would): nothing goes through the
// datapath's own handles.
type tamperer struct {
	t   *testing.T
	h   *harness
	dir string
}

// linkOf returns the id of the tcx link on ifindex's hook.
func (x *tamperer) linkOf(ifindex uint32, at ebpf.AttachType) link.ID {
	x.t.Helper()
	var id link.ID
	err := x.h.ns.Do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(ifindex), Attach: at})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			if lid, ok := p.LinkID(); ok {
				id = lid
			}
		}
		return nil
	})
	if err != nil || id == 0 {
		x.t.Fatalf("no tcx link on ifindex %d: %v", ifindex, err)
	}
	return id
}

// detach is `bpftool link detach id N`.
func (x *tamperer) detach(id link.ID) {
	x.t.Helper()
	l, err := link.NewFromID(id)
	if err != nil {
		x.t.Fatalf("open link %d: %v", id, err)
	}
	defer l.Close()
	if err := l.Detach(); err != nil {
		x.t.Fatalf("detach link %d: %v", id, err)
	}
}

// activeInner opens the active generation's inner map of outer map name
// from its pin.
func (x *tamperer) activeInner(name string) *ebpf.Map {
	x.t.Helper()
	state, err := ebpf.LoadPinnedMap(filepath.Join(x.dir, "eg_state"), nil)
	if err != nil {
		x.t.Fatal(err)
	}
	defer state.Close()
	var g bpfEgGeneration
	if err := state.Lookup(uint32(0), &g); err != nil {
		x.t.Fatal(err)
	}
	outer, err := ebpf.LoadPinnedMap(filepath.Join(x.dir, name), nil)
	if err != nil {
		x.t.Fatal(err)
	}
	defer outer.Close()
	var inner *ebpf.Map
	if err := outer.Lookup(g.Word&1, &inner); err != nil {
		x.t.Fatal(err)
	}
	x.t.Cleanup(func() { inner.Close() })
	return inner
}

var seedForTest = maphash.MakeSeed()

// settle ends the settling time of every hook, as if precedeSettle had
// passed since the interfaces were attached.
func settle(h *harness) {
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	clear(h.d.settling)
}

func kinds(ds []Drift) []string {
	var out []string
	for _, d := range ds {
		out = append(out, string(d.Kind))
	}
	slices.Sort(out)
	return out
}

func check(t *testing.T, h *harness, opts CheckOptions) []Drift {
	t.Helper()
	ds, err := h.d.Check(opts)
	if err != nil {
		t.Fatalf("Check(%+v): %v", opts, err)
	}
	for _, d := range ds {
		t.Logf("drift: %s", d)
	}
	return ds
}

// TestPrivilegedDriftDetectedAndRepaired plays a root attacker: it
// detaches a tcx link by id and turns the DNS allow into a deny in the
// live policy map (and adds an entry), then replaces a link's program, flips the generation
// word, swaps an inner map and removes pins. Report-only checks see each
// and change nothing; repairing checks put everything back, and the
// forged deny stops working.
func TestPrivilegedDriftDetectedAndRepaired(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0")
	h.apply(shopRuleSet())
	x := &tamperer{t: t, h: h, dir: h.d.cfg.BPFFSDir}
	if ds := check(t, h, CheckOptions{Full: true, Repair: true}); len(ds) != 0 {
		t.Fatalf("drift right after Apply: %v", ds)
	}
	// The attacker's change must show: the DNS allow turned into a deny
	// (and a made-up entry added), seen on the workload's DNS query.
	// Each query a new flow: an established one is not looked up again.
	port := uint16(45000)
	dns := func() []byte { port++; return udp4(web4, world4, port, 53) }
	if got := h.fromWorkload("web0", dns()); got != retPass {
		t.Fatalf("DNS from web before tampering: %d, want pass", got)
	}

	web := h.ifindex["web0"]
	ourIngress := attachedPrograms(t, h, web)
	x.detach(x.linkOf(web, ebpf.AttachTCXIngress))
	if got := attachedPrograms(t, h, web); len(got) != 1 {
		t.Fatalf("programs on web0 after detaching ingress: %v", got)
	}
	policy := x.activeInner(ruleset.MapPolicy)
	k := bpfEgPolicyKey{EndpointId: 1, PeerIdentity: uint32(ruleset.IdentityAny), Direction: uint8(ruleset.Egress), Protocol: uint8(ruleset.ProtocolUDP), Port: 53}
	var v bpfEgPolicyValue
	if err := policy.Lookup(k, &v); err != nil {
		t.Fatalf("the DNS allow entry: %v", err)
	}
	v.Verdict = uint8(ruleset.VerdictDenied)
	if err := policy.Update(k, v, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	forged := bpfEgPolicyKey{EndpointId: 1, PeerIdentity: uint32(ruleset.IdentityAny), Direction: uint8(ruleset.Ingress), Protocol: uint8(ruleset.ProtocolTCP), Port: 9999}
	if err := policy.Update(forged, bpfEgPolicyValue{RuleId: uint32(rClientsToWeb), Verdict: uint8(ruleset.VerdictAllowed)}, ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}
	tampered := time.Now()
	if got := h.fromWorkload("web0", dns()); got != retDrop {
		t.Fatalf("the forged deny does not work (%d): the test tampers with the wrong map", got)
	}
	h.drain()

	// Report only: both seen, nothing changed.
	for range 2 {
		ds := check(t, h, CheckOptions{})
		if got := kinds(ds); !slices.Equal(got, []string{string(DriftLinkDetached), string(DriftMapModified)}) {
			t.Fatalf("report-only check found %v, want link-detached and map-modified", got)
		}
		for _, d := range ds {
			if d.Repaired || d.RepairError != "" {
				t.Errorf("report-only check repaired: %s", d)
			}
		}
	}
	if got := h.fromWorkload("web0", dns()); got != retDrop {
		t.Errorf("report-only check changed the policy map (%d)", got)
	}
	gen := h.d.Generation()

	// Repair: both back, from the agent's copy.
	ds := check(t, h, CheckOptions{Repair: true})
	t.Logf("tampering repaired %s after it happened", time.Since(tampered))
	if got := kinds(ds); !slices.Equal(got, []string{string(DriftLinkDetached), string(DriftMapModified)}) {
		t.Fatalf("repairing check found %v", got)
	}
	for _, d := range ds {
		if !d.Repaired {
			t.Errorf("not repaired: %s", d)
		}
	}
	if got := attachedPrograms(t, h, web); !slices.Equal(got, ourIngress) {
		t.Errorf("programs on web0 after repair: %v, want %v", got, ourIngress)
	}
	if got := h.fromWorkload("web0", dns()); got != retPass {
		t.Errorf("DNS from web after repair: %d, want pass", got)
	}
	if err := policy.Lookup(forged, &v); err == nil {
		t.Error("the made-up entry is still there after repair")
	}
	if h.d.Generation() != gen+1 {
		t.Errorf("generation %d after a map repair, want %d (established flows re-checked)", h.d.Generation(), gen+1)
	}
	if ds := check(t, h, CheckOptions{Full: true}); len(ds) != 0 {
		t.Fatalf("drift left after repair: %v", ds)
	}

	// The link's program replaced, the generation word flipped to the
	// other slot, an inner map swapped for an empty one.
	decoy, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}, // TCX_NEXT: let everything through
	})
	if err != nil {
		t.Fatal(err)
	}
	defer decoy.Close()
	egress, err := link.NewFromID(x.linkOf(web, ebpf.AttachTCXEgress))
	if err != nil {
		t.Fatal(err)
	}
	if err := egress.Update(decoy); err != nil {
		t.Fatalf("replace the program: %v", err)
	}
	egress.Close()
	state, err := ebpf.LoadPinnedMap(filepath.Join(x.dir, "eg_state"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer state.Close()
	var g bpfEgGeneration
	if err := state.Lookup(uint32(0), &g); err != nil {
		t.Fatal(err)
	}
	if err := state.Update(uint32(0), bpfEgGeneration{Word: g.Word ^ 1}, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	outerHosts, err := ebpf.LoadPinnedMap(filepath.Join(x.dir, "eg_ipcache_hosts"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer outerHosts.Close()
	empty, err := ebpf.NewMap(h.d.spec.Maps["eg_ipcache_hosts"].InnerMap.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if err := outerHosts.Update(g.Word&1, empty, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	ds = check(t, h, CheckOptions{Repair: true})
	want := []string{string(DriftMapReplaced), string(DriftProgReplaced), string(DriftStateModified)}
	if got := kinds(ds); !slices.Equal(got, want) {
		t.Fatalf("found %v, want %v", got, want)
	}
	for _, d := range ds {
		if !d.Repaired {
			t.Errorf("not repaired: %s", d)
		}
	}
	if ds := check(t, h, CheckOptions{Full: true}); len(ds) != 0 {
		t.Fatalf("drift left after repair: %v", ds)
	}
	if got := attachedPrograms(t, h, web); len(got) != 2 || !slices.Contains(got, h.d.progIDs[1]) {
		t.Errorf("our egress program not on web0 after repair: %v", got)
	}

	// A program put ahead of ours (BPF_F_BEFORE, at the head): it could
	// pass everything before ours runs. Ours moves to the head again. A
	// program that was there before ours was attached is not drift.
	settle(h)
	var ahead link.Link
	if err := h.ns.Do(func() error {
		var err error
		ahead, err = link.AttachTCX(link.TCXOptions{Interface: int(web), Program: decoy, Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ahead.Close()
	ds = check(t, h, CheckOptions{Repair: true})
	if got := kinds(ds); !slices.Equal(got, []string{string(DriftProgPreceded)}) || !ds[0].Repaired {
		t.Fatalf("found %v, want prog-preceded repaired", ds)
	}
	var first ebpf.ProgramID
	if err := h.ns.Do(func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(web), Attach: ebpf.AttachTCXIngress})
		if err == nil && len(res.Programs) > 0 {
			first = res.Programs[0].ID
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if first != h.d.progIDs[0] {
		t.Errorf("first program on web0 ingress after repair: %d, want ours (%d)", first, h.d.progIDs[0])
	}
	if ds := check(t, h, CheckOptions{Full: true}); len(ds) != 0 {
		t.Fatalf("drift left after moving ours ahead: %v", ds)
	}

	// Pins: the cheap check does not look, the full one does.
	pin := h.d.pinPath(hook{web, false})
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(x.dir, "eg_policy")); err != nil {
		t.Fatal(err)
	}
	if ds := check(t, h, CheckOptions{}); len(ds) != 0 {
		t.Errorf("cheap check looked at pins: %v", ds)
	}
	ds = check(t, h, CheckOptions{Full: true, Repair: true})
	if got := kinds(ds); !slices.Equal(got, []string{string(DriftPinRemoved), string(DriftPinRemoved)}) {
		t.Fatalf("found %v, want two removed pins", got)
	}
	for _, d := range ds {
		if !d.Repaired || !strings.HasPrefix(d.Object, x.dir) {
			t.Errorf("pin drift: %s", d)
		}
	}
	if err := h.d.CheckPins(); err != nil {
		t.Errorf("pins after repair: %v", err)
	}
}

// TestPrivilegedDriftLeavesEarlierProgramsAlone: a program another tool
// attached before ours (a CNI's) is not drift; one put ahead of ours after
// a detach is, even though ours was re-attached behind it.
func TestPrivilegedDriftLeavesEarlierProgramsAlone(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0")
	web := h.ifindex["web0"]
	var err error
	attach := func(anchor link.Anchor) link.Link {
		// A program of its own each time: tcx takes one program once per hook.
		other, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { other.Close() })
		var l link.Link
		if err := h.ns.Do(func() error {
			var err error
			l, err = link.AttachTCX(link.TCXOptions{Interface: int(web), Program: other, Attach: ebpf.AttachTCXIngress, Anchor: anchor})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l
	}
	attach(nil) // the CNI's, before the agent's
	h.apply(shopRuleSet())
	if ds := check(t, h, CheckOptions{Full: true, Repair: true}); len(ds) != 0 {
		t.Fatalf("a program attached before ours reported: %v", ds)
	}
	// And one the CNI puts ahead right after ours, while the interface
	// settles (a pod's veth being set up).
	mon := h.ifindex["mon0"]
	var cni link.Link
	if err := h.ns.Do(func() error {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
		if err != nil {
			return err
		}
		t.Cleanup(func() { p.Close() })
		cni, err = link.AttachTCX(link.TCXOptions{Interface: int(mon), Program: p, Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cni.Close() })
	if ds := check(t, h, CheckOptions{Repair: true}); len(ds) != 0 {
		t.Fatalf("a program put ahead while the interface settles reported: %v", ds)
	}
	settle(h)
	if ds := check(t, h, CheckOptions{Repair: true}); len(ds) != 0 {
		t.Fatalf("the settled CNI program reported: %v", ds)
	}

	// An agent restarted adopts the links: the CNI's program is still no
	// drift, before and after the first rule set.
	cfg := h.d.cfg
	if err := h.d.Close(); err != nil {
		t.Fatal(err)
	}
	if h.d, err = h.open(cfg); err != nil {
		t.Fatalf("re-Open: %v", err)
	}
	if ds := check(t, h, CheckOptions{Full: true}); len(ds) != 0 {
		t.Fatalf("drift after a restart, before the first rule set: %v", ds)
	}
	h.apply(shopRuleSet())
	if ds := check(t, h, CheckOptions{Full: true}); len(ds) != 0 {
		t.Fatalf("drift after a restart: %v", ds)
	}

	x := &tamperer{t: t, h: h, dir: h.d.cfg.BPFFSDir}
	x.detach(x.linkOf(web, ebpf.AttachTCXIngress))
	attach(link.Head())
	ds := check(t, h, CheckOptions{Repair: true})
	if got := kinds(ds); !slices.Equal(got, []string{string(DriftLinkDetached), string(DriftProgPreceded)}) {
		t.Fatalf("found %v, want link-detached and prog-preceded", got)
	}
	if ds := check(t, h, CheckOptions{Full: true}); len(ds) != 0 {
		t.Fatalf("drift left: %v", ds)
	}
}

// TestPrivilegedDriftIgnoresVanishedInterfaces: an interface deleted
// takes its links with it; that is no tampering.
func TestPrivilegedDriftIgnoresVanishedInterfaces(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0")
	h.apply(shopRuleSet())
	select {
	case <-h.d.CheckRequests(): // one from before: not the one wanted
	default:
	}
	h.ns.IP(t, "link", "del", "mon0")
	if ds := check(t, h, CheckOptions{Full: true, Repair: true}); len(ds) != 0 {
		t.Errorf("a deleted interface reported as drift: %v", ds)
	}
	select {
	case <-h.d.CheckRequests():
	case <-time.After(30 * time.Second):
		t.Error("no check requested after an interface vanished")
	}
}

// TestPrivilegedScanMapFallsBack: a map read entry by entry (a kernel
// without batch lookup for its type) gives the same entries as batches.
func TestPrivilegedScanMapFallsBack(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0")
	h.apply(shopRuleSet())
	gen := h.d.gens[h.d.word&1]
	for i := range numInner {
		batch, one := map[string]string{}, map[string]string{}
		if err := scanInner(i, gen[i], func(k, v []byte) { batch[string(k)] = string(v) }); err != nil {
			t.Fatal(err)
		}
		var err error
		switch i {
		case mEndpoints:
			err = iterateMap[uint32, bpfEgEndpoint](gen[i], func(k, v []byte) {
				if !allZero(v) {
					one[string(k)] = string(v)
				}
			})
		case mHosts:
			err = iterateMap[bpfEgHostKey, bpfEgIpcacheValue](gen[i], func(k, v []byte) { one[string(k)] = string(v) })
		case mPrefixes:
			err = iterateMap[bpfEgIpcacheKey, bpfEgIpcacheValue](gen[i], func(k, v []byte) { one[string(k)] = string(v) })
		case mPolicy:
			err = iterateMap[bpfEgPolicyKey, bpfEgPolicyValue](gen[i], func(k, v []byte) { one[string(k)] = string(v) })
		case mRanges:
			err = iterateMap[bpfEgRangeKey, bpfEgRangeValue](gen[i], func(k, v []byte) { one[string(k)] = string(v) })
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(batch) == 0 && i != mRanges {
			t.Errorf("%s: nothing read", innerNames[i])
		}
		if !maps.Equal(batch, one) || !maps.Equal(batch, h.d.shadow.entries[i]) {
			t.Errorf("%s: batches read %d entries, one by one %d, the shadow has %d", innerNames[i], len(batch), len(one), len(h.d.shadow.entries[i]))
		}
	}
}

// TestDriftKindsKnownToController: the controller alerts and counts kinds
// it does not know as "other"; every kind this datapath reports must be
// known to it.
func TestDriftKindsKnownToController(t *testing.T) {
	var ours []string
	for _, k := range DriftKinds {
		ours = append(ours, string(k))
	}
	if !slices.Equal(ours, wire.DriftKinds) {
		t.Errorf("datapath kinds %v, internal/wire's %v", ours, wire.DriftKinds)
	}
}
