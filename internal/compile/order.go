package compile

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// sortEntries orders entries as ruleset.CompareEntries does, and drops
// duplicates, using packed integer keys: on large nodes this is most of
// the compile time otherwise.
func sortEntries(entries []ruleset.Entry) []ruleset.Entry {
	type keyed struct {
		k1, k2 uint64
		rule   ruleset.RuleID
		i      int32
	}
	keys := make([]keyed, len(entries))
	for i, e := range entries {
		lo, hi := e.PortRange()
		keys[i] = keyed{
			k1:   uint64(e.Endpoint)<<33 | uint64(e.Direction)<<32 | uint64(e.Peer),
			k2:   uint64(e.Protocol)<<48 | uint64(lo)<<32 | uint64(hi)<<16 | uint64(e.Verdict),
			rule: e.Rule,
			i:    int32(i),
		}
	}
	slices.SortFunc(keys, func(a, b keyed) int {
		return cmp.Or(cmp.Compare(a.k1, b.k1), cmp.Compare(a.k2, b.k2), cmp.Compare(a.rule, b.rule))
	})
	out := make([]ruleset.Entry, 0, len(entries))
	for j, k := range keys {
		if j > 0 && k.k1 == keys[j-1].k1 && k.k2 == keys[j-1].k2 && k.rule == keys[j-1].rule {
			continue
		}
		out = append(out, entries[k.i])
	}
	return out
}

// mergeIPCache returns a new slice: the node's CIDR prefixes (sorted)
// merged into the managed addresses (sorted, shared by every node, so never
// modified), in canonical order.
func mergeIPCache(managed []ruleset.IPCacheEntry, prefixes []netip.Prefix, ids map[netip.Prefix]ruleset.Identity) []ruleset.IPCacheEntry {
	out := make([]ruleset.IPCacheEntry, 0, len(managed)+len(prefixes))
	i := 0
	for _, q := range prefixes {
		for i < len(managed) && comparePrefix(managed[i].Prefix, q) < 0 {
			out = append(out, managed[i])
			i++
		}
		out = append(out, ruleset.IPCacheEntry{Prefix: q, Identity: ids[q]})
	}
	return append(out, managed[i:]...)
}
