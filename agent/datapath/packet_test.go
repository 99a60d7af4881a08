package datapath

import (
	"encoding/binary"
	"net/netip"
)

// Crafted frames for BPF_PROG_TEST_RUN. Checksums are left zero: the
// datapath never verifies them.

const (
	ethIPv4 = 0x0800
	ethIPv6 = 0x86dd
	ethARP  = 0x0806
	ethVLAN = 0x8100

	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

func ethFrame(ethertype uint16, l3 []byte) []byte {
	b := make([]byte, 14, 14+len(l3))
	copy(b[0:6], []byte{0x02, 0, 0, 0, 0, 0x01})
	copy(b[6:12], []byte{0x02, 0, 0, 0, 0, 0x02})
	binary.BigEndian.PutUint16(b[12:], ethertype)
	return append(b, l3...)
}

// vlanFrame wraps l3 in one 802.1Q tag.
func vlanFrame(vid uint16, ethertype uint16, l3 []byte) []byte {
	b := ethFrame(ethVLAN, nil)
	b = binary.BigEndian.AppendUint16(b, vid)
	b = binary.BigEndian.AppendUint16(b, ethertype)
	return append(b, l3...)
}

type v4opts struct {
	id       uint16
	fragOff  uint16 // in 8-byte units
	more     bool   // MF
	ihlWords uint8  // 0 = 5
	totLen   int    // 0 = computed
}

func ipv4(src, dst string, proto uint8, payload []byte, o v4opts) []byte {
	ihl := o.ihlWords
	if ihl == 0 {
		ihl = 5
	}
	hlen := int(max(ihl, 5)) * 4
	h := make([]byte, hlen)
	h[0] = 0x40 | ihl
	tot := o.totLen
	if tot == 0 {
		tot = hlen + len(payload)
	}
	binary.BigEndian.PutUint16(h[2:], uint16(tot))
	binary.BigEndian.PutUint16(h[4:], o.id)
	frag := o.fragOff & 0x1fff
	if o.more {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(h[6:], frag)
	h[8] = 64
	h[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	return append(h, payload...)
}

// ipv6 builds a header; payload starts with whatever nexthdr says
// (extension headers included).
func ipv6(src, dst string, nexthdr uint8, payload []byte) []byte {
	return ipv6Hops(src, dst, nexthdr, 64, payload)
}

// ipv6Hops is ipv6 with a hop limit.
func ipv6Hops(src, dst string, nexthdr, hops uint8, payload []byte) []byte {
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h[6] = nexthdr
	h[7] = hops
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(h, payload...)
}

// ext6 is an IPv6 options-style extension header (hop-by-hop, destination
// options, routing) of 8 bytes followed by rest.
func ext6(next uint8, rest []byte) []byte {
	h := []byte{next, 0, 1, 4, 0, 0, 0, 0} // PadN option filling 6 bytes
	return append(h, rest...)
}

// frag6 is an IPv6 fragment header followed by rest.
func frag6(next uint8, offset8 uint16, more bool, id uint32, rest []byte) []byte {
	h := make([]byte, 8)
	h[0] = next
	fo := offset8 << 3
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(h[2:], fo)
	binary.BigEndian.PutUint32(h[4:], id)
	return append(h, rest...)
}

func tcp(sport, dport uint16, flags uint8) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	h[12] = 5 << 4
	h[13] = flags
	binary.BigEndian.PutUint16(h[14:], 65535)
	return h
}

func udp(sport, dport uint16) []byte {
	h := make([]byte, 8, 16)
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], 16)
	return append(h, "payload!"...)
}

func icmp(typ, code uint8, id uint16, payload []byte) []byte {
	h := make([]byte, 8)
	h[0], h[1] = typ, code
	binary.BigEndian.PutUint16(h[4:], id)
	binary.BigEndian.PutUint16(h[6:], 1)
	return append(h, payload...)
}

func tcp4(src, dst string, sport, dport uint16, flags uint8) []byte {
	return ethFrame(ethIPv4, ipv4(src, dst, protoTCP, tcp(sport, dport, flags), v4opts{}))
}

func tcp6(src, dst string, sport, dport uint16, flags uint8) []byte {
	return ethFrame(ethIPv6, ipv6(src, dst, protoTCP, tcp(sport, dport, flags)))
}

func udp4(src, dst string, sport, dport uint16) []byte {
	return ethFrame(ethIPv4, ipv4(src, dst, protoUDP, udp(sport, dport), v4opts{}))
}

func udp6(src, dst string, sport, dport uint16) []byte {
	return ethFrame(ethIPv6, ipv6(src, dst, protoUDP, udp(sport, dport)))
}

func icmp4(src, dst string, typ, code uint8, id uint16) []byte {
	return ethFrame(ethIPv4, ipv4(src, dst, protoICMP, icmp(typ, code, id, nil), v4opts{}))
}

func icmp6(src, dst string, typ, code uint8, id uint16) []byte {
	return ethFrame(ethIPv6, ipv6(src, dst, protoICMPv6, icmp(typ, code, id, nil)))
}

// nd6 is an ICMPv6 neighbour discovery or MLD message of type typ with
// the given hop limit; target goes where NS and NA carry it.
func nd6(src, dst string, typ, hops uint8, target string) []byte {
	t := netip.MustParseAddr(target).As16()
	return ethFrame(ethIPv6, ipv6Hops(src, dst, protoICMPv6, hops, icmp(typ, 0, 0, t[:])))
}

func arpFrame() []byte {
	return ethFrame(ethARP, make([]byte, 28))
}
