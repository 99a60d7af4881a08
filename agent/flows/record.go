// Package flows turns datapath events into flow records, the unit every
// other part of Eastguard (flow log, controller store, alerts, dashboard)
// speaks: it aggregates events, writes the flow log, and spools batches for
// the controller until they are acknowledged. It must not touch the
// kernel: events come from agent/datapath.
package flows

import (
	"net/netip"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Namer resolves what flows carry as numbers: rule ids and the addresses of
// workloads (enforcer.Enforcer.Names).
type Namer func() (rules func(ruleset.RuleID) string, workloads func(netip.Addr) string)
