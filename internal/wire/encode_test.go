package wire

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// randomRuleSet makes a rule set with every field used, zero values and
// large ones among them (varints of every length), optional ICMP fields
// set to zero and unset, IPv4, IPv6 and IPv4-mapped addresses.
func randomRuleSet(r *rand.Rand, n int) *ruleset.RuleSet {
	pick := func(vals ...uint64) uint64 { return vals[r.IntN(len(vals))] }
	addr := func() netip.Addr {
		var b [16]byte
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		switch r.IntN(3) {
		case 0:
			return netip.AddrFrom4([4]byte(b[:4]))
		case 1:
			return netip.AddrFrom16(b)
		}
		return netip.AddrFrom16(netip.AddrFrom4([4]byte(b[:4])).As16()) // IPv4-mapped
	}
	rs := &ruleset.RuleSet{Node: pick2(r, "", "node-ü-1"), Version: pick(0, 1, 300, 1<<40)}
	for i := range r.IntN(n) {
		e := ruleset.Endpoint{ID: ruleset.EndpointID(pick(0, 1, 200, 1<<31)), Workload: fmt.Sprintf("w%d", i),
			Interface: pick2(r, "", "auto", "eth0"), Identity: ruleset.Identity(pick(0, 127, 128, 1<<24)), Mode: ruleset.Mode(pick(0, 1))}
		for range r.IntN(3) {
			e.Addresses = append(e.Addresses, addr())
		}
		if r.IntN(8) == 0 {
			e.Addresses = append(e.Addresses, netip.Addr{}) // AsSlice: empty
		}
		rs.Endpoints = append(rs.Endpoints, e)
	}
	for range r.IntN(n) {
		a := addr()
		rs.IPCache = append(rs.IPCache, ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(a, r.IntN(a.BitLen()+1)), Identity: ruleset.Identity(pick(0, 1, 1<<20))})
	}
	for range r.IntN(n) {
		e := ruleset.Entry{Endpoint: ruleset.EndpointID(pick(0, 5, 1<<20)), Direction: ruleset.Direction(pick(0, 1)),
			Peer: ruleset.Identity(pick(0, 1000, 1<<30)), Protocol: ruleset.Protocol(pick(0, 6, 17, 58)),
			Port: uint16(pick(0, 22, 65535)), EndPort: uint16(pick(0, 1024)), Verdict: ruleset.Verdict(pick(0, 1, 2)),
			Rule: ruleset.RuleID(pick(0, 7, 1<<16))}
		if r.IntN(3) == 0 {
			v := uint8(pick(0, 8, 255))
			e.ICMPType = &v
		}
		if r.IntN(3) == 0 {
			v := uint8(pick(0, 3))
			e.ICMPCode = &v
		}
		rs.Entries = append(rs.Entries, e)
	}
	for i := range r.IntN(n) {
		rs.Rules = append(rs.Rules, ruleset.RuleName{ID: ruleset.RuleID(pick(0, 1, 1<<16)), Name: pick2(r, "", fmt.Sprintf("ns/rule-%d", i))})
	}
	return rs
}

func pick2(r *rand.Rand, vals ...string) string { return vals[r.IntN(len(vals))] }

// TestMarshalRuleSetMatchesProto: the direct encoder writes the bytes
// proto.Marshal writes of the messages FromRuleSet builds, for rule sets
// using every field, and they decode to the same rule set.
func TestMarshalRuleSetMatchesProto(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		rs := randomRuleSet(r, 1+i%40)
		hash := pick2(r, "", "sha256:abc")
		want, err := proto.Marshal(FromRuleSet(rs, hash))
		if err != nil {
			t.Fatal(err)
		}
		got := MarshalRuleSet(rs, hash)
		if !bytes.Equal(got, want) {
			t.Fatalf("rule set %d: MarshalRuleSet differs from proto.Marshal\n got %x\nwant %x", i, got, want)
		}
		if cap(got) != len(got) {
			t.Fatalf("rule set %d: sized %d, wrote %d", i, cap(got), len(got))
		}
	}
}

// TestMarshalRuleSetOwn: the ipcache part (MarshalIPCache), then the node's own,
// unmarshalled together decode to the message MarshalRuleSet writes; the
// own part holds no ipcache entry, and the ipcache part nothing else.
func TestMarshalRuleSetOwn(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 500 {
		rs := randomRuleSet(r, 1+i%40)
		own, ipc := MarshalRuleSetOwn(rs, "sha256:abc"), MarshalIPCache(rs.IPCache)
		var whole, got, ownOnly, ipcOnly pb.RuleSet
		if err := proto.Unmarshal(MarshalRuleSet(rs, "sha256:abc"), &whole); err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(append(slices.Clone(ipc), own...), &got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&got, &whole) {
			t.Fatalf("rule set %d: the two parts decode to\n%v\nwant\n%v", i, &got, &whole)
		}
		if err := proto.Unmarshal(own, &ownOnly); err != nil || len(ownOnly.GetIpcache()) != 0 {
			t.Fatalf("rule set %d: the own part holds %d ipcache entries (%v), want none", i, len(ownOnly.GetIpcache()), err)
		}
		if err := proto.Unmarshal(ipc, &ipcOnly); err != nil || !proto.Equal(&ipcOnly, &pb.RuleSet{Ipcache: whole.GetIpcache()}) {
			t.Fatalf("rule set %d: the ipcache part is %v (%v), want the ipcache alone", i, &ipcOnly, err)
		}
	}
}

// BenchmarkMarshalRuleSet: a node's rule set as the controller stores it
// (200 endpoints, 2,000 ipcache entries, 2,000 entries), the direct
// encoder against building the messages and proto.Marshal.
func BenchmarkMarshalRuleSet(b *testing.B) {
	rs := &ruleset.RuleSet{Node: "node-1", Version: 42}
	for i := range 200 {
		rs.Endpoints = append(rs.Endpoints, ruleset.Endpoint{ID: ruleset.EndpointID(i + 1), Workload: fmt.Sprintf("app-%d", i), Interface: "auto", Identity: ruleset.Identity(1000 + i)})
	}
	for i := range 2000 {
		rs.IPCache = append(rs.IPCache, ruleset.IPCacheEntry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)}), 32), Identity: ruleset.Identity(1000 + i%200)})
		rs.Entries = append(rs.Entries, ruleset.Entry{Endpoint: ruleset.EndpointID(i%200 + 1), Peer: ruleset.Identity(1000 + i%200), Protocol: 6, Port: 443, Verdict: 1, Rule: ruleset.RuleID(i%20 + 1)})
	}
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = MarshalRuleSet(rs, "")
		}
	})
	b.Run("proto", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := proto.Marshal(FromRuleSet(rs, "")); err != nil {
				b.Fatal(err)
			}
		}
	})
}
