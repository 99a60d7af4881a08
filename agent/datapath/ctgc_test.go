package datapath

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap/zaptest"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// twoWorkloads is the shop rule set with mon enforced too: two container
// workloads, web (clients to 443) and mon (clients to 80).
func twoWorkloads() *ruleset.RuleSet {
	rs := shopRuleSet()
	rs.Endpoints[1].Mode = ruleset.ModeEnforce
	return rs
}

// ctCount reads an endpoint's quota count of one family from eg_ct_ep.
func (h *harness) ctCount(ep ruleset.EndpointID, fam int) int64 {
	h.t.Helper()
	slot, ok := h.d.ctSlots.lookup(ep)
	if !ok {
		h.t.Fatalf("endpoint %d has no conntrack slot", ep)
	}
	var c bpfEgCtCount
	if err := h.d.objs.EgCtEp.Lookup(uint32(slot), &c); err != nil {
		h.t.Fatalf("read eg_ct_ep[%d]: %v", slot, err)
	}
	return c.Count[fam]
}

// TestPrivilegedConntrackQuota: one workload opening new flows as fast as
// it can uses up its own share of the conntrack, no more; its further new
// flows are refused (dropped, counted, an event with reason
// conntrack-full), its established flows go on, and another workload's
// new flows still get in.
func TestPrivilegedConntrackQuota(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}, CTEntries: 1024, CT6Entries: 1024, CTEndpointPercent: 25}, "web0", "mon0", "up0")
	h.apply(twoWorkloads())
	h.drain()
	quota := 256 // 25% of 1024
	before := h.counters()

	for i := range quota {
		if got := h.toWorkload("web0", tcp4(cli4, web4, uint16(20000+i), 443, tcpSYN)); got != retPass {
			t.Fatalf("flow %d of web's quota of %d dropped: %d", i, quota, got)
		}
	}
	h.drain()
	if n := h.ctCount(1, 0); n != int64(quota) {
		t.Errorf("web's IPv4 conntrack count %d, want %d", n, quota)
	}
	// The quota is used up: web's next new flows are refused, one family
	// at a time (IPv6 has its own).
	if got := h.toWorkload("web0", tcp4(cli4, web4, 30000, 443, tcpSYN)); got != retDrop {
		t.Fatalf("new flow past web's quota passed")
	}
	checkEvents(t, h.drain(), &wantEvent{verdict: ruleset.VerdictDenied, rule: rClientsToWeb, reason: ReasonCTFull, dir: ruleset.Ingress, src: idClients, dst: idWeb})
	if d := h.counters().Get(CounterCTEndpointFull) - before.Get(CounterCTEndpointFull); d != 1 {
		t.Errorf("ct_endpoint_full +%d, want +1", d)
	}
	if got := h.toWorkload("web0", tcp6(cli6, web6, 30000, 443, tcpSYN)); got != retPass {
		t.Errorf("web's IPv6 flow dropped: IPv4's quota is not IPv6's")
	}
	// Established flows of web are untouched.
	if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 20000, tcpSYN|tcpACK)); got != retPass {
		t.Errorf("reply of an established flow dropped while the quota is used up")
	}
	if got := h.toWorkload("web0", tcp4(cli4, web4, 20000, 443, tcpACK)); got != retPass {
		t.Errorf("established flow dropped while the quota is used up")
	}
	// Another workload's new flows still get in.
	for i := range 10 {
		if got := h.toWorkload("mon0", tcp4(cli4, mon4, uint16(40000+i), 80, tcpSYN)); got != retPass {
			t.Fatalf("mon's new flow %d refused while web's quota is used up: %d", i, got)
		}
	}
	h.drain()
	if n := h.ctCount(2, 0); n != 10 {
		t.Errorf("mon's IPv4 conntrack count %d, want 10", n)
	}

	// Re-validation that denies a flow deletes its entry and gives the
	// quota back: revoke web's rule.
	rs := twoWorkloads()
	for i, e := range rs.Entries {
		if e.Rule == rClientsToWeb {
			rs.Entries = append(rs.Entries[:i], rs.Entries[i+1:]...)
			break
		}
	}
	h.apply(rs)
	if got := h.toWorkload("web0", tcp4(cli4, web4, 20001, 443, tcpACK)); got != retDrop {
		t.Fatalf("revoked flow passes")
	}
	h.drain()
	if n := h.ctCount(1, 0); n != int64(quota-1) {
		t.Errorf("web's count after a re-validation delete: %d, want %d", n, quota-1)
	}
	st := h.d.GCStats()
	if st.EndpointQuota != [2]int{256, 256} || st.Capacity != [2]int{1024, 1024} {
		t.Errorf("GCStats quota %v capacity %v, want 256s and 1024s", st.EndpointQuota, st.Capacity)
	}
}

// TestPrivilegedConntrackFull: when the table itself is full, new flows
// are refused (counted: ct_full, reason conntrack-full) and established
// ones go on.
func TestPrivilegedConntrackFull(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}, CTEntries: 64, CT6Entries: 64, CTEndpointPercent: 100}, "web0", "mon0", "up0")
	h.apply(twoWorkloads())
	h.drain()
	before := h.counters()
	admitted := 0
	for i := range 64 {
		if h.toWorkload("web0", tcp4(cli4, web4, uint16(20000+i), 443, tcpSYN)) == retPass {
			admitted++
		}
	}
	if admitted != 64 {
		t.Fatalf("%d of 64 flows admitted into a 64-entry table", admitted)
	}
	if got := h.toWorkload("mon0", tcp4(cli4, mon4, 40000, 80, tcpSYN)); got != retDrop {
		t.Fatalf("new flow passed into a full table")
	}
	evs := h.drain()
	checkEvents(t, evs[len(evs)-1:], &wantEvent{verdict: ruleset.VerdictDenied, rule: rMonWeb, reason: ReasonCTFull, dir: ruleset.Ingress, src: idClients, dst: idMon})
	if d := h.counters().Get(CounterCTFull) - before.Get(CounterCTFull); d != 1 {
		t.Errorf("ct_full +%d, want +1", d)
	}
	if got := h.toWorkload("web0", tcp4(cli4, web4, 20005, 443, tcpACK)); got != retPass {
		t.Errorf("established flow dropped while the table is full")
	}
}

// TestPrivilegedConntrackGC: GC deletes expired entries, in batches and
// entry by entry, gives the quota back, and leaves live entries alone.
func TestPrivilegedConntrackGC(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}, CTEntries: 1024, CT6Entries: 1024, CTEndpointPercent: 25, synExpiresAtOnce: true}, "web0", "mon0", "up0")
	h.apply(twoWorkloads())
	// 200 unanswered SYNs (dead at once here), 5 DNS queries (alive).
	for i := range 200 {
		if got := h.toWorkload("web0", tcp4(cli4, web4, uint16(20000+i), 443, tcpSYN)); got != retPass {
			t.Fatalf("SYN %d dropped", i)
		}
	}
	for i := range 5 {
		if got := h.fromWorkload("web0", udp6(web6, "fd0e:9::53", uint16(21000+i), 53)); got != retPass {
			t.Fatalf("DNS query %d dropped", i)
		}
	}
	h.drain()
	if n := h.ctCount(1, 0); n != 200 {
		t.Fatalf("web's IPv4 count %d, want 200", n)
	}
	res, err := h.d.GC(0)
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if res.Deleted != 200 || res.Scanned != 205 || res.Live[1] != 5 {
		t.Errorf("GC: %+v, want 200 of 205 deleted, 5 live for endpoint 1", res)
	}
	if n, n6 := h.ctCount(1, 0), h.ctCount(1, 1); n != 0 || n6 != 5 {
		t.Errorf("web's counts after GC: %d IPv4, %d IPv6; want 0 and 5", n, n6)
	}
	st := h.d.GCStats()
	if st.Entries != [2]int{0, 5} || st.Deleted != 200 || !st.Batch {
		t.Errorf("GCStats %+v: want 0 and 5 entries, 200 deleted, in batches", st)
	}
	// The same without batch operations (kernels that lack them).
	for i := range 50 {
		h.toWorkload("web0", tcp4(cli4, web4, uint16(22000+i), 443, tcpSYN))
	}
	h.drain()
	h.d.gc.noBatch = true
	if res, err := h.d.GC(0); err != nil || res.Deleted != 50 {
		t.Errorf("GC entry by entry: %+v, %v; want 50 deleted", res, err)
	}
	if n := h.ctCount(1, 0); n != 0 {
		t.Errorf("web's IPv4 count after GC entry by entry: %d, want 0", n)
	}
	// Grace (the agent's: one flow-update interval): expired entries stay
	// for it, unless their endpoint nears its quota (256 here), where
	// they would keep its new flows out.
	for i := range 50 {
		h.toWorkload("web0", tcp4(cli4, web4, uint16(23000+i), 443, tcpSYN))
	}
	if res, err := h.d.GC(time.Hour); err != nil || res.Deleted != 0 || h.ctCount(1, 0) != 50 {
		t.Errorf("GC with grace: %+v, %v, count %d; want nothing deleted, 50 kept", res, err, h.ctCount(1, 0))
	}
	for i := range 200 {
		h.toWorkload("web0", tcp4(cli4, web4, uint16(24000+i), 443, tcpSYN))
	}
	h.drain()
	if res, err := h.d.GC(time.Hour); err != nil || res.Deleted != 250 || !res.Pressure || h.ctCount(1, 0) != 0 {
		t.Errorf("GC with grace near the quota: %+v, %v, count %d; want all 250 expired entries deleted", res, err, h.ctCount(1, 0))
	}
	// The slot of an endpoint gone from the rule set is freed once its
	// entries are: here mon, which never had any.
	if _, ok := h.d.ctSlots.lookup(2); !ok {
		t.Fatalf("mon has no slot while in the rule set")
	}
	rs := twoWorkloads()
	rs.Endpoints = rs.Endpoints[:1]
	var entries []ruleset.Entry
	for _, e := range rs.Entries {
		if e.Endpoint == 1 {
			entries = append(entries, e)
		}
	}
	rs.Entries = entries
	h.apply(rs)
	// Two sweeps: the first keeps the slots asked for since the last one
	// (an Apply may be writing them), the second frees mon's.
	for range 2 {
		res, err = h.d.GC(0)
		if err != nil {
			t.Fatal(err)
		}
		h.d.releaseSlots(res.Live)
	}
	if _, ok := h.d.ctSlots.lookup(2); ok {
		t.Errorf("mon's slot kept after it left the rule set with no entries")
	}
	if _, ok := h.d.ctSlots.lookup(1); !ok {
		t.Errorf("web's slot freed while it is in the rule set")
	}
}

// TestPrivilegedConntrackUpgradeFromLRU: an agent finding the conntrack
// pinned as the LRU hash of earlier versions neither fails nor loses
// established flows: the old maps keep serving the old programs until the
// first rule set, then their entries are copied and counted before the
// new programs take over, and the new maps take the pins.
func TestPrivilegedConntrackUpgradeFromLRU(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}}, "web0", "mon0", "up0")
	h.apply(twoWorkloads())
	cfg := h.d.cfg
	if err := h.d.Close(); err != nil {
		t.Fatal(err)
	}
	// What an earlier agent left: eg_ct4 an LRU hash holding web's
	// admitted flow, no quota maps.
	dir := cfg.BPFFSDir
	for _, name := range []string{"eg_ct4", "eg_ct_ep", "eg_ct_slots"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	lru, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 20, ValueSize: 64, MaxEntries: 262144})
	if err != nil {
		t.Fatal(err)
	}
	defer lru.Close()
	l, r := [4]byte{10, 250, 1, 10}, [4]byte{10, 250, 2, 7}
	key := bpfEgCt4Key{T: bpfEgCtTail{EndpointId: 1, LocalPort: 443, RemotePort: 41000, Protocol: protoTCP}}
	key.Local, key.Remote = binary.NativeEndian.Uint32(l[:]), binary.NativeEndian.Uint32(r[:])
	entry := bpfEgCtEntry{Expires: 1 << 62, Generation: h.d.word >> 1, RuleId: uint32(rClientsToWeb), PeerIdentity: uint32(idClients),
		Verdict: uint8(ruleset.VerdictAllowed), Origin: uint8(ruleset.Ingress)}
	if err := lru.Put(&key, &entry); err != nil {
		t.Fatal(err)
	}
	if err := lru.Pin(filepath.Join(dir, "eg_ct4")); err != nil {
		t.Fatal(err)
	}

	cfg.Logger = zaptest.NewLogger(t)
	if h.d, err = h.open(cfg); err != nil {
		t.Fatalf("Open on an LRU conntrack pin: %v", err)
	}
	if !h.d.replaced["eg_ct4"] {
		t.Fatalf("the LRU pin was not taken as one to replace: %v", h.d.replaced)
	}
	h.apply(twoWorkloads())
	if len(h.d.replaced) != 0 || h.d.oldCT != nil {
		t.Errorf("upgrade not finished: replaced %v", h.d.replaced)
	}
	info, err := h.d.objs.EgCt4.Info()
	if err != nil || info.Type != ebpf.Hash {
		t.Fatalf("eg_ct4 is %v (%v), want a plain hash", info.Type, err)
	}
	if err := h.d.CheckPins(); err != nil {
		t.Errorf("pins after the upgrade: %v", err)
	}
	// The flow admitted before the upgrade: web's reply is no new flow
	// (no rule allows web to send to a client port).
	if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 41000, tcpACK)); got != retPass {
		t.Errorf("reply of a flow admitted before the upgrade dropped")
	}
	if n := h.ctCount(1, 0); n != 1 {
		t.Errorf("web's count after the upgrade %d, want 1 (the copied flow)", n)
	}
	if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 41001, tcpACK)); got != retDrop {
		t.Errorf("a reply without a flow passes after the upgrade")
	}
	h.drain()
	if _, err := os.Stat(filepath.Join(dir, "eg_ct_ep")); errors.Is(err, os.ErrNotExist) {
		t.Errorf("eg_ct_ep not pinned")
	}
}

// BenchmarkConntrackGC: one GC sweep of eg_ct4 holding 100,000 expired and
// 100,000 live entries (of 262,144), in batches as on kernels with batch
// operations, and entry by entry. deleted/s is what one sweep deletes per
// second of its own time: the rate of new flows the GC keeps up with
// (each new flow's entry is deleted once, after it expired).
func BenchmarkConntrackGC(b *testing.B) {
	h := newHarness(b, Config{})
	h.ifindex["lo"] = 1
	h.apply(benchRuleSet(10, 1))
	const dead, live = 100000, 100000
	keys := make([]bpfEgCt4Key, dead+live)
	vals := make([]bpfEgCtEntry, dead+live)
	for i := range keys {
		keys[i] = bpfEgCt4Key{Local: uint32(i), Remote: 0x0afa0000, T: bpfEgCtTail{EndpointId: 1, LocalPort: uint16(i), RemotePort: 443, Protocol: protoTCP}}
		// Answered flows: the early drop leaves them alone.
		vals[i] = bpfEgCtEntry{Expires: 1, Verdict: uint8(ruleset.VerdictAllowed), State: uint8(bpfEgCtStateEG_CT_SEEN_REPLY)}
		if i >= dead {
			vals[i].Expires = 1 << 62
		}
	}
	for _, batch := range []bool{true, false} {
		name := "batch"
		if !batch {
			name = "entry-by-entry"
		}
		b.Run(name, func(b *testing.B) {
			h.d.gc.noBatch = !batch
			var took time.Duration
			deleted := 0
			for b.Loop() {
				b.StopTimer()
				if _, err := h.d.objs.EgCt4.BatchUpdate(keys, vals, nil); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				res, err := h.d.GC(0)
				if err != nil {
					b.Fatal(err)
				}
				if res.Deleted != dead {
					b.Fatalf("deleted %d, want %d", res.Deleted, dead)
				}
				took += res.Duration
				deleted += res.Deleted
			}
			b.ReportMetric(float64(took.Milliseconds())/float64(b.N), "ms/sweep")
			b.ReportMetric(float64(deleted)/took.Seconds(), "deleted/s")
		})
	}
}

// TestPrivilegedConntrackEarlyDrop: flows that never had an answer go
// first when their endpoint nears its quota (a SYN flood to a workload's
// open port must not get its new flows refused for a whole SYN timeout);
// answered flows, and other endpoints' unanswered ones, stay.
func TestPrivilegedConntrackEarlyDrop(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}, CTEntries: 1024, CT6Entries: 1024, CTEndpointPercent: 25, ctEarlyDropAge: time.Nanosecond}, "web0", "mon0", "up0")
	h.apply(twoWorkloads())
	for i := range 256 {
		if got := h.toWorkload("web0", tcp4(cli4, web4, uint16(20000+i), 443, tcpSYN)); got != retPass {
			t.Fatalf("SYN %d dropped", i)
		}
	}
	if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 20000, tcpSYN|tcpACK)); got != retPass {
		t.Fatalf("SYN-ACK dropped")
	}
	for i := range 10 {
		h.toWorkload("mon0", tcp4(cli4, mon4, uint16(40000+i), 80, tcpSYN))
	}
	if got := h.toWorkload("web0", tcp4(cli4, web4, 30000, 443, tcpSYN)); got != retDrop {
		t.Fatalf("new flow past web's quota passed")
	}
	h.drain()
	res, err := h.d.GC(0)
	if err != nil {
		t.Fatal(err)
	}
	if res.EarlyDropped != 255 || res.Deleted != 255 || !res.Pressure {
		t.Errorf("GC %+v: want web's 255 unanswered flows dropped early, under pressure", res)
	}
	if n, m := h.ctCount(1, 0), h.ctCount(2, 0); n != 1 || m != 10 {
		t.Errorf("counts after the early drop: web %d (want the answered flow), mon %d (want 10)", n, m)
	}
	if got := h.toWorkload("web0", tcp4(cli4, web4, 20000, 443, tcpACK)); got != retPass {
		t.Errorf("answered flow dropped by the early drop")
	}
	if got := h.toWorkload("web0", tcp4(cli4, web4, 30000, 443, tcpSYN)); got != retPass {
		t.Errorf("web's new flow refused after the early drop")
	}
	h.drain()
	if st := h.d.GCStats(); st.EarlyDropped != 255 {
		t.Errorf("GCStats.EarlyDropped %d, want 255", st.EarlyDropped)
	}
}

// TestPrivilegedConntrackRunGC: the agent's GC loop sweeps on its own,
// gives the quota back, frees nothing in use, reports in Status while it
// runs, and stops with its context.
func TestPrivilegedConntrackRunGC(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}, CTGCInterval: 50 * time.Millisecond, synExpiresAtOnce: true}, "web0", "mon0", "up0")
	h.apply(twoWorkloads())
	for i := range 100 {
		if got := h.toWorkload("web0", tcp4(cli4, web4, uint16(20000+i), 443, tcpSYN)); got != retPass {
			t.Fatalf("SYN %d dropped", i)
		}
	}
	h.drain()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.d.RunGC(ctx, 0)
	}()
	waitFor(t, 20*time.Second, "the GC loop to delete the 100 expired entries", func() bool {
		st := h.d.Status().Conntrack
		return st != nil && st.Deleted >= 100 && st.Sweeps >= 2
	})
	if n := h.ctCount(1, 0); n != 0 {
		t.Errorf("web's count after the GC loop: %d, want 0", n)
	}
	if _, ok := h.d.ctSlots.lookup(1); !ok {
		t.Errorf("the GC loop freed the slot of an endpoint in the rule set")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("RunGC did not return after its context ended")
	}
}

// TestPrivilegedConntrackResize: a new capacity (--conntrack-entries)
// replaces the pinned maps like an upgrade does, entries copied over;
// a smaller map takes what fits and the rest are decided anew, and the
// apply does not fail for it.
func TestPrivilegedConntrackResize(t *testing.T) {
	h := newHarness(t, Config{HostInterfaces: []string{"up0"}, CTEntries: 2048, CTEndpointPercent: 100}, "web0", "mon0", "up0")
	h.apply(twoWorkloads())
	for i := range 1100 {
		if got := h.toWorkload("web0", tcp4(cli4, web4, uint16(20000+i), 443, tcpSYN)); got != retPass {
			t.Fatalf("SYN %d dropped", i)
		}
	}
	h.drain()
	for _, size := range []uint32{4096, 1024} {
		cfg := h.d.cfg
		if err := h.d.Close(); err != nil {
			t.Fatal(err)
		}
		cfg.CTEntries, cfg.CT6Entries = size, 0
		cfg.Logger = zaptest.NewLogger(t)
		var err error
		if h.d, err = h.open(cfg); err != nil {
			t.Fatalf("Open with %d conntrack entries: %v", size, err)
		}
		h.apply(twoWorkloads())
		if got := int(h.d.objs.EgCt4.MaxEntries()); got != int(size) {
			t.Errorf("eg_ct4 holds %d, want %d", got, size)
		}
		want := int64(min(1100, size))
		if n := h.ctCount(1, 0); n != want {
			t.Errorf("%d entries: web's count %d, want %d (the copied entries)", size, n, want)
		}
		if err := h.d.CheckPins(); err != nil {
			t.Errorf("pins after the resize: %v", err)
		}
	}
	// Exactly the copied flows are still tracked: their replies pass, the
	// others' are new flows no rule allows.
	passed := 0
	for i := range 1100 {
		if h.fromWorkload("web0", tcp4(web4, cli4, 443, uint16(20000+i), tcpSYN|tcpACK)) == retPass {
			passed++
		}
	}
	h.drain()
	if passed != 1024 {
		t.Errorf("%d replies passed after shrinking to 1024 entries, want 1024 (the copied flows)", passed)
	}
}
