package datapath

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/eastguard/eastguard/internal/testutil"
)

// BenchmarkPrimitives measures, on this machine, what the datapath's
// building blocks cost over an empty program: the floor under the verdict
// benchmarks. Each program does one thing and returns; times are the
// kernel's, median over calls of 1000-run means (as BenchmarkVerdict).
func BenchmarkPrimitives(b *testing.B) {
	testutil.RequirePrivileged(b)
	mk := func(typ ebpf.MapType, key, value, entries uint32, flags uint32) *ebpf.Map {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: typ, KeySize: key, ValueSize: value, MaxEntries: entries, Flags: flags})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { m.Close() })
		return m
	}
	fill := func(m *ebpf.Map, key uint32, n int) {
		for i := range n {
			k := make([]byte, key)
			k[0], k[1], k[2] = 1, byte(i), byte(i>>8) // k[0]=1 marks the looked-up key when i == 0
			if i > 0 {
				k[0] = 2
			}
			if err := m.Put(k, make([]byte, m.ValueSize())); err != nil {
				b.Fatal(err)
			}
		}
	}
	// lookup builds: key of size n on the stack, first byte 1; call
	// helper(map, key[, value]); return TCX_NEXT.
	withKey := func(m *ebpf.Map, keySize int16, fn asm.BuiltinFunc, value bool) asm.Instructions {
		ins := asm.Instructions{}
		for off := int16(0); off < keySize; off += 4 {
			ins = append(ins, asm.StoreImm(asm.RFP, -keySize-64+off, 0, asm.Word))
		}
		ins = append(ins,
			asm.StoreImm(asm.RFP, -keySize-64, 1, asm.Byte),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, int32(-keySize-64)),
		)
		if value { // value: 64 zero bytes at fp-64
			for off := int16(-64); off < 0; off += 4 {
				ins = append(ins, asm.StoreImm(asm.RFP, off, 0, asm.Word))
			}
			ins = append(ins, asm.Mov.Reg(asm.R3, asm.RFP), asm.Add.Imm(asm.R3, -64), asm.Mov.Imm(asm.R4, 0))
		}
		return append(ins, fn.Call(), asm.Mov.Imm(asm.R0, -1), asm.Return())
	}

	arr := mk(ebpf.Array, 4, 40, 1, 0)
	h20 := mk(ebpf.Hash, 20, 40, 262144, 0)
	h44 := mk(ebpf.Hash, 44, 40, 262144, 0)
	lru20 := mk(ebpf.LRUHash, 20, 40, 262144, 0)
	lru44 := mk(ebpf.LRUHash, 44, 40, 262144, 0)
	lruIns := mk(ebpf.LRUHash, 20, 40, 262144, 0)
	hashIns := mk(ebpf.Hash, 20, 64, 262144, 0) // preallocated, as eg_ct4
	lpm := mk(ebpf.LPMTrie, 24, 8, 1024, 1 /* BPF_F_NO_PREALLOC */)
	rb := mk(ebpf.RingBuf, 0, 0, 4<<20, 0) // the datapath's default size
	for _, m := range []*ebpf.Map{h20, lru20} {
		fill(m, 20, 1000)
	}
	for _, m := range []*ebpf.Map{h44, lru44} {
		fill(m, 44, 1000)
	}
	lpmKey := make([]byte, 24)
	lpmKey[0], lpmKey[4], lpmKey[8] = 64, 1, 1 // prefixlen 64 over family(1)+pad+addr(10.x)
	if err := lpm.Put(lpmKey, make([]byte, 8)); err != nil {
		b.Fatal(err)
	}

	cases := []struct {
		name string
		ins  asm.Instructions
	}{
		{"empty", asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}},
		{"array-lookup", withKey(arr, 4, asm.FnMapLookupElem, false)},
		{"hash-lookup/key=20", withKey(h20, 20, asm.FnMapLookupElem, false)},
		{"hash-lookup/key=44", withKey(h44, 44, asm.FnMapLookupElem, false)},
		{"lru-lookup/key=20", withKey(lru20, 20, asm.FnMapLookupElem, false)},
		{"lru-lookup/key=44", withKey(lru44, 44, asm.FnMapLookupElem, false)},
		{"lru-update/key=20", withKey(lruIns, 20, asm.FnMapUpdateElem, true)},
		// Replacing the key's entry (after the first run), as the
		// conntrack does for a flow whose entry expired.
		{"hash-update/key=20", withKey(hashIns, 20, asm.FnMapUpdateElem, true)},
		{"lpm-lookup", withKey(lpm, 24, asm.FnMapLookupElem, false)},
		{"jiffies", asm.Instructions{asm.FnJiffies64.Call(), asm.Mov.Imm(asm.R0, -1), asm.Return()}},
		{"ktime-coarse", asm.Instructions{asm.FnKtimeGetCoarseNs.Call(), asm.Mov.Imm(asm.R0, -1), asm.Return()}},
		{"ktime", asm.Instructions{asm.FnKtimeGetNs.Call(), asm.Mov.Imm(asm.R0, -1), asm.Return()}},
		// What eg_emit writes an IPv4 event with (one slot of a CPU's
		// 2 MiB ring, this machine's default) ...
		{"event-ring/64B", nil},
		// ... and the kernel's ring buffer it replaced.
		{"ringbuf-output/80B", func() asm.Instructions {
			ins := asm.Instructions{}
			for off := int16(-80); off < 0; off += 4 {
				ins = append(ins, asm.StoreImm(asm.RFP, off, 0, asm.Word))
			}
			return append(ins,
				asm.LoadMapPtr(asm.R1, rb.FD()),
				asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -80),
				asm.Mov.Imm(asm.R3, 80), asm.Mov.Imm(asm.R4, 0),
				asm.FnRingbufOutput.Call(), asm.Return()) // 0, or an error when the ring is full
		}()},
	}
	pkt := make([]byte, 64)
	for _, c := range cases {
		var prog *ebpf.Program
		var err error
		reset := func() {}
		if c.ins == nil {
			prog, reset = cpuRingWriter(b, 2<<20/evSlotBytes)
			if prog, err = prog.Clone(); err != nil { // closed below, as the others
				b.Fatal(err)
			}
		} else if prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "Dual BSD/GPL", Instructions: c.ins}); err != nil {
			b.Fatalf("%s: %v", c.name, err)
		}
		b.Run(c.name, func(b *testing.B) {
			var per []time.Duration
			for b.Loop() {
				ret, d, err := prog.Benchmark(pkt, 1000, nil)
				if err != nil {
					b.Fatal(err)
				}
				per = append(per, d)
				if c.name == "ringbuf-output/80B" {
					// A full ring fails fast and would be measured
					// as cheap: drain it, as a reader keeps up.
					if ret != 0 {
						b.Fatalf("ringbuf output failed: %d", int32(ret))
					}
					b.StopTimer()
					drainRing(b, rb)
					b.StartTimer()
				}
				if c.ins == nil {
					if ret != 0 {
						b.Fatalf("event ring write failed: %d", int32(ret))
					}
					b.StopTimer()
					reset()
					b.StartTimer()
				}
			}
			slices.Sort(per)
			b.ReportMetric(float64(per[len(per)/2].Nanoseconds()), "ns/op")
		})
		prog.Close()
	}
}

// drainRing consumes whatever the ring holds.
func drainRing(b *testing.B, rb *ebpf.Map) {
	rd, err := ringbuf.NewReader(rb)
	if err != nil {
		b.Fatal(err)
	}
	defer rd.Close()
	var rec ringbuf.Record
	for {
		rd.SetDeadline(time.Now())
		if err := rd.ReadInto(&rec); err != nil {
			return
		}
	}
}

// cpuRingWriter is a program that writes one 64-byte record into its
// CPU's ring of slots slots, as eg_emit does (bpf/maps.h): head and cached
// tail read, room checked, eight stores, head published by a fetching
// atomic add. reset gives every slot back, as a reader that keeps up does.
func cpuRingWriter(b *testing.B, slots uint64) (prog *ebpf.Program, reset func()) {
	b.Helper()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		b.Fatal(err)
	}
	geo := eventRing{cpus: uint32(cpus), slots: slots}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: geo.valueSize(), MaxEntries: geo.cpus, Flags: unix.BPF_F_MMAPABLE})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	rm, err := mapEventRing(m, geo)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { rm.close() })
	ins := asm.Instructions{
		asm.FnGetSmpProcessorId.Call(),
		asm.StoreMem(asm.RFP, -8, asm.R0, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "ok"),
		asm.Mov.Imm(asm.R0, 1), asm.Return(),
		asm.LoadMem(asm.R1, asm.R0, ringHeadOff, asm.DWord).WithSymbol("ok"),
		asm.LoadMem(asm.R3, asm.R0, 8, asm.DWord), // cached tail
		asm.Mov.Reg(asm.R4, asm.R1), asm.Sub.Reg(asm.R4, asm.R3),
		asm.JLT.Imm(asm.R4, int32(slots), "room"),
		asm.LoadMem(asm.R3, asm.R0, ringTailOff, asm.DWord),
		asm.StoreMem(asm.R0, 8, asm.R3, asm.DWord),
		asm.Mov.Reg(asm.R4, asm.R1), asm.Sub.Reg(asm.R4, asm.R3),
		asm.JLT.Imm(asm.R4, int32(slots), "room"),
		asm.Mov.Imm(asm.R0, 2), asm.Return(), // full: the reset did not keep up
		asm.Mov.Reg(asm.R2, asm.R1).WithSymbol("room"),
		asm.And.Imm(asm.R2, int32(slots-1)),
		asm.LSh.Imm(asm.R2, 6),
		asm.Add.Reg(asm.R2, asm.R0),
	}
	for off := int16(evHdrBytes); off < evHdrBytes+evSlotBytes; off += 8 {
		ins = append(ins, asm.StoreMem(asm.R2, off, asm.R1, asm.DWord))
	}
	ins = append(ins,
		asm.Mov.Imm(asm.R1, 1),
		asm.FetchAdd.Mem(asm.R0, asm.R1, asm.DWord, ringHeadOff), // head++, fully ordered
		asm.Mov.Imm(asm.R0, 0), asm.Return())
	prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "Dual BSD/GPL", Instructions: ins})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { prog.Close() })
	// The records are not events (no kind word): given back by moving
	// each tail to its head, not read.
	return prog, func() {
		for cpu := range int(geo.cpus) {
			atomic.StoreUint64(rm.word(cpu, ringTailOff), atomic.LoadUint64(rm.word(cpu, ringHeadOff)))
		}
	}
}

// BenchmarkEventRingSize: what one 64-byte record costs to write into a
// CPU's event ring, by the ring's size, with the ring given back after
// every 1000 records as a reader that keeps up does. The rings take turns
// call by call, so the machine's drift affects them alike. Each record
// lands on a line last written a lap ago.
func BenchmarkEventRingSize(b *testing.B) {
	testutil.RequirePrivileged(b)
	sizes := []uint64{256 << 10, 2 << 20, 16 << 20} // bytes of one CPU's ring
	progs := make([]*ebpf.Program, len(sizes))
	resets := make([]func(), len(sizes))
	for i, size := range sizes {
		progs[i], resets[i] = cpuRingWriter(b, size/evSlotBytes)
	}
	pkt := make([]byte, 64)
	per := make([][]time.Duration, len(sizes))
	for b.Loop() {
		for i, prog := range progs {
			ret, d, err := prog.Benchmark(pkt, 1000, nil)
			if err != nil {
				b.Fatal(err)
			}
			if ret != 0 {
				b.Fatalf("ring of %d bytes: write failed (%d): the reset did not keep up", sizes[i], int32(ret))
			}
			per[i] = append(per[i], d)
			b.StopTimer()
			resets[i]()
			b.StartTimer()
		}
	}
	for i, size := range sizes {
		slices.Sort(per[i])
		b.ReportMetric(float64(per[i][len(per[i])/2].Nanoseconds()), fmt.Sprintf("ns/event-%dKiB", size>>10))
	}
}
