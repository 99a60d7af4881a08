package compile

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/eastguard/eastguard/internal/policy"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// FailsafeIdentityName describes the failsafe's identities for people.
const FailsafeIdentityName = "control plane (failsafe)"

// WithFailsafe completes every compiled rule set that has a host-mode
// endpoint with the agent's failsafe for a controller at ctl (all on one
// port, as an agent's --controller has one), and encodes them again, so
// that Explain decides the agent's own control traffic as its datapath
// will. The DNS resolvers and the node's own addresses are what only the
// node knows; they are not added.
func (r *Result) WithFailsafe(ctl []netip.AddrPort) error {
	if len(ctl) == 0 {
		return nil
	}
	cp := ruleset.ControlPlane{Port: ctl[0].Port()}
	for _, ap := range ctl {
		if ap.Port() != cp.Port {
			return fmt.Errorf("controller addresses %s and %s: an agent's controller has one port", ctl[0], ap)
		}
		cp.Controller = append(cp.Controller, ap.Addr())
	}
	for _, n := range r.Nodes {
		rs, err := ruleset.WithFailsafe(r.RuleSets[n], cp)
		if err != nil {
			return fmt.Errorf("node %s: %w", n, err)
		}
		if rs == r.RuleSets[n] {
			continue
		}
		tables, err := ruleset.Encode(rs)
		if err != nil {
			return fmt.Errorf("node %s: %w", n, err)
		}
		r.RuleSets[n], r.Tables[n] = rs, tables
		for _, c := range rs.IPCache {
			if c.Identity >= ruleset.IdentityFailsafeFirst && c.Identity <= ruleset.IdentityFailsafeLast {
				r.Identities[c.Identity] = FailsafeIdentityName
			}
		}
	}
	return nil
}

// Blocked is a controller address a node's host-mode endpoint may not
// reach by its policy.
type Blocked struct {
	Controller netip.AddrPort
	Verdict    ruleset.Verdict
	Rule       string
}

// BlockedControlPlane decides, for rs's host-mode endpoint, a new TCP
// connection to each controller address, with the policy alone (rs as
// compiled, without the agent's failsafe), and returns those not allowed:
// only the agent's own control connection passes there (failsafe), the
// rest of the node is cut off from its controller. A rule set without a
// host-mode endpoint does not enforce the node's own traffic: nothing is
// blocked. Addresses of the node itself or its workloads are skipped
// (that traffic never crosses the node's interfaces).
func BlockedControlPlane(rs *ruleset.RuleSet, tables *ruleset.Tables, ctl []netip.AddrPort) []Blocked {
	host, ok := rs.HostEndpoint()
	if !ok {
		return nil
	}
	var out []Blocked
	for _, ap := range ctl {
		peer := rs.Resolve(ap.Addr())
		if peer == ruleset.IdentityHost || slices.ContainsFunc(rs.Endpoints, func(e ruleset.Endpoint) bool { return e.Identity == peer }) {
			continue
		}
		if v := tables.Decide(host, ruleset.Egress, peer, ruleset.ProtocolTCP, ap.Port()); v.Verdict != ruleset.VerdictAllowed {
			out = append(out, Blocked{Controller: ap, Verdict: v.Verdict, Rule: rs.RuleName(v.Rule)})
		}
	}
	return out
}

// ControlPlaneMessage says what a blocked controller address means, for a
// warning about the host-mode workload.
func ControlPlaneMessage(workload, node string, b Blocked) string {
	cut := "is cut off from the controller"
	if b.Verdict == ruleset.VerdictWouldDeny {
		cut = "would be cut off from the controller in enforce mode"
	}
	return fmt.Sprintf("host-mode workload %s: no rule lets node %s reach the controller at %s (TCP egress %s by %s); "+
		"only the agent's own control connection passes there (%s), everything else on the node %s",
		workload, node, b.Controller, b.Verdict, b.Rule, ruleset.FailsafeName, cut)
}

// ControlPlaneWarnings warns, at the workload, about every host-mode
// workload of a compiled node whose policy does not let its node reach a
// controller address (BlockedControlPlane).
func ControlPlaneWarnings(set *policy.Set, res *Result, ctl []netip.AddrPort) policy.Diagnostics {
	var ds policy.Diagnostics
	for i := range set.Workloads {
		w := &set.Workloads[i]
		rs, ok := res.RuleSets[w.Node]
		if !w.HostMode() || !ok {
			continue
		}
		for _, b := range BlockedControlPlane(rs, res.Tables[w.Node], ctl) {
			ds = append(ds, policy.Diagnostic{Pos: w.NamePos, Path: "metadata.name", Severity: policy.SeverityWarning,
				Message: ControlPlaneMessage(w.Name, w.Node, b)})
		}
	}
	return ds
}
