// Package flows turns datapath events into flow records, the unit every
// other part of Eastguard (flow log, controller store, alerts, dashboard)
// speaks: it aggregates events, writes the flow log, and spools batches for
// the controller until they are acknowledged. It must not touch the
// kernel: events come from agent/datapath.
package flows

import (
	"net/netip"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Names resolves what flows carry as numbers. A nil function names
// nothing.
type Names struct {
	// Rules names rule ids (policy/rule, default-deny).
	Rules func(ruleset.RuleID) string
	// Workloads names the workload behind an address: a standalone agent
	// knows every workload's addresses; with a controller the agent knows
	// none, and the controller names the flows it stores.
	Workloads func(netip.Addr) string
	// Endpoints names the workload of one of this node's endpoints: the
	// end of a flow on this node (the destination of an ingress flow, the
	// source of an egress one), known from the rule set in force even
	// when addresses are not.
	Endpoints func(ruleset.EndpointID) string
}

// Namer returns the names in force now (enforcer.Enforcer.Names and the
// endpoint table, wired in package agent).
type Namer func() Names

func (n Names) rule(id ruleset.RuleID) string {
	if n.Rules == nil {
		return ""
	}
	return n.Rules(id)
}

// ends names a flow's source and destination: by address where known,
// else the local end by its endpoint. A spoofed packet's source address
// is not its workload's, so it is named by address only.
func (n Names) ends(f *Flow) (src, dst string) {
	if n.Workloads != nil {
		src, dst = n.Workloads(f.Src), n.Workloads(f.Dst)
	}
	if n.Endpoints == nil || f.Endpoint == 0 {
		return src, dst
	}
	switch {
	case f.Dir == ruleset.Ingress && dst == "":
		dst = n.Endpoints(f.Endpoint)
	case f.Dir == ruleset.Egress && src == "" && f.Reason != datapath.ReasonSpoofed:
		src = n.Endpoints(f.Endpoint)
	}
	return src, dst
}
