package datapath

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// ringHead is CPU cpu's head, as the programs published it.
func ringHead(rd *EventReader, cpu int) uint64 {
	return atomic.LoadUint64(rd.rings.word(cpu, ringHeadOff))
}

// TestPrivilegedEventRingLaps: a CPU's ring of 16 slots, written with a
// mix of one-slot (IPv4) and two-slot (IPv6) records over many laps and
// drained between bursts, delivers every event once, in order, none lost,
// and pads the last slot where a two-slot record would wrap.
func TestPrivilegedEventRingLaps(t *testing.T) {
	h := newHarness(t, Config{RingBufBytes: 16 * evSlotBytes}, "web0", "mon0", "up0")
	h.apply(shopRuleSet())
	h.drain()
	if got := h.ring.rings.geo.slots; got != evMinSlots {
		t.Fatalf("ring of %d slots, want %d", got, evMinSlots)
	}
	before := h.counters()
	onOneCPU(t, func() {
		port, slots, pads := uint16(20000), uint64(0), uint64(0)
		head0 := ringHead(h.ring, 0)
		pos := head0
		for round := range 60 {
			var want []uint16
			for i := range 1 + round%7 { // at most 7 records, at most 14 slots: always room
				port++
				pkt, n := tcp4(cli4, web4, port, 443, tcpSYN), uint64(1)
				if (round+i)%3 == 0 || pos%16 == 15 && round%4 == 0 {
					pkt, n = tcp6(cli6, web6, port, 443, tcpSYN), 2
					if pos%16 == 15 {
						pads++
						pos++
					}
				}
				pos += n
				if ret := h.toWorkload("web0", pkt); ret != retPass {
					t.Fatalf("round %d: SYN %d dropped: %d", round, port, ret)
				}
				want, slots = append(want, port), slots+n
			}
			got := h.drain()
			if len(got) != len(want) {
				t.Fatalf("round %d: %d events, want %d", round, len(got), len(want))
			}
			for i, ev := range got {
				if ev.SrcPort != want[i] || ev.DstPort != 443 || ev.Src.Is4() != (ev.Dst.Is4()) {
					t.Fatalf("round %d, event %d: %v:%d -> %v:%d, want source port %d", round, i, ev.Src, ev.SrcPort, ev.Dst, ev.DstPort, want[i])
				}
				if ev.Src.Is6() && ev.Src.String() != cli6 || ev.Src.Is4() && ev.Src.String() != cli4 {
					t.Fatalf("round %d, event %d: source %v", round, i, ev.Src)
				}
			}
		}
		used := ringHead(h.ring, 0) - head0
		if used < 10*16 {
			t.Fatalf("%d slots written: fewer than 10 laps", used)
		}
		if pads == 0 || used != slots+pads {
			t.Errorf("%d slots used by %d slots of records and %d pads, want them equal (and pads)", used, slots, pads)
		}
	})
	if lost := h.counters().Get(CounterEventsLost) - before.Get(CounterEventsLost); lost != 0 {
		t.Errorf("%d events lost with the ring drained between bursts", lost)
	}
}

// TestPrivilegedEventRingCorruptRecord: a record that breaks the protocol
// (written by something other than the programs) is reported with where it
// was; the records before it are delivered, the rest of that ring's pass
// is skipped, and the next events are read as before. A head far past the
// tail (more than a ring) is reported and skipped the same way.
func TestPrivilegedEventRingCorruptRecord(t *testing.T) {
	h := newShopHarness(t)
	h.drain()
	onOneCPU(t, func() {
		at := ringHead(h.ring, 0)
		for i := range 3 {
			h.toWorkload("web0", tcp4(cli4, web4, uint16(21000+i), 443, tcpSYN))
		}
		rm := h.ring.rings
		slot := (*uint64)(unsafe.Pointer(&rm.mem[int(rm.geo.valueSize())*0+evHdrBytes+int((at+1)&(rm.geo.slots-1))*evSlotBytes]))
		*slot = 9 | 56<<32
		var got []uint16
		n, err := h.ring.Drain(func(ev *FlowEvent) { got = append(got, ev.SrcPort) })
		if !errors.Is(err, errCorruptRing) {
			t.Fatalf("Drain over a corrupt record: %v, want errCorruptRing", err)
		}
		t.Logf("reported: %v", err)
		if n != 1 || len(got) != 1 || got[0] != 21000 {
			t.Fatalf("read %d %v before the corrupt record, want [21000]", n, got)
		}
		h.toWorkload("web0", tcp4(cli4, web4, 21010, 443, tcpSYN))
		if evs := h.drain(); len(evs) != 1 || evs[0].SrcPort != 21010 {
			t.Fatalf("after the skip: %v, want the one new event", evs)
		}

		atomic.AddUint64(rm.word(0, ringHeadOff), 1000) // as a foreign writer would
		if _, err := h.ring.Drain(func(*FlowEvent) {}); !errors.Is(err, errCorruptRing) {
			t.Fatalf("Drain with head a thousand slots past tail: %v, want errCorruptRing", err)
		}
		h.toWorkload("web0", tcp4(cli4, web4, 21011, 443, tcpSYN))
		if evs := h.drain(); len(evs) != 1 || evs[0].SrcPort != 21011 {
			t.Fatalf("after the resync: %v, want the one new event", evs)
		}
	})
}

// TestPrivilegedEventRingWakes: a CPU's ring rings eg_wake once it holds
// the wake-up threshold, not before, and once only until the reader has
// drained it.
func TestPrivilegedEventRingWakes(t *testing.T) {
	h := newShopHarness(t)
	h.drain()
	batch := int(h.d.cfg.EventsWakeupBytes / evSlotBytes)
	doorbells := func() int {
		n := 0
		for {
			h.ring.wake.SetDeadline(time.Now())
			if err := h.ring.wake.ReadInto(&h.ring.rec); err != nil {
				return n
			}
			n++
		}
	}
	doorbells()
	port := uint16(22000)
	write := func(n int) {
		onOneCPU(t, func() {
			for range n {
				port++
				h.toWorkload("web0", tcp4(cli4, web4, port, 443, tcpSYN))
			}
		})
	}
	for round := range 2 {
		write(batch - 1)
		if n := doorbells(); n != 0 {
			t.Fatalf("round %d: %d wake-ups below the threshold (%d events)", round, n, batch-1)
		}
		write(1)
		if n := doorbells(); n != 1 {
			t.Fatalf("round %d: %d wake-ups at the threshold, want 1", round, n)
		}
		write(batch)
		if n := doorbells(); n != 0 {
			t.Fatalf("round %d: %d more wake-ups before the reader drained, want 0", round, n)
		}
		if got := len(h.drain()); got != 2*batch {
			t.Fatalf("round %d: drained %d events, want %d", round, got, 2*batch)
		}
	}
}

// TestPrivilegedEventReaderRunWakes: Run delivers an event as soon as it
// is written when every event wakes (threshold 1), with its poll at an
// hour: only the wake-up path can deliver it, event after event.
func TestPrivilegedEventReaderRunWakes(t *testing.T) {
	h := newHarness(t, Config{EventsWakeupBytes: 1}, "web0", "mon0", "up0")
	h.apply(shopRuleSet())
	h.drain()
	got := make(chan uint16, 16)
	h.ring.poll = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.ring.Run(ctx, func(ev *FlowEvent) { got <- ev.SrcPort }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	for i := range uint16(5) {
		onOneCPU(t, func() { h.toWorkload("web0", tcp4(cli4, web4, 23000+i, 443, tcpSYN)) })
		select {
		case p := <-got:
			if p != 23000+i {
				t.Fatalf("event %d has port %d", i, p)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("event %d not delivered in 10 s with an hour's poll: no wake-up", i)
		}
	}
}
