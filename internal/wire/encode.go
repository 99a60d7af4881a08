package wire

import (
	"net/netip"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// MarshalRuleSet returns the wire form of FromRuleSet(rs, hash): the same
// bytes proto.Marshal makes of it (fields in number order, zero scalars
// left out), written straight from rs. The controller stores every
// changed node's rule set on every apply (10,000 of them at fleet scale):
// building the messages first and then marshalling them was most of an
// apply's allocation. TestMarshalRuleSetMatchesProto holds the two equal.
func MarshalRuleSet(rs *ruleset.RuleSet, hash string) []byte {
	return marshalRuleSet(rs, hash, true)
}

// MarshalRuleSetOwn is MarshalRuleSet without the ipcache, which
// MarshalIPCache writes: unmarshalled together (the ipcache, then this;
// protobuf merges concatenated messages, repeated fields appended in
// order) they are MarshalRuleSet's message. The ipcache is most of a
// large rule set, alike on the nodes whose workloads have the same peers
// and kept by most changes (of ports, of rules): the controller stores
// each distinct one once.
func MarshalRuleSetOwn(rs *ruleset.RuleSet, hash string) []byte {
	return marshalRuleSet(rs, hash, false)
}

// MarshalIPCache is a RuleSet message holding ipc alone (see
// MarshalRuleSetOwn).
func MarshalIPCache(ipc []ruleset.IPCacheEntry) []byte {
	return appendAll(make([]byte, 0, sizeAll(5, ipc, sizeIPCache)), 5, ipc, sizeIPCache, appendIPCache)
}

func marshalRuleSet(rs *ruleset.RuleSet, hash string, withIPCache bool) []byte {
	n := sizeString(1, rs.Node) + sizeVarint(2, rs.Version) + sizeString(3, hash) +
		sizeAll(4, rs.Endpoints, sizeEndpoint) + sizeAll(6, rs.Entries, sizeEntry) + sizeAll(7, rs.Rules, sizeRule)
	if withIPCache {
		n += sizeAll(5, rs.IPCache, sizeIPCache)
	}
	b := make([]byte, 0, n)
	b = appendString(b, 1, rs.Node)
	b = appendVarint(b, 2, rs.Version)
	b = appendString(b, 3, hash)
	b = appendAll(b, 4, rs.Endpoints, sizeEndpoint, appendEndpoint)
	if withIPCache {
		b = appendAll(b, 5, rs.IPCache, sizeIPCache, appendIPCache)
	}
	b = appendAll(b, 6, rs.Entries, sizeEntry, appendEntry)
	return appendAll(b, 7, rs.Rules, sizeRule, appendRule)
}

// sizeAll is the size of a repeated message field holding items.
func sizeAll[T any](num protowire.Number, items []T, size func(*T) int) int {
	n := 0
	for i := range items {
		n += sizeNested(num, size(&items[i]))
	}
	return n
}

// appendAll appends items as a repeated message field, each length first.
func appendAll[T any](b []byte, num protowire.Number, items []T, size func(*T) int, app func([]byte, *T) []byte) []byte {
	for i := range items {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(size(&items[i])))
		b = app(b, &items[i])
	}
	return b
}

// The messages, field by field as proto/eastguard/v1 numbers them.

func sizeEndpoint(e *ruleset.Endpoint) int {
	n := sizeVarint(1, uint64(e.ID)) + sizeString(2, e.Workload) + sizeString(3, e.Interface) +
		sizeVarint(4, uint64(e.Identity)) + sizeVarint(5, uint64(e.Mode))
	for _, a := range e.Addresses {
		n += sizeNested(6, addrLen(a)) // repeated bytes: every element, empty or not
	}
	return n
}

func appendEndpoint(b []byte, e *ruleset.Endpoint) []byte {
	b = appendVarint(b, 1, uint64(e.ID))
	b = appendString(b, 2, e.Workload)
	b = appendString(b, 3, e.Interface)
	b = appendVarint(b, 4, uint64(e.Identity))
	b = appendVarint(b, 5, uint64(e.Mode))
	for _, a := range e.Addresses {
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = appendAddr(b, a)
	}
	return b
}

// An ipcache entry's address is 4 bytes or 16, as fromIPCache writes it.
func sizeIPCache(e *ruleset.IPCacheEntry) int {
	l := 16
	if e.Prefix.Addr().Is4() {
		l = 4
	}
	return sizeNested(1, l) + sizeVarint(2, uint64(uint32(e.Prefix.Bits()))) + sizeVarint(3, uint64(e.Identity))
}

func appendIPCache(b []byte, e *ruleset.IPCacheEntry) []byte {
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	if a := e.Prefix.Addr(); a.Is4() {
		v := a.As4()
		b = protowire.AppendBytes(b, v[:])
	} else {
		v := a.As16()
		b = protowire.AppendBytes(b, v[:])
	}
	b = appendVarint(b, 2, uint64(uint32(e.Prefix.Bits())))
	return appendVarint(b, 3, uint64(e.Identity))
}

func sizeEntry(e *ruleset.Entry) int {
	n := sizeVarint(1, uint64(e.Endpoint)) + sizeVarint(2, uint64(e.Direction)) + sizeVarint(3, uint64(e.Peer)) +
		sizeVarint(4, uint64(e.Protocol)) + sizeVarint(5, uint64(e.Port)) + sizeVarint(6, uint64(e.EndPort))
	if e.ICMPType != nil { // optional: present even when zero
		n += protowire.SizeTag(7) + protowire.SizeVarint(uint64(*e.ICMPType))
	}
	if e.ICMPCode != nil {
		n += protowire.SizeTag(8) + protowire.SizeVarint(uint64(*e.ICMPCode))
	}
	return n + sizeVarint(9, uint64(e.Verdict)) + sizeVarint(10, uint64(e.Rule))
}

func appendEntry(b []byte, e *ruleset.Entry) []byte {
	b = appendVarint(b, 1, uint64(e.Endpoint))
	b = appendVarint(b, 2, uint64(e.Direction))
	b = appendVarint(b, 3, uint64(e.Peer))
	b = appendVarint(b, 4, uint64(e.Protocol))
	b = appendVarint(b, 5, uint64(e.Port))
	b = appendVarint(b, 6, uint64(e.EndPort))
	if e.ICMPType != nil {
		b = protowire.AppendTag(b, 7, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(*e.ICMPType))
	}
	if e.ICMPCode != nil {
		b = protowire.AppendTag(b, 8, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(*e.ICMPCode))
	}
	b = appendVarint(b, 9, uint64(e.Verdict))
	return appendVarint(b, 10, uint64(e.Rule))
}

func sizeRule(r *ruleset.RuleName) int { return sizeVarint(1, uint64(r.ID)) + sizeString(2, r.Name) }

func appendRule(b []byte, r *ruleset.RuleName) []byte {
	b = appendVarint(b, 1, uint64(r.ID))
	return appendString(b, 2, r.Name)
}

// Proto3 scalars: a zero value is not written.

func sizeVarint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func sizeString(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return sizeNested(num, len(s))
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// sizeNested is the size of a length-delimited field of n bytes.
func sizeNested(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

// addrLen is how many bytes a.AsSlice() has: what fromEndpoints puts on
// the wire (16 for IPv6, IPv4-mapped included; 0 for the zero Addr).
func addrLen(a netip.Addr) int { return a.BitLen() / 8 }

// appendAddr appends a.AsSlice(), length first.
func appendAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return protowire.AppendBytes(b, v[:])
	}
	if !a.IsValid() {
		return protowire.AppendVarint(b, 0)
	}
	v := a.As16()
	return protowire.AppendBytes(b, v[:])
}
