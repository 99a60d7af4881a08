package policy

import (
	"fmt"
	"net/netip"
	"slices"
)

// Validate runs the checks that span documents and files: duplicate names,
// addresses and interfaces, at most one host-mode workload per node,
// references to webhooks, and (as warnings) selectors that match no
// workload. Parse has already checked each document on its own.
func (s *Set) Validate() Diagnostics {
	var ds Diagnostics
	errorf := func(pos Pos, path, format string, args ...any) {
		ds = append(ds, Diagnostic{Pos: pos, Path: path, Message: fmt.Sprintf(format, args...)})
	}

	uniqueNames := func(kind string, metas []Meta) {
		first := make(map[string]Pos, len(metas))
		for _, m := range metas {
			if m.Name == "" {
				continue
			}
			if p, dup := first[m.Name]; dup {
				errorf(m.NamePos, "metadata.name", "duplicate %s name %q (first defined at %s)", kind, m.Name, p)
				continue
			}
			first[m.Name] = m.NamePos
		}
	}
	uniqueNames(KindWorkload, metas(s.Workloads, func(w Workload) Meta { return w.Meta }))
	uniqueNames(KindPolicy, metas(s.Policies, func(p Policy) Meta { return p.Meta }))
	uniqueNames(KindAlertRule, metas(s.AlertRules, func(a AlertRule) Meta { return a.Meta }))
	uniqueNames(KindWebhook, metas(s.Webhooks, func(w Webhook) Meta { return w.Meta }))

	type owner struct {
		name string
		pos  Pos
	}
	addrs := make(map[netip.Addr]owner)
	hosts := make(map[string]owner)
	ifaces := make(map[[2]string]owner)
	for _, w := range s.Workloads {
		for _, a := range w.Addresses {
			if o, dup := addrs[a]; dup && o.name != w.Name {
				errorf(w.NamePos, "addresses", "address %s already belongs to workload %q (%s)", a, o.name, o.pos)
				continue
			}
			addrs[a] = owner{w.Name, w.NamePos}
		}
		if w.Node == "" {
			continue
		}
		if w.HostMode() {
			if o, dup := hosts[w.Node]; dup && o.name != w.Name {
				errorf(w.NamePos, "interface", "node %q already has host-mode workload %q (%s); a node has at most one (give container workloads an interface)", w.Node, o.name, o.pos)
				continue
			}
			hosts[w.Node] = owner{w.Name, w.NamePos}
			continue
		}
		if w.Auto() {
			continue // each resolves to its own interface on the node; the agent reports clashes
		}
		key := [2]string{w.Node, w.Interface}
		if o, dup := ifaces[key]; dup && o.name != w.Name {
			errorf(w.NamePos, "interface", "interface %q on node %q already belongs to workload %q (%s)", w.Interface, w.Node, o.name, o.pos)
			continue
		}
		ifaces[key] = owner{w.Name, w.NamePos}
	}

	webhooks := make(map[string]bool, len(s.Webhooks))
	for _, w := range s.Webhooks {
		webhooks[w.Name] = true
	}
	for _, a := range s.AlertRules {
		if slices.Contains(BuiltinAlertRules, a.Name) {
			errorf(a.NamePos, "metadata.name", "AlertRule name %q is the controller's built-in node alert's: alerts of both would read as one; choose another name", a.Name)
		}
		for _, ref := range a.Notify {
			if !webhooks[ref.Name] {
				errorf(ref.Pos, ref.Path, "unknown webhook %q (no Webhook resource has that name)", ref.Name)
			}
		}
	}

	ds = append(ds, s.selectorWarnings()...)
	return ds
}

func metas[T any](items []T, meta func(T) Meta) []Meta {
	out := make([]Meta, len(items))
	for i, it := range items {
		out[i] = meta(it)
	}
	return out
}

// selectorWarnings warns about selectors that match no workload: usually a
// typo in a label, which would leave the intended traffic default-denied.
// Label sets are indexed by their pairs, so each selector only looks at
// the label sets that have its rarest pair.
func (s *Set) selectorWarnings() Diagnostics {
	var ds Diagnostics
	byPair := make(map[string][]Labels)
	seen := make(map[string]bool)
	for _, w := range s.Workloads {
		key := w.Labels.String()
		if seen[key] {
			continue
		}
		seen[key] = true
		for k, v := range w.Labels {
			byPair[k+"="+v] = append(byPair[k+"="+v], w.Labels)
		}
	}
	matches := func(sel Selector) bool {
		if len(sel) == 0 {
			return len(s.Workloads) > 0
		}
		var cands []Labels
		first := true
		for k, v := range sel {
			list := byPair[k+"="+v]
			if first || len(list) < len(cands) {
				cands, first = list, false
			}
		}
		for _, l := range cands {
			if sel.Matches(l) {
				return true
			}
		}
		return false
	}
	check := func(peers []Peer) {
		for _, p := range peers {
			if p.Selector != nil && !matches(p.Selector) {
				ds = append(ds, Diagnostic{Pos: p.Pos, Path: p.Path + ".selector", Severity: SeverityWarning,
					Message: fmt.Sprintf("selector {%s} matches no workload", Labels(p.Selector))})
			}
		}
	}
	for _, p := range s.Policies {
		for _, r := range p.Rules {
			check(r.From)
			check(r.To)
		}
	}
	for _, a := range s.AlertRules {
		check(a.Match.From)
		check(a.Match.To)
		for _, e := range a.Except {
			check(e.From)
			check(e.To)
		}
	}
	return ds
}
