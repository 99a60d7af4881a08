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
func (d *Datapath) Conntrack(max int, fn func(c *Conn)) error {
	seen := 0
	var c Conn
	visit := func(local, remote netip.Addr, t *bpfEgCtTail, e *bpfEgCtEntry) {
		seen++
		if t.Kind != uint8(bpfEgCtKindEG_CT_KIND_PORTS) {
			return
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
	err := walkMap(d.objs.EgCt4, &k4, &val, max, &seen, func() {
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
