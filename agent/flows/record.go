// Package flows turns datapath events into flow records, the unit every
// other part of Eastguard (flow log, controller store, alerts, dashboard)
// speaks. It must not touch the kernel: events come from agent/datapath.
package flows

import (
	"io"
	"net/netip"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Record is a flow as operators and scripts see it; the type lives in
// internal/flowrecord so that the controller can use it without the kernel
// side of this package.
type Record = flowrecord.Record

// protocolName names a protocol the way flow records do.
func protocolName(p ruleset.Protocol) string { return flowrecord.ProtocolName(p) }

// Namer resolves what events carry as numbers.
type Namer func() (rules func(ruleset.RuleID) string, workloads func(netip.Addr) string)

// FromEvent makes the record of one event.
func FromEvent(node string, ev *datapath.FlowEvent, rules func(ruleset.RuleID) string, workloads func(netip.Addr) string) Record {
	r := Record{
		Time:        ev.Time.UTC(),
		Node:        node,
		Direction:   ev.Direction,
		Protocol:    protocolName(ev.Protocol),
		SrcAddr:     ev.Src,
		SrcPort:     ev.SrcPort,
		SrcWorkload: workloads(ev.Src),
		SrcIdentity: ev.SrcIdentity,
		DstAddr:     ev.Dst,
		DstPort:     ev.DstPort,
		DstWorkload: workloads(ev.Dst),
		DstIdentity: ev.DstIdentity,
		Verdict:     ev.Verdict,
		Rule:        rules(ev.Rule),
		Packets:     1,
		Bytes:       uint64(ev.Length),
		FirstSeen:   ev.Time.UTC(),
		LastSeen:    ev.Time.UTC(),
	}
	if ev.Protocol.IsICMP() {
		typ, code := ev.ICMP()
		r.ICMPType, r.ICMPCode = &typ, &code
		r.DstPort = 0
	}
	if ev.Reason != datapath.ReasonPolicy {
		r.Reason = ev.Reason.String()
	}
	return r
}

// LineWriter writes records as JSON lines (the agent's --flow-log).
type LineWriter = flowrecord.LineWriter

// NewLineWriter writes to w.
func NewLineWriter(w io.Writer) *LineWriter { return flowrecord.NewLineWriter(w) }
