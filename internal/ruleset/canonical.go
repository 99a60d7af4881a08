package ruleset

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
)

// Canonicalize sorts every slice into a fixed order and removes duplicate
// entries, so that equal rule sets have equal encodings and equal hashes.
func (rs *RuleSet) Canonicalize() {
	slices.SortFunc(rs.Endpoints, func(a, b Endpoint) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(rs.IPCache, func(a, b IPCacheEntry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits())
	})
	slices.SortFunc(rs.Entries, CompareEntries)
	rs.Entries = slices.CompactFunc(rs.Entries, func(a, b Entry) bool { return CompareEntries(a, b) == 0 })
	slices.SortFunc(rs.Rules, func(a, b RuleName) int { return cmp.Compare(a.ID, b.ID) })
}

// CompareEntries orders entries by endpoint, direction, peer, protocol, port
// range, verdict and rule.
func CompareEntries(a, b Entry) int {
	alo, ahi := a.PortRange()
	blo, bhi := b.PortRange()
	return cmp.Or(
		cmp.Compare(a.Endpoint, b.Endpoint),
		cmp.Compare(a.Direction, b.Direction),
		cmp.Compare(a.Peer, b.Peer),
		cmp.Compare(a.Protocol, b.Protocol),
		cmp.Compare(alo, blo),
		cmp.Compare(ahi, bhi),
		cmp.Compare(a.Verdict, b.Verdict),
		cmp.Compare(a.Rule, b.Rule),
	)
}

// Hash returns a content hash of the rule set ("sha256:<hex>"), independent
// of Version and of the order of its slices.
func (rs *RuleSet) Hash() string {
	c := rs.Clone()
	c.Version = 0
	c.Canonicalize()
	// nil and empty mean the same; JSON would tell them apart.
	if len(c.Endpoints) == 0 {
		c.Endpoints = nil
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
	b, err := json.Marshal(c)
	if err != nil {
		// Only invalid enum values fail to marshal; hash what we can so the
		// caller still gets a value that differs from every valid set.
		b = []byte(err.Error())
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Clone returns a deep copy.
func (rs *RuleSet) Clone() *RuleSet {
	c := *rs
	c.Endpoints = slices.Clone(rs.Endpoints)
	c.IPCache = slices.Clone(rs.IPCache)
	c.Rules = slices.Clone(rs.Rules)
	c.Entries = make([]Entry, len(rs.Entries))
	for i, e := range rs.Entries {
		if e.ICMPType != nil {
			t := *e.ICMPType
			e.ICMPType = &t
		}
		if e.ICMPCode != nil {
			cd := *e.ICMPCode
			e.ICMPCode = &cd
		}
		c.Entries[i] = e
	}
	return &c
}
