package ruleset

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// recorder is a hash.Hash that keeps what was written.
type recorder struct{ bytes.Buffer }

func (r *recorder) Sum(b []byte) []byte { return b }
func (r *recorder) Size() int           { return 0 }
func (r *recorder) BlockSize() int      { return 1 }

func randomHashRuleSet(rng *rand.Rand, entries int) *RuleSet {
	names := []string{"web", "db-<1>", "a&b", "ünïcode", "\u2028sep", "bad\xffutf8", `q"uote\`}
	rs := &RuleSet{Node: names[rng.IntN(len(names))], Version: uint64(rng.IntN(5))}
	for i := range rng.IntN(4) {
		rs.Endpoints = append(rs.Endpoints, Endpoint{ID: EndpointID(i + 1), Workload: names[rng.IntN(len(names))],
			Interface: []string{"", "veth0", InterfaceAuto}[rng.IntN(3)], Identity: Identity(300 + i), Mode: Mode(rng.IntN(2))})
		if ep := &rs.Endpoints[len(rs.Endpoints)-1]; ep.Auto() {
			ep.Addresses = []netip.Addr{netip.MustParseAddr("10.250.1.2"), netip.MustParseAddr("fd0e::2")}[:1+rng.IntN(2)]
		}
	}
	for i := range rng.IntN(5) {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(i), 0}), 24)
		if i%2 == 1 {
			p = netip.MustParsePrefix(fmt.Sprintf("fd0e:%d::/64", i))
		}
		rs.IPCache = append(rs.IPCache, IPCacheEntry{Prefix: p, Identity: Identity(300 + i)})
	}
	protos := []Protocol{ProtocolAny, ProtocolTCP, ProtocolUDP, ProtocolICMP, ProtocolICMPv6}
	for range entries {
		e := Entry{Endpoint: EndpointID(1 + rng.IntN(3)), Direction: Direction(rng.IntN(2)), Peer: Identity(rng.IntN(400)),
			Protocol: protos[rng.IntN(len(protos))], Verdict: Verdict(1 + rng.IntN(3)), Rule: RuleID(1 + rng.IntN(9))}
		switch {
		case e.Protocol.HasPorts():
			e.Port = uint16(rng.IntN(3) * 443)
			if e.Port != 0 && rng.IntN(2) == 0 {
				e.EndPort = e.Port + 10
			}
		case e.Protocol.IsICMP() && rng.IntN(2) == 0:
			t := uint8(rng.IntN(256))
			e.ICMPType = &t
			if rng.IntN(2) == 0 {
				c := uint8(0)
				e.ICMPCode = &c
			}
		}
		rs.Entries = append(rs.Entries, e)
	}
	for i := range rng.IntN(3) {
		rs.Rules = append(rs.Rules, RuleName{ID: RuleID(i + 1), Name: names[rng.IntN(len(names))] + "/r"})
	}
	return rs
}

// TestHashEncoderMatchesJSON: the direct encoder writes exactly the bytes
// encoding/json writes, so hashes stored by earlier versions stay valid.
func TestHashEncoderMatchesJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 2000 {
		rs := randomHashRuleSet(rng, rng.IntN(20))
		c := rs.Clone()
		c.Version = 0
		c.Canonicalize()
		for _, s := range []*[]Endpoint{&c.Endpoints} {
			if len(*s) == 0 {
				*s = nil
			}
		}
		if len(c.IPCache) == 0 {
			c.IPCache = nil
		}
		if len(c.Entries) == 0 {
			c.Entries = nil
		}
		if len(c.Rules) == 0 {
			c.Rules = nil
		}
		want, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		var got recorder
		if err := encodeCanonical(&got, c); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("case %d differs:\n got  %s\n want %s", i, got.Bytes(), want)
		}
		if !c.isCanonical() {
			t.Fatalf("case %d: a canonicalized rule set is not canonical", i)
		}
		if rs.Hash() != c.Hash() {
			t.Fatalf("case %d: hash depends on order or version", i)
		}
	}
}

// TestHashFromMatchesHash: a hash resumed from an earlier version's part
// is the rule set's Hash, whether the next version keeps the node,
// endpoints and ipcache (resumed) or changes any of them in any field
// (hashed whole: a part that matched wrongly would give another hash).
func TestHashFromMatchesHash(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	resumed := 0
	for i := range 3000 {
		prev := randomHashRuleSet(rng, rng.IntN(20))
		prev.Canonicalize()
		prevHash, part := prev.HashFrom(nil)
		if prevHash != prev.Hash() || part == nil {
			t.Fatalf("case %d: a canonical rule set's HashFrom(nil) gave %s and part %v, want %s and a part", i, prevHash, part, prev.Hash())
		}
		next := prev.Clone()
		other := randomHashRuleSet(rng, rng.IntN(20))
		if rng.IntN(4) > 0 {
			other.Canonicalize() // else its entries may be out of order: hashed whole
		}
		next.Entries, next.Rules = other.Entries, other.Rules
		switch rng.IntN(8) {
		case 0:
			next.Node += "x"
		case 1:
			if len(next.IPCache) > 0 {
				next.IPCache[rng.IntN(len(next.IPCache))].Identity++
			}
		case 2:
			if len(next.IPCache) > 0 {
				next.IPCache = next.IPCache[1:]
			}
		case 3:
			if len(next.Endpoints) > 0 {
				ep := &next.Endpoints[rng.IntN(len(next.Endpoints))]
				[]func(){func() { ep.Mode ^= 1 }, func() { ep.Workload += "x" }, func() { ep.Interface += "x" },
					func() { ep.Identity++ }, func() { ep.Addresses = append(ep.Addresses, netip.MustParseAddr("10.9.9.9")) }}[rng.IntN(5)]()
			}
		case 4:
			next.Endpoints = nil
		}
		got, nextPart := next.HashFrom(part)
		if want := next.Hash(); got != want {
			t.Fatalf("case %d: HashFrom(the previous part) = %s, Hash() = %s", i, got, want)
		}
		if nextPart != nil && &nextPart.state[0] == &part.state[0] {
			resumed++
		}
		if nextPart != nil && (len(next.IPCache) > 0 && &nextPart.ipcache[0] != &next.IPCache[0] ||
			len(next.Endpoints) > 0 && &nextPart.endpoints[0] != &next.Endpoints[0]) {
			t.Fatalf("case %d: the part does not refer to the rule set's own slices (it would keep another's alive)", i)
		}
		if next.isCanonical() != (nextPart != nil) {
			t.Fatalf("case %d: canonical %v, but part %v", i, next.isCanonical(), nextPart)
		}
	}
	if resumed < 1000 {
		t.Fatalf("only %d of 3000 hashes resumed from the previous part", resumed)
	}
}

func TestHashEmptyAndNil(t *testing.T) {
	a := &RuleSet{Node: "n"}
	b := &RuleSet{Node: "n", Endpoints: []Endpoint{}, IPCache: []IPCacheEntry{}, Entries: []Entry{}, Rules: []RuleName{}}
	if a.Hash() != b.Hash() {
		t.Error("nil and empty slices hash differently")
	}
}

func BenchmarkHash(b *testing.B) {
	rs := randomHashRuleSet(rand.New(rand.NewPCG(5, 6)), 100000)
	rs.Canonicalize()
	b.Run("canonical-100k-entries", func(b *testing.B) {
		for b.Loop() {
			rs.Hash()
		}
	})
	shuffled := rs.Clone()
	rand.New(rand.NewPCG(7, 8)).Shuffle(len(shuffled.Entries), func(i, j int) {
		shuffled.Entries[i], shuffled.Entries[j] = shuffled.Entries[j], shuffled.Entries[i]
	})
	b.Run("unsorted-100k-entries", func(b *testing.B) {
		for b.Loop() {
			shuffled.Hash()
		}
	})
}

// BenchmarkHashFrom: a node's next version that keeps its endpoints and
// ipcache (201 addresses, as in BenchmarkPropagation10000Agents) hashed
// whole, and resumed from the last version's part.
func BenchmarkHashFrom(b *testing.B) {
	rs := &RuleSet{Node: "node-00001", Endpoints: []Endpoint{{ID: 1, Workload: "w00001", Interface: "eg-w00001", Identity: 300}}}
	for i := range 201 {
		rs.IPCache = append(rs.IPCache, IPCacheEntry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100, byte(i / 256), byte(i)}), 32), Identity: Identity(300 + i/100)})
	}
	for i := range 4 {
		rs.Entries = append(rs.Entries, Entry{Endpoint: 1, Direction: Direction(i % 2), Peer: Identity(300 + i), Protocol: ProtocolTCP, Port: 8001, Verdict: VerdictAllowed, Rule: RuleID(1 + i)})
	}
	rs.Rules = []RuleName{{ID: 1, Name: "a000-to-a001"}, {ID: 2, Name: "a001-to-a002"}, {ID: 3, Name: "a002-to-a003"}, {ID: 4, Name: "a003-to-a004"}}
	rs.Canonicalize()
	_, part := rs.HashFrom(nil)
	b.Run("whole", func(b *testing.B) {
		for b.Loop() {
			rs.Hash()
		}
	})
	b.Run("resumed", func(b *testing.B) {
		for b.Loop() {
			rs.HashFrom(part)
		}
	})
}
