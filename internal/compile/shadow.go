package compile

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// shadowStat counts, for one allow rule, its entries and how many of them
// deny entries cover completely (a deny beats every allow, semantics 2 of docs/POLICY.md).
type shadowStat struct {
	total, covered int
	by             map[ruleset.RuleID]bool
}

type denyKey struct {
	ep   ruleset.EndpointID
	dir  ruleset.Direction
	peer ruleset.Identity
}

// shadowStats checks every allow entry of one rule set against the deny
// entries of the same endpoint and direction. Would-deny entries do not
// shadow: under a monitor policy's deny the allowed traffic still passes.
func shadowStats(entries []ruleset.Entry) map[ruleset.RuleID]*shadowStat {
	denies := make(map[denyKey][]ruleset.Entry)
	for _, e := range entries {
		if e.Verdict == ruleset.VerdictDenied {
			k := denyKey{e.Endpoint, e.Direction, e.Peer}
			denies[k] = append(denies[k], e)
		}
	}
	stats := make(map[ruleset.RuleID]*shadowStat)
	for _, e := range entries {
		if e.Verdict != ruleset.VerdictAllowed {
			continue
		}
		st := stats[e.Rule]
		if st == nil {
			st = &shadowStat{by: make(map[ruleset.RuleID]bool)}
			stats[e.Rule] = st
		}
		st.total++
		var cands []ruleset.Entry
		cands = append(cands, denies[denyKey{e.Endpoint, e.Direction, e.Peer}]...)
		if e.Peer != ruleset.IdentityAny {
			cands = append(cands, denies[denyKey{e.Endpoint, e.Direction, ruleset.IdentityAny}]...)
		}
		if by, ok := covers(cands, e); ok {
			st.covered++
			for _, r := range by {
				st.by[r] = true
			}
		}
	}
	return stats
}

// covers reports whether the union of the deny entries covers every port of
// e, and which rules do it.
func covers(denies []ruleset.Entry, e ruleset.Entry) ([]ruleset.RuleID, bool) {
	type span struct {
		lo, hi int
		rule   ruleset.RuleID
	}
	var spans []span
	for _, d := range denies {
		if d.Protocol == ruleset.ProtocolAny {
			return []ruleset.RuleID{d.Rule}, true
		}
		if d.Protocol == e.Protocol {
			lo, hi := d.PortRange()
			spans = append(spans, span{int(lo), int(hi), d.Rule})
		}
	}
	if e.Protocol == ruleset.ProtocolAny || len(spans) == 0 {
		return nil, false
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.lo, b.lo) })
	lo, hi := e.PortRange()
	next := int(lo) // first port not yet covered
	var by []ruleset.RuleID
	for _, s := range spans {
		if s.lo > next || s.hi < next {
			if s.lo > next {
				break
			}
			continue
		}
		by = append(by, s.rule)
		next = s.hi + 1
		if next > int(hi) {
			return by, true
		}
	}
	return nil, false
}

func mergeShadow(into, from map[ruleset.RuleID]*shadowStat) {
	for id, st := range from {
		t := into[id]
		if t == nil {
			t = &shadowStat{by: make(map[ruleset.RuleID]bool)}
			into[id] = t
		}
		t.total += st.total
		t.covered += st.covered
		for r := range st.by {
			t.by[r] = true
		}
	}
}

// shadowWarnings warns about allow rules every entry of which a deny
// overrides, and about rules with no managed end at all. Both need every
// node: with a subset, a rule may only look shadowed or idle.
func (c *compiler) shadowWarnings(stats map[ruleset.RuleID]*shadowStat, complete bool) policy.Diagnostics {
	if !complete {
		return nil
	}
	names := make(map[ruleset.RuleID]string, len(c.rules))
	for _, r := range c.rules {
		names[r.ref.id] = r.ref.name
	}
	var ds policy.Diagnostics
	for _, r := range c.rules {
		rule := r.ref.rule
		if r.ends == 0 {
			if !hasSelector(rule.From) && !hasSelector(rule.To) { // a selector matching nothing is warned about already
				ds = append(ds, policy.Diagnostic{Pos: rule.Pos, Path: rule.Path, Severity: policy.SeverityWarning,
					Message: "rule has no managed workload at either end, so nothing enforces it"})
			}
			continue
		}
		st := stats[r.ref.id]
		if r.verdict != ruleset.VerdictAllowed || st == nil || st.total == 0 || st.covered < st.total {
			continue
		}
		var by []string
		for id := range st.by {
			by = append(by, names[id])
		}
		slices.Sort(by)
		ds = append(ds, policy.Diagnostic{Pos: rule.Pos, Path: rule.Path, Severity: policy.SeverityWarning,
			Message: fmt.Sprintf("rule is fully shadowed by deny rule %s: nothing it allows is ever allowed", strings.Join(by, ", "))})
	}
	return ds
}

func hasSelector(peers []policy.Peer) bool {
	return slices.ContainsFunc(peers, func(p policy.Peer) bool { return p.Selector != nil })
}
