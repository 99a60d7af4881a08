package datapath

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The geometry of eg_events, one ring per possible CPU (bpf/maps.h says
// why and states the protocol). These mirror the C definitions;
// TestEventRingLayout checks them against the object's BTF.
const (
	evSlotBytes = 64  // EG_EV_SLOT
	evHdrBytes  = 128 // EG_EV_HDR: struct eg_ev_ring
	evMinSlots  = 16
	evMaxSlots  = 1 << 18 // 16 MiB a CPU

	ringHeadOff   = 0  // eg_ev_ring.head: the CPU's programs write it
	ringTailOff   = 64 // eg_ev_ring.tail: the agent writes it
	ringKickedOff = 72 // eg_ev_ring.kicked

	evKindPad  = 1 // EG_EV_PAD
	evKindIPv4 = 4 // EG_EV_IPV4
	evKindIPv6 = 6 // EG_EV_IPV6
)

// eventRing is the shape of eg_events: cpus rings of slots slots each.
type eventRing struct {
	cpus  uint32
	slots uint64
}

// eventRingOf splits a budget of bytes between the possible CPUs: each
// ring gets the largest power of two of slots that fits its share, at
// least evMinSlots.
func eventRingOf(bytes uint32) (eventRing, error) {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return eventRing{}, fmt.Errorf("possible CPUs: %w", err)
	}
	per := uint64(bytes) / uint64(cpus) / evSlotBytes
	slots := uint64(evMinSlots)
	if per > evMinSlots {
		slots = min(uint64(1)<<(63-bits.LeadingZeros64(per)), evMaxSlots)
	}
	return eventRing{cpus: uint32(cpus), slots: slots}, nil
}

// valueSize is the size of one ring, the array's value.
func (g eventRing) valueSize() uint32 { return evHdrBytes + uint32(g.slots)*evSlotBytes }

// bytes is the size of the array's mapping.
func (g eventRing) bytes() int {
	n := int(g.cpus) * int(g.valueSize()) // values are 8-byte aligned already
	page := unix.Getpagesize()
	return (n + page - 1) / page * page
}

// ringMem is a shared mapping of eg_events. It is the only way the agent
// reads events; the kernel writes into the same pages.
type ringMem struct {
	mu  sync.Mutex // held while mem is read: Close must not unmap under a reader
	mem []byte
	geo eventRing
}

// mapEventRing maps m, whose shape must be geo.
func mapEventRing(m *ebpf.Map, geo eventRing) (*ringMem, error) {
	if m.MaxEntries() != geo.cpus || m.ValueSize() != geo.valueSize() {
		return nil, fmt.Errorf("eg_events is %d rings of %d bytes, want %d of %d", m.MaxEntries(), m.ValueSize(), geo.cpus, geo.valueSize())
	}
	mem, err := unix.Mmap(m.FD(), 0, geo.bytes(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map eg_events: %w", err)
	}
	return &ringMem{mem: mem, geo: geo}, nil
}

// word is the 8-byte field at off of CPU cpu's ring header.
func (r *ringMem) word(cpu int, off int) *uint64 {
	return (*uint64)(unsafe.Pointer(&r.mem[cpu*int(r.geo.valueSize())+off]))
}

var errRingClosed = errors.New("event ring closed")

// errCorruptRing marks a record that breaks the ring's protocol.
var errCorruptRing = errors.New("corrupt event ring")

// drain hands every complete record of every CPU's ring to fn, in order
// per CPU, and gives their slots back. A record that breaks the protocol
// (a bug, or a writer that is not ours) ends that CPU's pass: what is
// left of it is skipped and reported in the returned error, with the
// number of slots skipped; the other rings are still read.
func (r *ringMem) drain(fn func(rec []byte) error) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mem == nil {
		return 0, errRingClosed
	}
	var errs []error
	n := 0
	for cpu := range int(r.geo.cpus) {
		// Cleared before head is read: a wake-up for anything after
		// this read is not lost (bpf/maps.h).
		atomic.StoreUint32((*uint32)(unsafe.Pointer(r.word(cpu, ringKickedOff))), 0)
		head := atomic.LoadUint64(r.word(cpu, ringHeadOff))
		tail := atomic.LoadUint64(r.word(cpu, ringTailOff)) // the agent's own: the rings have one reader
		if head-tail > r.geo.slots {
			errs = append(errs, fmt.Errorf("%w: CPU %d: head %d is %d slots past tail %d (ring of %d); skipped", errCorruptRing, cpu, head, head-tail, tail, r.geo.slots))
			tail = head
		}
		for tail != head {
			rec, used, err := r.record(cpu, tail, head)
			if err == nil && rec != nil {
				err = fn(rec)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%w: CPU %d, slot %d: %w; %d slots skipped", errCorruptRing, cpu, tail, err, head-tail))
				tail = head
				break
			}
			if rec != nil {
				n++
			}
			tail += used
		}
		atomic.StoreUint64(r.word(cpu, ringTailOff), tail)
	}
	return n, errors.Join(errs...)
}

// record returns the record at slot number at of cpu's ring (nil for a
// pad) and how many slots it takes. head bounds it.
func (r *ringMem) record(cpu int, at, head uint64) ([]byte, uint64, error) {
	base := cpu*int(r.geo.valueSize()) + evHdrBytes
	idx := at & (r.geo.slots - 1)
	slot := r.mem[base+int(idx)*evSlotBytes:]
	hdr := *(*uint64)(unsafe.Pointer(&slot[0]))
	kind, size := uint32(hdr), uint32(hdr>>32)
	var used uint64
	switch {
	case kind == evKindPad && size == evSlotBytes:
		return nil, 1, nil
	case kind == evKindIPv4 && size == evSize4:
		used = 1
	case kind == evKindIPv6 && size == evSize && idx+1 < r.geo.slots:
		used = 2
	default:
		return nil, 0, fmt.Errorf("record kind %d of %d bytes", kind, size)
	}
	if head-at < used {
		return nil, 0, fmt.Errorf("record of %d slots past head", used)
	}
	return slot[8 : 8+size], used, nil
}

// pending returns how many bytes of records wait in the rings.
func (r *ringMem) pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mem == nil {
		return 0
	}
	n := uint64(0)
	for cpu := range int(r.geo.cpus) {
		n += atomic.LoadUint64(r.word(cpu, ringHeadOff)) - atomic.LoadUint64(r.word(cpu, ringTailOff))
	}
	return int(n) * evSlotBytes
}

// close unmaps the rings; later drains fail with errRingClosed.
func (r *ringMem) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	r.mem = nil
	return err
}
