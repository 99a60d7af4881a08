package datapath

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// pinToOneCPU keeps the calling goroutine on one OS thread bound to one
// CPU, so that every prog.Run of the test uses the same CPU's eg_ct_batch
// slots. The thread is never unlocked: the runtime ends it with the test's
// goroutine instead of reusing a thread with a narrowed affinity.
func pinToOneCPU(t *testing.T) int {
	t.Helper()
	runtime.LockOSThread()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatalf("sched_getaffinity: %v", err)
	}
	cpu := -1
	for i := range 1024 {
		if set.IsSet(i) {
			cpu = i
			break
		}
	}
	if cpu < 0 {
		t.Fatal("no CPU in this thread's affinity mask")
	}
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatalf("sched_setaffinity to CPU %d: %v", cpu, err)
	}
	return cpu
}

// ct4Words is an IPv4 conntrack key as eg_ct_pending.key holds it.
func ct4Words(local, remote string, ep uint32, lport, rport uint16, proto uint8) [11]uint32 {
	l, r := netip.MustParseAddr(local).As4(), netip.MustParseAddr(remote).As4()
	return [11]uint32{
		binary.NativeEndian.Uint32(l[:]), binary.NativeEndian.Uint32(r[:]),
		ep, uint32(lport) | uint32(rport)<<16, uint32(proto), // kind EG_CT_KIND_PORTS (0)
	}
}

// pendingFor sums, over every CPU and slot, the counts eg_ct_batch holds
// for the flow with key words w that are not yet in its entry.
func (h *harness) pendingFor(w [11]uint32, family uint32) (packets, bytes [2]uint64) {
	h.t.Helper()
	for slot := range uint32(bpfEgCtBatchLimitsEG_CT_BATCH_SLOTS) {
		var per []bpfEgCtPending
		if err := h.d.objs.EgCtBatch.Lookup(&slot, &per); err != nil {
			h.t.Fatalf("eg_ct_batch[%d]: %v", slot, err)
		}
		for _, p := range per {
			if p.Family != family || p.Key != w {
				continue
			}
			for i := range 2 {
				packets[i] += uint64(p.Packets[i])
				bytes[i] += p.Bytes[i]
			}
		}
	}
	return packets, bytes
}

// TestPrivilegedConntrackBatchedCounts: established packets are counted in
// the CPU's eg_ct_batch slot and written to the entry in batches. At every
// point the entry plus what is pending is exact, the entry alone is short
// by less than a batch per direction, and a FIN writes the pending counts
// through so that a closing connection's entry is exact.
func TestPrivilegedConntrackBatchedCounts(t *testing.T) {
	h := newShopHarness(t)
	cpu := pinToOneCPU(t)
	h.drain()
	const batch = uint64(bpfEgCtBatchLimitsEG_CT_BATCH_MAX)
	key := ct4Words(web4, cli4, 1, 443, 41500, protoTCP)

	if got := h.toWorkload("web0", tcp4(cli4, web4, 41500, 443, tcpSYN)); got != retPass {
		t.Fatalf("SYN: %d", got)
	}
	// One TCP packet's length as the datapath counts it (every packet
	// below has the same headers and no payload).
	plen := h.ctEntry(4, web4, cli4, 1, 443, 41500, protoTCP).Bytes[0]
	if plen == 0 {
		t.Fatal("SYN counted no bytes")
	}
	sent := [2]uint64{1, 0}
	check := func(when string) bpfEgCtEntry {
		t.Helper()
		e := h.ctEntry(4, web4, cli4, 1, 443, 41500, protoTCP)
		pp, pb := h.pendingFor(key, 4)
		for i := range 2 {
			if e.Packets[i]+pp[i] != sent[i] || e.Bytes[i]+pb[i] != sent[i]*plen {
				t.Errorf("%s, direction %d: entry %d packets %d bytes + pending %d / %d, want %d packets %d bytes in all",
					when, i, e.Packets[i], e.Bytes[i], pp[i], pb[i], sent[i], sent[i]*plen)
			}
			if pp[i] >= batch {
				t.Errorf("%s, direction %d: %d packets pending, a batch is %d", when, i, pp[i], batch)
			}
		}
		return e
	}
	if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 41500, tcpSYN|tcpACK)); got != retPass {
		t.Fatalf("SYN-ACK: %d", got)
	}
	sent[1]++
	// The reply is the flow's first established packet on this CPU: it
	// reaches the entry at once (a request and its answer are exact).
	if e := check("after the SYN-ACK"); e.Packets != [2]uint64{1, 1} {
		t.Errorf("after the SYN-ACK the entry has %v packets, want [1 1]", e.Packets)
	}
	for i := range 100 {
		if got := h.toWorkload("web0", tcp4(cli4, web4, 41500, 443, tcpACK)); got != retPass {
			t.Fatalf("ACK %d: %d", i, got)
		}
		sent[0]++
		if i%3 == 0 {
			if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 41500, tcpACK)); got != retPass {
				t.Fatalf("reply %d: %d", i, got)
			}
			sent[1]++
		}
	}
	check("after 100 packets in and 34 out")
	// The agent's walk reports entry plus pending: the flow's whole volume.
	found := false
	if err := h.d.Conntrack(1<<20, func(c *Conn) {
		if c.LocalPort != 443 || c.RemotePort != 41500 {
			return
		}
		found = true
		if c.OrigPackets != sent[0] || c.ReplyPackets != sent[1] || c.OrigBytes != sent[0]*plen || c.ReplyBytes != sent[1]*plen {
			t.Errorf("walk reports %d/%d packets, %d/%d bytes; want %d/%d and %d/%d",
				c.OrigPackets, c.ReplyPackets, c.OrigBytes, c.ReplyBytes, sent[0], sent[1], sent[0]*plen, sent[1]*plen)
		}
	}); err != nil {
		t.Fatalf("Conntrack: %v", err)
	}
	if !found {
		t.Error("the walk did not report the flow")
	}
	pp, _ := h.pendingFor(key, 4)
	if pp[0] == 0 && pp[1] == 0 {
		// 101 packets from the client are not a multiple of the batch;
		// only a flush by age (100 ms on a slow machine) empties the slot.
		t.Logf("CPU %d: nothing pending after 100 packets (the slot was flushed by age)", cpu)
	}
	// The client closes: its FIN writes what this CPU holds through.
	if got := h.toWorkload("web0", tcp4(cli4, web4, 41500, 443, tcpFIN|tcpACK)); got != retPass {
		t.Fatalf("FIN: %d", got)
	}
	sent[0]++
	e := check("after the FIN")
	if e.Packets[0] != sent[0] || e.Bytes[0] != sent[0]*plen {
		t.Errorf("after the FIN the entry has %d packets %d bytes from the client, want %d and %d",
			e.Packets[0], e.Bytes[0], sent[0], sent[0]*plen)
	}
	if e.Packets[1] != sent[1] {
		t.Errorf("after the FIN the entry has %d reply packets, want %d (the FIN writes the slot's both directions)", e.Packets[1], sent[1])
	}
}

// TestPrivilegedRevalidationWithBatchedCounts: a connection whose packets
// go through the established fast path (counts pending in eg_ct_batch) is
// still cut by the first packet after a rule-set change that refuses it,
// and a flow that later takes the same tuple does not inherit the old
// flow's pending counts.
func TestPrivilegedRevalidationWithBatchedCounts(t *testing.T) {
	h := newShopHarness(t)
	pinToOneCPU(t)
	key := ct4Words(web4, cli4, 1, 443, 41600, protoTCP)
	if got := h.toWorkload("web0", tcp4(cli4, web4, 41600, 443, tcpSYN)); got != retPass {
		t.Fatalf("SYN: %d", got)
	}
	if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 41600, tcpSYN|tcpACK)); got != retPass {
		t.Fatalf("SYN-ACK: %d", got)
	}
	for i := range 10 {
		if got := h.toWorkload("web0", tcp4(cli4, web4, 41600, 443, tcpACK)); got != retPass {
			t.Fatalf("ACK %d: %d", i, got)
		}
	}
	if pp, _ := h.pendingFor(key, 4); pp[0] == 0 {
		t.Logf("no counts pending before the change (flushed by age on a slow machine)")
	}
	h.drain()
	before := h.counters()

	// The same rules without clients-to-web.
	rs := shopRuleSet()
	rs.Entries = rs.Entries[1:]
	h.apply(rs)
	if got := h.toWorkload("web0", tcp4(cli4, web4, 41600, 443, tcpACK)); got != retDrop {
		t.Fatalf("revoked established flow still passes: %d", got)
	}
	checkEvents(t, h.drain(), &wantEvent{ruleset.VerdictDenied, ruleset.RuleDefaultDeny, ReasonRevalidated, ruleset.Ingress, idClients, idWeb})
	if d := h.counters().Get(CounterRevalidated) - before.Get(CounterRevalidated); d != 1 {
		t.Errorf("revalidated +%d, want +1", d)
	}
	for i := range 3 {
		if got := h.toWorkload("web0", tcp4(cli4, web4, 41600, 443, tcpACK)); got != retDrop {
			t.Errorf("packet %d of the cut flow passes: %d", i, got)
		}
	}
	h.drain()

	// Access restored: a new connection on the same tuple starts from its
	// own first packet's counts, whatever the old flow left pending.
	h.apply(shopRuleSet())
	if got := h.toWorkload("web0", tcp4(cli4, web4, 41600, 443, tcpSYN)); got != retPass {
		t.Fatalf("new SYN on the tuple: %d", got)
	}
	if got := h.fromWorkload("web0", tcp4(web4, cli4, 443, 41600, tcpSYN|tcpACK)); got != retPass {
		t.Fatalf("new SYN-ACK: %d", got)
	}
	e := h.ctEntry(4, web4, cli4, 1, 443, 41600, protoTCP)
	pp, _ := h.pendingFor(key, 4)
	if e.Packets[0]+pp[0] != 1 || e.Packets[1]+pp[1] != 1 {
		t.Errorf("new flow on the tuple: entry %v + pending %v packets, want 1 each way", e.Packets, pp)
	}
}
