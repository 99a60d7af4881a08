package compile

import (
	"hash/fnv"
	"net/netip"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Identity, endpoint and rule ids are derived from names by hashing, so
// they are the same in every run, on the controller and in an agent's
// standalone mode, with no store: adding or removing one workload, label set
// or rule does not renumber the others. A hash collision is resolved by
// probing to the next free value, with keys taken in sorted order, so the
// outcome is deterministic too; only the later key (in sorted order) of a
// colliding pair moves, and only while the other exists.
//
// Identity ranges (all clear of the reserved ids below 256):
//
//	256 .. 2^31-1       label identities (distinct label sets of managed workloads)
//	2^31 .. 2^32-1      CIDR identities (one per distinct prefix in cidr/except)
const (
	labelIdentityFirst = uint64(ruleset.IdentityFirstAllocated)
	labelIdentityLast  = uint64(1<<31 - 1)
	cidrIdentityFirst  = uint64(1 << 31)
	cidrIdentityLast   = uint64(1<<32 - 1)
)

func hash64(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// allocate gives each key a value in [lo, hi] derived from its hash,
// probing upwards (wrapping) past values already taken and the reserved
// ones. keys must be sorted and unique, and fewer than the range minus
// the reserved values.
func allocate(keys []string, lo, hi uint64, reserved ...uint64) []uint64 {
	span := hi - lo + 1
	taken := make(map[uint64]bool, len(keys)+len(reserved))
	for _, r := range reserved {
		taken[r-lo] = true
	}
	out := make([]uint64, len(keys))
	for i, k := range keys {
		v := hash64(k) % span
		for taken[v] {
			v = (v + 1) % span
		}
		taken[v] = true
		out[i] = lo + v
	}
	return out
}

// LabelIdentity returns the identity a label set gets when no other label
// set collides with it (the common case; see the package comment).
func LabelIdentity(canonicalLabels string) ruleset.Identity {
	return ruleset.Identity(allocate([]string{canonicalLabels}, labelIdentityFirst, labelIdentityLast)[0])
}

// allocateAs is allocate for a typed id.
func allocateAs[T ~uint32](keys []string, lo, hi uint64, reserved ...uint64) []T {
	raw := allocate(keys, lo, hi, reserved...)
	out := make([]T, len(raw))
	for i, v := range raw {
		out[i] = T(v)
	}
	return out
}

// cidrIdentities allocates one identity per distinct prefix (sorted).
func cidrIdentities(prefixes []netip.Prefix) map[netip.Prefix]ruleset.Identity {
	keys := make([]string, len(prefixes))
	for i, p := range prefixes {
		keys[i] = p.String()
	}
	ids := allocateAs[ruleset.Identity](keys, cidrIdentityFirst, cidrIdentityLast)
	out := make(map[netip.Prefix]ruleset.Identity, len(prefixes))
	for i, p := range prefixes {
		out[p] = ids[i]
	}
	return out
}

// ruleIDs allocates rule ids from "policy/rule" names (sorted, unique),
// never 0 (the default deny) nor ruleset.RuleFailsafe (the agent's). Only
// a name hashing exactly onto the failsafe's id moves, so reserving it
// renumbered nothing else.
func ruleIDs(names []string) []ruleset.RuleID {
	return allocateAs[ruleset.RuleID](names, 1, 1<<32-1, uint64(ruleset.RuleFailsafe))
}

// endpointIDs allocates endpoint ids on one node from workload names
// (sorted, unique), never 0.
func endpointIDs(names []string) []ruleset.EndpointID {
	return allocateAs[ruleset.EndpointID](names, 1, 1<<32-1)
}
