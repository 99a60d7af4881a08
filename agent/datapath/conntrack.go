package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Conn is one conntrack entry as the agent reports connection volume:
// the connection seen from one endpoint, with its counters per direction
// relative to its origin (docs/ARCHITECTURE.md, "Conntrack").
type Conn struct {
	Endpoint              ruleset.EndpointID
	Local, Remote         netip.Addr
	LocalPort, RemotePort uint16
	Protocol              ruleset.Protocol
	// Origin is the direction of the connection's first packet: Ingress
	// when Remote opened it, Egress when Local did.
	Origin       ruleset.Direction
	Verdict      ruleset.Verdict
	Rule         ruleset.RuleID
	PeerIdentity ruleset.Identity
	// OrigPackets/OrigBytes count origin -> reply (what the opener sent),
	// ReplyPackets/ReplyBytes the other way.
	OrigPackets, ReplyPackets uint64
	OrigBytes, ReplyBytes     uint64
	// Created is the first packet's time; Expires when the entry dies
	// unless another packet comes.
	Created, Expires time.Time
	// Closed: the TCP connection saw a RST or a FIN each way.
	Closed bool
}

// ErrWalkLimit is returned (wrapped) by Conntrack when it stopped at its
// bound before the end of the maps.
var ErrWalkLimit = errors.New("conntrack walk stopped at its entry limit")

// Conntrack calls fn for each port-keyed (TCP, UDP, other protocols)
// conntrack entry, IPv4 then IPv6, reading at most max entries in all
// (the maps hold at most 2 x 131072). ICMP entries (echo, errors) carry
// no connection volume worth a record and are skipped. Entries change
// under the walk: one may be missed or seen twice (a hash map has no
// snapshot); callers compare across walks. fn must not keep c.
//
// Counts are the entry's plus what eg_ct_batch holds for it, not yet
// written (read once before the walk): so a flow that went idle after a
// burst is reported whole, though its entry lacks up to a batch per CPU
// (docs/ARCHITECTURE.md, "Batched counts").
func (d *Datapath) Conntrack(max int, fn func(c *Conn)) error {
	pending, err := d.ctPending()
	if err != nil {
		return err
	}
	seen := 0
	var c Conn
	visit := func(local, remote netip.Addr, t *bpfEgCtTail, e *bpfEgCtEntry) {
		seen++
		if t.Kind != uint8(bpfEgCtKindEG_CT_KIND_PORTS) {
			return
		}
		if p, ok := pending[ctPendingKey{ctKeyWords(local, remote, t), e.Created}]; ok {
			for i := range 2 {
				e.Packets[i] += p.packets[i]
				e.Bytes[i] += p.bytes[i]
			}
		}
		c = Conn{
			Endpoint: ruleset.EndpointID(t.EndpointId), Local: local, Remote: remote,
			LocalPort: t.LocalPort, RemotePort: t.RemotePort, Protocol: ruleset.Protocol(t.Protocol),
			Origin: ruleset.Direction(e.Origin), Verdict: ruleset.Verdict(e.Verdict), Rule: ruleset.RuleID(e.RuleId),
			PeerIdentity: ruleset.Identity(e.PeerIdentity),
			OrigPackets:  e.Packets[0], ReplyPackets: e.Packets[1], OrigBytes: e.Bytes[0], ReplyBytes: e.Bytes[1],
			Created: d.clock.Wall(e.Created), Expires: d.clock.Wall(e.Expires),
		}
		c.Closed = c.Protocol == ruleset.ProtocolTCP && ctClosed(e.State)
		fn(&c)
	}
	var k4 bpfEgCt4Key
	var k6 bpfEgCt6Key
	var val bpfEgCtEntry
	err = walkMap(d.objs.EgCt4, &k4, &val, max, &seen, func() {
		var l, r [4]byte
		binary.NativeEndian.PutUint32(l[:], k4.Local)
		binary.NativeEndian.PutUint32(r[:], k4.Remote)
		visit(netip.AddrFrom4(l), netip.AddrFrom4(r), &k4.T, &val)
	})
	if err != nil {
		return fmt.Errorf("walk eg_ct4: %w", err)
	}
	err = walkMap(d.objs.EgCt6, &k6, &val, max, &seen, func() {
		visit(netip.AddrFrom16(k6.Local), netip.AddrFrom16(k6.Remote), &k6.T, &val)
	})
	if err != nil {
		return fmt.Errorf("walk eg_ct6: %w", err)
	}
	return nil
}

// ctPendingKey names a flow's counts in eg_ct_batch: its conntrack key as
// the slot holds it (32-bit words, the family in the last) and its
// entry's created, which tells it from a later flow of the same tuple.
type ctPendingKey struct {
	words   [12]uint32
	created uint64
}

type ctPendingCounts struct {
	packets, bytes [2]uint64
}

// ctKeyWords is the conntrack key of an entry as eg_ct_pending.key holds
// it (native byte order, as the datapath wrote it), family last.
func ctKeyWords(local, remote netip.Addr, t *bpfEgCtTail) [12]uint32 {
	var w [12]uint32
	n := 0
	put := func(b []byte) {
		for i := 0; i+4 <= len(b); i += 4 {
			w[n] = binary.NativeEndian.Uint32(b[i:])
			n++
		}
	}
	if local.Is4() {
		l, r := local.As4(), remote.As4()
		put(l[:])
		put(r[:])
		w[11] = 4
	} else {
		l, r := local.As16(), remote.As16()
		put(l[:])
		put(r[:])
		w[11] = 6
	}
	w[n] = t.EndpointId
	w[n+1] = uint32(t.LocalPort) | uint32(t.RemotePort)<<16
	w[n+2] = uint32(t.Protocol) | uint32(t.Kind)<<8 | uint32(t.Pad)<<16
	return w
}

// ctPending sums eg_ct_batch's pending counts over every CPU by flow.
func (d *Datapath) ctPending() (map[ctPendingKey]ctPendingCounts, error) {
	out := make(map[ctPendingKey]ctPendingCounts)
	var per []bpfEgCtPending
	for slot := range uint32(bpfEgCtBatchLimitsEG_CT_BATCH_SLOTS) {
		if err := d.objs.EgCtBatch.Lookup(&slot, &per); err != nil {
			return nil, fmt.Errorf("read eg_ct_batch[%d]: %w", slot, err)
		}
		for _, p := range per {
			if p.Family != 4 && p.Family != 6 || p.Packets == [2]uint32{} {
				continue
			}
			var k ctPendingKey
			copy(k.words[:11], p.Key[:])
			k.words[11] = p.Family
			k.created = p.Created
			if p.Family == 4 {
				clear(k.words[5:11]) // what an IPv4 key leaves of an earlier IPv6 one
			}
			c := out[k]
			for i := range 2 {
				c.packets[i] += uint64(p.Packets[i])
				c.bytes[i] += p.Bytes[i]
			}
			out[k] = c
		}
	}
	return out, nil
}

// ctClosed: RST seen, or a FIN each way.
func ctClosed(state uint8) bool {
	fins := uint8(bpfEgCtStateEG_CT_FIN_ORIG | bpfEgCtStateEG_CT_FIN_REPLY)
	return state&uint8(bpfEgCtStateEG_CT_CLOSING) != 0 || state&fins == fins
}

// walkMap reads m entry by entry into key and val, calling visit for each,
// until the map is done or *seen reaches max. The iterator costs two
// syscalls an entry; batch lookups would cut that (not done yet).
func walkMap[K any](m *ebpf.Map, key *K, val *bpfEgCtEntry, max int, seen *int, visit func()) error {
	it := m.Iterate()
	for it.Next(key, val) {
		if *seen >= max {
			return fmt.Errorf("%w (%d entries)", ErrWalkLimit, max)
		}
		visit()
	}
	return it.Err()
}
