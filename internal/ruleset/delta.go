package ruleset

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Delta is the incremental change from one rule set of a node to the next,
// for the control plane to send instead of the whole set. Keyed items
// (endpoints by id, ipcache entries by prefix, rule names by id) are put
// (added or replaced) or deleted by key, which maps onto map updates in
// the datapath without a window where a changed key is missing. Entries
// have no key (they may overlap and are resolved as a whole by Encode), so
// they are added and deleted as values.
type Delta struct {
	Node string `json:"node"`
	// BaseHash is the Hash of the rule set the delta applies to, Hash that
	// of the result; Version is the result's version. Diff leaves the
	// hashes empty (hashing a large rule set costs more than diffing it, and
	// the control plane has them already); ApplyDelta checks them when set.
	BaseHash string `json:"baseHash"`
	Hash     string `json:"hash"`
	Version  uint64 `json:"version,omitempty"`

	PutEndpoints    []Endpoint     `json:"putEndpoints,omitempty"`
	DeleteEndpoints []EndpointID   `json:"deleteEndpoints,omitempty"`
	PutIPCache      []IPCacheEntry `json:"putIPCache,omitempty"`
	DeleteIPCache   []netip.Prefix `json:"deleteIPCache,omitempty"`
	AddEntries      []Entry        `json:"addEntries,omitempty"`
	DeleteEntries   []Entry        `json:"deleteEntries,omitempty"`
	PutRules        []RuleName     `json:"putRules,omitempty"`
	DeleteRules     []RuleID       `json:"deleteRules,omitempty"`
}

// Empty reports whether the delta changes nothing (the version aside).
func (d *Delta) Empty() bool { return d.Len() == 0 }

// Len counts the items the delta puts, adds or deletes.
func (d *Delta) Len() int {
	return len(d.PutEndpoints) + len(d.DeleteEndpoints) + len(d.PutIPCache) + len(d.DeleteIPCache) +
		len(d.AddEntries) + len(d.DeleteEntries) + len(d.PutRules) + len(d.DeleteRules)
}

// Diff returns the delta that turns old into new. Neither is modified; the
// result's slices are in canonical order.
func Diff(old, new *RuleSet) Delta {
	o, n := canonical(old), canonical(new)
	d := Delta{Node: n.Node, Version: n.Version}

	d.PutEndpoints, d.DeleteEndpoints = diffKeyed(o.Endpoints, n.Endpoints,
		func(e Endpoint) EndpointID { return e.ID }, cmp.Compare[EndpointID], Endpoint.Equal)
	d.PutIPCache, d.DeleteIPCache = diffKeyed(o.IPCache, n.IPCache,
		func(e IPCacheEntry) netip.Prefix { return e.Prefix }, comparePrefixes, same[IPCacheEntry])
	d.PutRules, d.DeleteRules = diffKeyed(o.Rules, n.Rules,
		func(r RuleName) RuleID { return r.ID }, cmp.Compare[RuleID], same[RuleName])

	// Both entry lists are sorted and duplicate-free: merge them.
	i, j := 0, 0
	for i < len(o.Entries) || j < len(n.Entries) {
		switch {
		case j == len(n.Entries):
			d.DeleteEntries = append(d.DeleteEntries, o.Entries[i])
			i++
		case i == len(o.Entries):
			d.AddEntries = append(d.AddEntries, n.Entries[j])
			j++
		default:
			switch c := CompareEntries(o.Entries[i], n.Entries[j]); {
			case c < 0:
				d.DeleteEntries = append(d.DeleteEntries, o.Entries[i])
				i++
			case c > 0:
				d.AddEntries = append(d.AddEntries, n.Entries[j])
				j++
			default:
				i++
				j++
			}
		}
	}
	return d
}

// canonical returns rs itself when it is already canonical (the compiler's
// output is, and a large node's rule set is costly to copy), otherwise a
// canonical copy. The result is only read.
func canonical(rs *RuleSet) *RuleSet {
	if slices.IsSortedFunc(rs.Endpoints, func(a, b Endpoint) int { return cmp.Compare(a.ID, b.ID) }) &&
		slices.IsSortedFunc(rs.IPCache, func(a, b IPCacheEntry) int { return comparePrefixes(a.Prefix, b.Prefix) }) &&
		slices.IsSortedFunc(rs.Rules, func(a, b RuleName) int { return cmp.Compare(a.ID, b.ID) }) &&
		strictlySorted(rs.Entries) {
		return rs
	}
	c := rs.Clone()
	c.Canonicalize()
	return c
}

func strictlySorted(entries []Entry) bool {
	for i := 1; i < len(entries); i++ {
		if CompareEntries(entries[i-1], entries[i]) >= 0 {
			return false
		}
	}
	return true
}

func comparePrefixes(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// diffKeyed merges two lists sorted by key: items new or changed in b are
// put, keys only in a are deleted.
func diffKeyed[T any, K any](a, b []T, key func(T) K, compare func(K, K) int, equal func(T, T) bool) (put []T, del []K) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b):
			del = append(del, key(a[i]))
			i++
		case i == len(a):
			put = append(put, b[j])
			j++
		default:
			switch c := compare(key(a[i]), key(b[j])); {
			case c < 0:
				del = append(del, key(a[i]))
				i++
			case c > 0:
				put = append(put, b[j])
				j++
			default:
				if !equal(a[i], b[j]) {
					put = append(put, b[j])
				}
				i++
				j++
			}
		}
	}
	return put, del
}

// ErrDeltaBase is matched by the error ApplyDelta returns when the delta
// was computed against another rule set than the one it is applied to; the
// receiver should ask for a full rule set.
var ErrDeltaBase = errors.New("delta does not apply to this rule set")

// ApplyDelta returns the rule set d turns rs into, canonical, with d's
// version. rs is not modified. It fails, matching ErrDeltaBase, when rs is
// not the delta's base (by hash, when the delta has one; and always when an
// item to delete is missing or an entry to add is present), and when the
// result's hash is not the one the delta promises.
func (rs *RuleSet) ApplyDelta(d Delta) (*RuleSet, error) {
	out, _, err := rs.ApplyDeltaFrom(d, nil)
	return out, err
}

// ApplyDeltaFrom is ApplyDelta, with the result's hash resumed from part
// (rs's hash part, or nil: see HashFrom), and the result's own part: an
// agent that keeps it hashes a delta that leaves its endpoints and
// ipcache alone by encoding only the entries and rules. The hash checked
// is the result's whole hash either way.
func (rs *RuleSet) ApplyDeltaFrom(d Delta, part *HashPart) (*RuleSet, *HashPart, error) {
	// Every slice of the result is built anew below (applyKeyed and
	// applyEntries merge into new slices), so the base is only read: it is
	// not copied (an agent's rule set is copied once per update, not
	// twice), and what the result shares with it, endpoint addresses and
	// ICMP fields, is copied at the end (unshareParts).
	c := canonical(rs)
	out := &RuleSet{Node: c.Node, Endpoints: c.Endpoints, IPCache: c.IPCache, Entries: c.Entries, Rules: c.Rules}
	if d.BaseHash != "" {
		// The base's hash resumed from its own part, as the result's is.
		if h, _ := out.HashFrom(part); h != d.BaseHash {
			return nil, nil, fmt.Errorf("%w: base hash %s, rule set hash %s", ErrDeltaBase, d.BaseHash, h)
		}
	}
	if d.Node != "" && d.Node != out.Node {
		return nil, nil, fmt.Errorf("%w: delta for node %q, rule set of node %q", ErrDeltaBase, d.Node, out.Node)
	}
	var err error
	if out.Endpoints, err = applyKeyed(out.Endpoints, d.PutEndpoints, d.DeleteEndpoints,
		func(e Endpoint) EndpointID { return e.ID }, cmp.Compare[EndpointID], "endpoint"); err != nil {
		return nil, nil, err
	}
	if out.IPCache, err = applyKeyed(out.IPCache, d.PutIPCache, d.DeleteIPCache,
		func(e IPCacheEntry) netip.Prefix { return e.Prefix }, comparePrefixes, "ipcache prefix"); err != nil {
		return nil, nil, err
	}
	if out.Rules, err = applyKeyed(out.Rules, d.PutRules, d.DeleteRules,
		func(r RuleName) RuleID { return r.ID }, cmp.Compare[RuleID], "rule"); err != nil {
		return nil, nil, err
	}
	if out.Entries, err = applyEntries(out.Entries, d.AddEntries, d.DeleteEntries); err != nil {
		return nil, nil, err
	}
	out.unshareParts()
	out.Version = d.Version
	// Hash tells an empty slice (JSON []) from a nil one (null); a delta
	// cannot, so results use nil for "none", as the compiler does.
	out.Endpoints = nilIfEmpty(out.Endpoints)
	out.IPCache = nilIfEmpty(out.IPCache)
	out.Entries = nilIfEmpty(out.Entries)
	out.Rules = nilIfEmpty(out.Rules)
	out.Canonicalize()
	hash, outPart := out.HashFrom(part)
	if d.Hash != "" && hash != d.Hash {
		return nil, nil, fmt.Errorf("%w: result hash %s, delta promises %s", ErrDeltaBase, hash, d.Hash)
	}
	return out, outPart, nil
}

// applyKeyed merges sorted items with the puts and deletes (sorted here,
// since a delta may come from elsewhere): linear, whatever the delta size.
func applyKeyed[T any, K any](items, put []T, del []K, key func(T) K, compare func(K, K) int, what string) ([]T, error) {
	put = slices.Clone(put)
	slices.SortFunc(put, func(a, b T) int { return compare(key(a), key(b)) })
	del = slices.Clone(del)
	slices.SortFunc(del, compare)
	out := make([]T, 0, len(items)+len(put))
	i, p, d := 0, 0, 0
	for i < len(items) || p < len(put) {
		var next T
		switch {
		case i == len(items):
			next = put[p]
			p++
		case p == len(put) || compare(key(items[i]), key(put[p])) < 0:
			next = items[i]
			i++
		case compare(key(items[i]), key(put[p])) == 0:
			next = put[p] // replaced
			i++
			p++
		default:
			next = put[p]
			p++
		}
		k := key(next)
		for d < len(del) && compare(del[d], k) < 0 {
			return nil, fmt.Errorf("%w: %s %v to delete is not there", ErrDeltaBase, what, del[d])
		}
		if d < len(del) && compare(del[d], k) == 0 {
			d++
			continue
		}
		out = append(out, next)
	}
	if d < len(del) {
		return nil, fmt.Errorf("%w: %s %v to delete is not there", ErrDeltaBase, what, del[d])
	}
	return out, nil
}

func applyEntries(entries, add, del []Entry) ([]Entry, error) {
	drop := make([]bool, len(entries))
	for _, e := range del {
		i, found := slices.BinarySearchFunc(entries, e, CompareEntries)
		if !found || drop[i] {
			return nil, fmt.Errorf("%w: entry %+v to delete is not there", ErrDeltaBase, e)
		}
		drop[i] = true
	}
	out := make([]Entry, 0, len(entries)-len(del)+len(add))
	for i, e := range entries {
		if !drop[i] {
			out = append(out, e)
		}
	}
	for _, e := range add {
		if _, found := slices.BinarySearchFunc(entries, e, CompareEntries); found {
			if i, _ := slices.BinarySearchFunc(entries, e, CompareEntries); !drop[i] {
				return nil, fmt.Errorf("%w: entry %+v to add is there already", ErrDeltaBase, e)
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// unshareParts gives the rule set its own copies of what its slices'
// elements point to (endpoint addresses, ICMP type and code), so that it
// shares no memory with the rule set it was merged from.
func (rs *RuleSet) unshareParts() {
	for i := range rs.Endpoints {
		rs.Endpoints[i].Addresses = slices.Clone(rs.Endpoints[i].Addresses)
	}
	for i := range rs.Entries {
		rs.Entries[i].OwnICMP()
	}
}

// OwnICMP gives the entry its own copies of its ICMP type and code, so
// that it shares no pointer with another entry or rule set.
func (e *Entry) OwnICMP() {
	if e.ICMPType != nil {
		t := *e.ICMPType
		e.ICMPType = &t
	}
	if e.ICMPCode != nil {
		c := *e.ICMPCode
		e.ICMPCode = &c
	}
}

func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

// same is == for diffKeyed's comparable element types.
func same[T comparable](a, b T) bool { return a == b }
