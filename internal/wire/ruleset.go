package wire

import (
	"errors"
	"fmt"
	"net/netip"

	pb "github.com/eastguard/eastguard/proto/eastguard/v1"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Conversions between internal/ruleset and the wire. To the wire cannot
// fail; from the wire checks that every number fits its Go type and every
// address is 4 or 16 bytes, naming the element at fault. Structural checks
// are ruleset.Validate's, which the agent runs on every result.

// FromRuleSet returns rs on the wire, with hash (rs.Hash(), computed by the
// caller, which usually has it already).
func FromRuleSet(rs *ruleset.RuleSet, hash string) *pb.RuleSet {
	m := &pb.RuleSet{
		Node:      rs.Node,
		Version:   rs.Version,
		Hash:      hash,
		Endpoints: fromEndpoints(rs.Endpoints),
		Ipcache:   fromIPCache(rs.IPCache),
		Entries:   fromEntries(rs.Entries),
		Rules:     fromRules(rs.Rules),
	}
	return m
}

// ToRuleSet returns the rule set m carries. Empty lists are nil, as the
// compiler makes them.
func ToRuleSet(m *pb.RuleSet) (*ruleset.RuleSet, error) {
	rs := &ruleset.RuleSet{Node: m.GetNode(), Version: m.GetVersion()}
	var err error
	if rs.Endpoints, err = toEndpoints(m.GetEndpoints(), "endpoints"); err != nil {
		return nil, err
	}
	if rs.IPCache, err = toIPCache(m.GetIpcache(), "ipcache"); err != nil {
		return nil, err
	}
	if rs.Entries, err = toEntries(m.GetEntries(), "entries"); err != nil {
		return nil, err
	}
	if rs.Rules, err = toRules(m.GetRules(), "rules"); err != nil {
		return nil, err
	}
	return rs, nil
}

// FromDelta returns d on the wire; baseVersion is the version of the rule
// set it applies to.
func FromDelta(d *ruleset.Delta, baseVersion uint64) *pb.RuleSetDelta {
	m := &pb.RuleSetDelta{
		Node:          d.Node,
		Version:       d.Version,
		BaseVersion:   baseVersion,
		BaseHash:      d.BaseHash,
		Hash:          d.Hash,
		PutEndpoints:  fromEndpoints(d.PutEndpoints),
		PutIpcache:    fromIPCache(d.PutIPCache),
		AddEntries:    fromEntries(d.AddEntries),
		DeleteEntries: fromEntries(d.DeleteEntries),
		PutRules:      fromRules(d.PutRules),
	}
	for _, id := range d.DeleteEndpoints {
		m.DeleteEndpoints = append(m.DeleteEndpoints, uint32(id))
	}
	for _, p := range d.DeleteIPCache {
		m.DeleteIpcache = append(m.DeleteIpcache, &pb.Prefix{Addr: p.Addr().AsSlice(), Bits: uint32(p.Bits())})
	}
	for _, id := range d.DeleteRules {
		m.DeleteRules = append(m.DeleteRules, uint32(id))
	}
	return m
}

// ToDelta returns the delta m carries.
func ToDelta(m *pb.RuleSetDelta) (*ruleset.Delta, error) {
	d := &ruleset.Delta{Node: m.GetNode(), Version: m.GetVersion(), BaseHash: m.GetBaseHash(), Hash: m.GetHash()}
	var err error
	if d.PutEndpoints, err = toEndpoints(m.GetPutEndpoints(), "putEndpoints"); err != nil {
		return nil, err
	}
	if d.PutIPCache, err = toIPCache(m.GetPutIpcache(), "putIPCache"); err != nil {
		return nil, err
	}
	if d.AddEntries, err = toEntries(m.GetAddEntries(), "addEntries"); err != nil {
		return nil, err
	}
	if d.DeleteEntries, err = toEntries(m.GetDeleteEntries(), "deleteEntries"); err != nil {
		return nil, err
	}
	if d.PutRules, err = toRules(m.GetPutRules(), "putRules"); err != nil {
		return nil, err
	}
	for _, id := range m.GetDeleteEndpoints() {
		d.DeleteEndpoints = append(d.DeleteEndpoints, ruleset.EndpointID(id))
	}
	for i, p := range m.GetDeleteIpcache() {
		pfx, err := toPrefix(p.GetAddr(), p.GetBits())
		if err != nil {
			return nil, fmt.Errorf("deleteIPCache[%d]: %w", i, err)
		}
		d.DeleteIPCache = append(d.DeleteIPCache, pfx)
	}
	for _, id := range m.GetDeleteRules() {
		d.DeleteRules = append(d.DeleteRules, ruleset.RuleID(id))
	}
	return d, nil
}

func fromEndpoints(eps []ruleset.Endpoint) []*pb.Endpoint {
	if len(eps) == 0 {
		return nil
	}
	out := make([]*pb.Endpoint, len(eps))
	for i, e := range eps {
		out[i] = &pb.Endpoint{Id: uint32(e.ID), Workload: e.Workload, Interface: e.Interface, Identity: uint32(e.Identity), Mode: uint32(e.Mode)}
		for _, a := range e.Addresses {
			out[i].Addresses = append(out[i].Addresses, a.AsSlice())
		}
	}
	return out
}

func fromIPCache(c []ruleset.IPCacheEntry) []*pb.IPCacheEntry {
	if len(c) == 0 {
		return nil
	}
	// One allocation for all the messages and one for all the addresses:
	// the ipcache can be large, and a store write encodes every changed
	// node's.
	msgs := make([]pb.IPCacheEntry, len(c))
	out := make([]*pb.IPCacheEntry, len(c))
	n := 0
	for _, e := range c {
		n += e.Prefix.Addr().BitLen() / 8
	}
	addrs := make([]byte, 0, n)
	for i, e := range c {
		start := len(addrs)
		if a := e.Prefix.Addr(); a.Is4() {
			b := a.As4()
			addrs = append(addrs, b[:]...)
		} else {
			b := a.As16() // as AsSlice: 16 bytes for IPv6, IPv4-mapped included
			addrs = append(addrs, b[:]...)
		}
		msgs[i].Addr, msgs[i].Bits, msgs[i].Identity = addrs[start:len(addrs):len(addrs)], uint32(e.Prefix.Bits()), uint32(e.Identity)
		out[i] = &msgs[i]
	}
	return out
}

func fromEntries(entries []ruleset.Entry) []*pb.Entry {
	if len(entries) == 0 {
		return nil
	}
	msgs := make([]pb.Entry, len(entries))
	out := make([]*pb.Entry, len(entries))
	for i, e := range entries {
		m := &msgs[i]
		m.Endpoint, m.Direction, m.Peer = uint32(e.Endpoint), uint32(e.Direction), uint32(e.Peer)
		m.Protocol, m.Port, m.EndPort = uint32(e.Protocol), uint32(e.Port), uint32(e.EndPort)
		m.Verdict, m.Rule = uint32(e.Verdict), uint32(e.Rule)
		if e.ICMPType != nil {
			v := uint32(*e.ICMPType)
			m.IcmpType = &v
		}
		if e.ICMPCode != nil {
			v := uint32(*e.ICMPCode)
			m.IcmpCode = &v
		}
		out[i] = m
	}
	return out
}

func fromRules(rules []ruleset.RuleName) []*pb.RuleName {
	if len(rules) == 0 {
		return nil
	}
	out := make([]*pb.RuleName, len(rules))
	for i, r := range rules {
		out[i] = &pb.RuleName{Id: uint32(r.ID), Name: r.Name}
	}
	return out
}

var errRange = errors.New("out of range")

// small checks that v fits in bits bits.
func small(v uint32, bits int, field string) error {
	if v >= 1<<bits {
		return fmt.Errorf("%s: %d %w (max %d)", field, v, errRange, uint32(1)<<bits-1)
	}
	return nil
}

func toEndpoints(in []*pb.Endpoint, field string) ([]ruleset.Endpoint, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]ruleset.Endpoint, len(in))
	for i, m := range in {
		if err := small(m.GetMode(), 8, "mode"); err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		out[i] = ruleset.Endpoint{
			ID: ruleset.EndpointID(m.GetId()), Workload: m.GetWorkload(), Interface: m.GetInterface(),
			Identity: ruleset.Identity(m.GetIdentity()), Mode: ruleset.Mode(m.GetMode()),
		}
		for j, b := range m.GetAddresses() {
			a, ok := netip.AddrFromSlice(b)
			if !ok {
				return nil, fmt.Errorf("%s[%d].addresses[%d]: address of %d bytes", field, i, j, len(b))
			}
			out[i].Addresses = append(out[i].Addresses, a)
		}
	}
	return out, nil
}

func toIPCache(in []*pb.IPCacheEntry, field string) ([]ruleset.IPCacheEntry, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]ruleset.IPCacheEntry, len(in))
	for i, m := range in {
		p, err := toPrefix(m.GetAddr(), m.GetBits())
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		out[i] = ruleset.IPCacheEntry{Prefix: p, Identity: ruleset.Identity(m.GetIdentity())}
	}
	return out, nil
}

func toPrefix(addr []byte, bits uint32) (netip.Prefix, error) {
	a, ok := netip.AddrFromSlice(addr)
	if !ok {
		return netip.Prefix{}, fmt.Errorf("address of %d bytes (want 4 or 16)", len(addr))
	}
	if bits > uint32(a.BitLen()) {
		return netip.Prefix{}, fmt.Errorf("prefix length %d %w for %s", bits, errRange, a)
	}
	return netip.PrefixFrom(a, int(bits)), nil
}

func toEntries(in []*pb.Entry, field string) ([]ruleset.Entry, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]ruleset.Entry, len(in))
	for i, m := range in {
		if err := errors.Join(
			small(m.GetDirection(), 8, "direction"), small(m.GetProtocol(), 8, "protocol"),
			small(m.GetVerdict(), 8, "verdict"), small(m.GetPort(), 16, "port"), small(m.GetEndPort(), 16, "endPort"),
		); err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
		}
		e := ruleset.Entry{
			Endpoint: ruleset.EndpointID(m.GetEndpoint()), Direction: ruleset.Direction(m.GetDirection()),
			Peer: ruleset.Identity(m.GetPeer()), Protocol: ruleset.Protocol(m.GetProtocol()),
			Port: uint16(m.GetPort()), EndPort: uint16(m.GetEndPort()),
			Verdict: ruleset.Verdict(m.GetVerdict()), Rule: ruleset.RuleID(m.GetRule()),
		}
		if m.IcmpType != nil {
			if err := small(*m.IcmpType, 8, "icmpType"); err != nil {
				return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
			}
			v := uint8(*m.IcmpType)
			e.ICMPType = &v
		}
		if m.IcmpCode != nil {
			if err := small(*m.IcmpCode, 8, "icmpCode"); err != nil {
				return nil, fmt.Errorf("%s[%d]: %w", field, i, err)
			}
			v := uint8(*m.IcmpCode)
			e.ICMPCode = &v
		}
		out[i] = e
	}
	return out, nil
}

func toRules(in []*pb.RuleName, field string) ([]ruleset.RuleName, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]ruleset.RuleName, len(in))
	for i, m := range in {
		if m.GetName() == "" {
			return nil, fmt.Errorf("%s[%d]: rule %d has no name", field, i, m.GetId())
		}
		out[i] = ruleset.RuleName{ID: ruleset.RuleID(m.GetId()), Name: m.GetName()}
	}
	return out, nil
}
