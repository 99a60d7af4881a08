// Package flows turns datapath events into flow records, the unit every
// other part of Eastguard (flow log, controller store, alerts, dashboard)
// speaks: it aggregates events, writes the flow log, and spools batches for
// the controller until they are acknowledged. It must not touch the
// kernel: events come from agent/datapath.
package flows

import (
	"io"
	"net/netip"

	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Record is a flow as operators and scripts see it; the type lives in
// internal/flowrecord so that the controller can use it without the kernel
// side of this package.
type Record = flowrecord.Record

// protocolName names a protocol the way flow records do.
func protocolName(p ruleset.Protocol) string { return flowrecord.ProtocolName(p) }

// Namer resolves what flows carry as numbers: rule ids and the addresses of
// workloads (enforcer.Enforcer.Names).
type Namer func() (rules func(ruleset.RuleID) string, workloads func(netip.Addr) string)

// LineWriter writes records as JSON lines (the agent's --flow-log).
type LineWriter = flowrecord.LineWriter

// NewLineWriter writes to w.
func NewLineWriter(w io.Writer) *LineWriter { return flowrecord.NewLineWriter(w) }
