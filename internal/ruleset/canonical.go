package ruleset

import (
	"cmp"
	"slices"
)

// Canonicalize sorts every slice into a fixed order and removes duplicate
// entries, so that equal rule sets have equal encodings and equal hashes.
func (rs *RuleSet) Canonicalize() {
	slices.SortFunc(rs.Endpoints, func(a, b Endpoint) int { return cmp.Compare(a.ID, b.ID) })
	slices.SortFunc(rs.IPCache, compareIPCache)
	slices.SortFunc(rs.Entries, CompareEntries)
	rs.Entries = slices.CompactFunc(rs.Entries, func(a, b Entry) bool { return CompareEntries(a, b) == 0 })
	slices.SortFunc(rs.Rules, func(a, b RuleName) int { return cmp.Compare(a.ID, b.ID) })
}

func compareIPCache(a, b IPCacheEntry) int {
	if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits())
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

// Clone returns a deep copy: its own slices, and its own copies of what
// their elements point to (unshareParts).
func (rs *RuleSet) Clone() *RuleSet {
	c := *rs
	c.Endpoints = slices.Clone(rs.Endpoints)
	c.IPCache = slices.Clone(rs.IPCache)
	c.Rules = slices.Clone(rs.Rules)
	c.Entries = slices.Clone(rs.Entries)
	c.unshareParts()
	return &c
}
