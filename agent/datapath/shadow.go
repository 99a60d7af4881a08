package datapath

import (
	"errors"
	"fmt"
	"hash/maphash"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// shadow is this process's own copy of what it wrote into the active
// generation's inner maps: every entry as the bytes of its key and value,
// and per map an order-independent checksum of them (the sum of a keyed
// hash of each entry). Drift checks compare the kernel's maps against it
// and repairs rewrite from it, never from what the kernel holds.
//
// Invariant: with d.mu held and d.shadow not nil, entries[i] is exactly
// the content this process wrote into d.gens[active][i] (array entries of
// all zero bytes left out: an array has every key), and sum[i] the sum of
// entryHash over entries[i]. Every write to an active inner map goes
// through set or del.
//
// The hash is keyed with a seed chosen at Open and kept only in memory, so
// whoever rewrites a map entry cannot pick a value with the same checksum
// without reading this process's memory (and whoever can is root, who can
// always win: detection is the point, not prevention).
type shadow struct {
	seed    maphash.Seed
	entries [numInner]map[string]string
	sum     [numInner]uint64
}

func newShadow(seed maphash.Seed) *shadow {
	s := &shadow{seed: seed}
	for i := range s.entries {
		s.entries[i] = make(map[string]string)
	}
	return s
}

// entryHash hashes one entry; key and value have a fixed size per map, so
// their concatenation is unambiguous.
func entryHash(seed maphash.Seed, k, v []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(seed)
	h.Write(k)
	h.Write(v)
	return h.Sum64()
}

func (s *shadow) set(which int, k, v []byte) {
	if s == nil {
		return
	}
	s.del(which, k)
	if which == mEndpoints && allZero(v) {
		return // an array slot never written
	}
	s.entries[which][string(k)] = string(v)
	s.sum[which] += entryHash(s.seed, k, v)
}

func (s *shadow) del(which int, k []byte) {
	if s == nil {
		return
	}
	m := s.entries[which]
	if old, ok := m[string(k)]; ok {
		s.sum[which] -= entryHash(s.seed, k, []byte(old))
		delete(m, string(k))
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// raw is the memory of a value as the kernel sees it. The generated types
// spell out their padding (structs.HostLayout, explicit Pad fields), so
// their Go layout is the C one: it is what cilium/ebpf copies into the
// syscall too (TestShadowLayouts checks there is no hidden padding).
func raw[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// record puts what a batch update wrote into the shadow.
func record[K, V any](s *shadow, which int, keys []K, vals []V) {
	if s == nil {
		return
	}
	for i := range keys {
		s.set(which, raw(&keys[i]), raw(&vals[i]))
	}
}

// scanChunk is how many entries one batch lookup reads: large enough for
// any hash bucket (the kernel refuses a batch smaller than a bucket), small
// enough to stay a few hundred KiB.
const scanChunk = 4096

// scanMap calls f with the bytes of every entry of m, read in batches of
// up to scanChunk; a map type without batch lookup on this kernel is read
// entry by entry (older kernels' LPM trie). The slices are only valid
// during the call.
func scanMap[K, V any](m *ebpf.Map, f func(k, v []byte)) error {
	n := int(min(scanChunk, max(m.MaxEntries(), 1)))
	keys := make([]K, n)
	vals := make([]V, n)
	var cursor ebpf.MapBatchCursor
	for first := true; ; first = false {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		if first && n == 0 && (errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTSUP)) {
			return iterateMap[K, V](m, f)
		}
		for i := range n {
			f(raw(&keys[i]), raw(&vals[i]))
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // the last batch
		}
		if err != nil {
			return err
		}
	}
}

func iterateMap[K, V any](m *ebpf.Map, f func(k, v []byte)) error {
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		f(raw(&k), raw(&v))
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate: %w", err)
	}
	return nil
}
