package ruleset

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
)

// randomRuleSet draws a rule set from small pools, so that two draws share
// many items and differ in some.
func randomRuleSet(rng *rand.Rand) *RuleSet {
	rs := &RuleSet{Node: "node-a", Version: rng.Uint64N(100)}
	for id := EndpointID(1); id <= 6; id++ {
		if rng.IntN(3) == 0 {
			continue
		}
		rs.Endpoints = append(rs.Endpoints, Endpoint{ID: id, Workload: "w", Interface: "veth" + string(rune('0'+id)),
			Identity: Identity(256 + rng.IntN(3)), Mode: Mode(rng.IntN(2))})
		if rng.IntN(3) == 0 { // an "interface: auto" endpoint
			rs.Endpoints[len(rs.Endpoints)-1].Addresses = []netip.Addr{netip.AddrFrom4([4]byte{10, 1, 0, byte(id)})}
		}
	}
	for i := range 12 {
		if rng.IntN(2) == 0 {
			continue
		}
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24)
		if i%3 == 0 {
			p = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, byte(i)}), 48)
		}
		rs.IPCache = append(rs.IPCache, IPCacheEntry{Prefix: p, Identity: Identity(256 + rng.IntN(4))})
	}
	for range rng.IntN(30) {
		e := Entry{Endpoint: EndpointID(1 + rng.IntN(6)), Direction: Direction(rng.IntN(2)), Peer: Identity(rng.IntN(3) * 256),
			Verdict: Verdict(1 + rng.IntN(3)), Rule: RuleID(1 + rng.IntN(4))}
		switch rng.IntN(3) {
		case 0:
			e.Protocol = ProtocolTCP
			e.Port = uint16(20 + rng.IntN(5))
		case 1:
			e.Protocol = ProtocolICMP
			e.ICMPType = u8(uint8(rng.IntN(3)))
			if rng.IntN(2) == 0 {
				e.ICMPCode = u8(uint8(rng.IntN(2)))
			}
		}
		rs.Entries = append(rs.Entries, e)
	}
	for id := RuleID(1); id <= 4; id++ {
		if rng.IntN(4) > 0 {
			rs.Rules = append(rs.Rules, RuleName{ID: id, Name: "p/r" + string(rune('0'+rng.IntN(3)))})
		}
	}
	// Hash distinguishes nil from empty slices; a delta cannot carry the
	// difference, and rule sets use nil for "none".
	if len(rs.Endpoints) == 0 {
		rs.Endpoints = nil
	}
	rng.Shuffle(len(rs.Entries), func(i, j int) { rs.Entries[i], rs.Entries[j] = rs.Entries[j], rs.Entries[i] })
	return rs
}

// TestDiffApplyReproduces is the property the control plane relies on:
// applying Diff(a, b) to a gives exactly b (canonical), hashes included.
func TestDiffApplyReproduces(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for iter := range 2000 {
		a, b := randomRuleSet(rng), randomRuleSet(rng)
		d := Diff(a, b)
		d.BaseHash, d.Hash = a.Hash(), b.Hash()
		got, err := a.ApplyDelta(d)
		if err != nil {
			t.Fatalf("iteration %d: ApplyDelta: %v", iter, err)
		}
		want := b.Clone()
		want.Canonicalize()
		want.Entries = nilIfEmpty(want.Entries) // Clone turns nil entries into empty ones
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("iteration %d: ApplyDelta(Diff(a, b)) != b\ngot  %+v\nwant %+v", iter, got, want)
		}
		if got.Hash() != b.Hash() {
			t.Fatalf("iteration %d: hash differs", iter)
		}
		// Canonical inputs take the no-copy path: same delta.
		ca, cb := a.Clone(), b.Clone()
		ca.Canonicalize()
		cb.Canonicalize()
		cd := Diff(ca, cb)
		cd.BaseHash, cd.Hash = d.BaseHash, d.Hash
		if !reflect.DeepEqual(cd, d) {
			t.Fatalf("iteration %d: Diff of canonical copies differs", iter)
		}
		// A canonical base is read in place, not copied: it must come out
		// unchanged, and the result must share nothing with it.
		before := ca.Clone()
		got2, err := ca.ApplyDelta(d)
		if err != nil {
			t.Fatalf("iteration %d: ApplyDelta on a canonical base: %v", iter, err)
		}
		if !reflect.DeepEqual(got2, want) {
			t.Fatalf("iteration %d: ApplyDelta on a canonical base differs\ngot  %+v\nwant %+v", iter, got2, want)
		}
		scribble(got2)
		if !reflect.DeepEqual(ca, before) {
			t.Fatalf("iteration %d: ApplyDelta's result shares memory with its base, or changed it", iter)
		}
		// Clone shares nothing with its source (checked by hash: a
		// shallow Clone would change want alike).
		h := b.Hash()
		scribble(b.Clone())
		if b.Hash() != h {
			t.Fatalf("iteration %d: Clone shares memory with its source", iter)
		}
		if self := Diff(b, b); !self.Empty() {
			t.Fatalf("iteration %d: Diff(b, b) is not empty: %+v", iter, self)
		}
	}
}

func TestDiffIsMinimal(t *testing.T) {
	a := validRuleSet()
	b := a.Clone()
	b.IPCache[0].Identity = 302 // changed: one put, no delete
	b.Entries = append(b.Entries, Entry{Endpoint: 1, Direction: Egress, Peer: 400, Protocol: ProtocolUDP, Port: 53, Verdict: VerdictAllowed, Rule: 1})
	b.Endpoints = b.Endpoints[:1] // endpoint 2 gone
	d := Diff(a, b)
	if len(d.PutIPCache) != 1 || len(d.DeleteIPCache) != 0 || d.PutIPCache[0].Identity != 302 {
		t.Errorf("ipcache delta: put %v delete %v", d.PutIPCache, d.DeleteIPCache)
	}
	if len(d.AddEntries) != 1 || len(d.DeleteEntries) != 0 {
		t.Errorf("entry delta: add %v delete %v", d.AddEntries, d.DeleteEntries)
	}
	if len(d.DeleteEndpoints) != 1 || d.DeleteEndpoints[0] != 2 || len(d.PutEndpoints) != 0 {
		t.Errorf("endpoint delta: put %v delete %v", d.PutEndpoints, d.DeleteEndpoints)
	}
	if d.Len() != 3 {
		t.Errorf("Len = %d, want 3", d.Len())
	}
}

func TestApplyDeltaRefusesWrongBase(t *testing.T) {
	a := validRuleSet()
	b := a.Clone()
	b.Entries[0].Port = 8080
	d := Diff(a, b)

	other := a.Clone()
	other.Entries[0].Port = 9090
	if _, err := other.ApplyDelta(d); !errors.Is(err, ErrDeltaBase) {
		t.Errorf("applying to a set without the entry to delete: %v, want ErrDeltaBase", err)
	}
	d.BaseHash = a.Hash()
	c := a.Clone()
	c.Rules[0].Name = "shop/other"
	if _, err := c.ApplyDelta(d); !errors.Is(err, ErrDeltaBase) {
		t.Errorf("applying to a set with another hash: %v, want ErrDeltaBase", err)
	}
	d.Hash = "sha256:wrong"
	if _, err := a.ApplyDelta(d); !errors.Is(err, ErrDeltaBase) {
		t.Errorf("result hash mismatch: %v, want ErrDeltaBase", err)
	}
	d.Hash = ""
	if _, err := a.ApplyDelta(Delta{DeleteIPCache: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}); !errors.Is(err, ErrDeltaBase) {
		t.Errorf("deleting a missing prefix: %v, want ErrDeltaBase", err)
	}
}

// scribble overwrites every element of rs and what they point to.
func scribble(rs *RuleSet) {
	for i := range rs.Endpoints {
		rs.Endpoints[i].Workload = "scribbled"
		for j := range rs.Endpoints[i].Addresses {
			rs.Endpoints[i].Addresses[j] = netip.IPv6Loopback()
		}
	}
	for i := range rs.IPCache {
		rs.IPCache[i].Identity = 0
	}
	for i := range rs.Entries {
		rs.Entries[i].Port = 1
		if t := rs.Entries[i].ICMPType; t != nil {
			*t = 99
		}
		if c := rs.Entries[i].ICMPCode; c != nil {
			*c = 99
		}
	}
	for i := range rs.Rules {
		rs.Rules[i].Name = "scribbled"
	}
}

// TestApplyDeltaFromChecksTheWholeHash: applied with the base's hash part,
// a delta gives ApplyDelta's result, and a base hash or a promised hash
// that is wrong is still refused (the part saves encoding, not checking).
func TestApplyDeltaFromChecksTheWholeHash(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for i := range 500 {
		base := randomHashRuleSet(rng, rng.IntN(20))
		base.Canonicalize()
		next := base.Clone()
		next.Entries = randomHashRuleSet(rng, rng.IntN(20)).Entries
		next.Canonicalize()
		d := Diff(base, next)
		d.Node, d.Version, d.Hash = next.Node, base.Version+1, next.Hash()
		_, part := base.HashFrom(nil)
		got, gotPart, err := base.ApplyDeltaFrom(d, part)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if got.Hash() != next.Hash() || gotPart == nil {
			t.Fatalf("case %d: the result hashes %s (part %v), want %s and a part", i, got.Hash(), gotPart, next.Hash())
		}
		d.BaseHash = "sha256:0"
		if _, _, err := base.ApplyDeltaFrom(d, part); !errors.Is(err, ErrDeltaBase) {
			t.Fatalf("case %d: a wrong base hash gave %v, want ErrDeltaBase", i, err)
		}
		d.BaseHash = base.Hash()
		if _, _, err := base.ApplyDeltaFrom(d, part); err != nil {
			t.Fatalf("case %d: the right base hash, resumed from the part: %v", i, err)
		}
		d.Hash = "sha256:0"
		if _, _, err := base.ApplyDeltaFrom(d, part); !errors.Is(err, ErrDeltaBase) {
			t.Fatalf("case %d: a wrong promised hash gave %v, want ErrDeltaBase", i, err)
		}
	}
}
