// Package flows turns datapath events into flow records, the unit every
// other part of Eastguard (flow log, controller store, alerts, dashboard)
// speaks. It must not touch the kernel: events come from agent/datapath.
package flows

import (
	"encoding/json"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Record is a flow as operators and scripts see it (ARCHITECTURE.md, "Flow
// record"): JSON with these exact keys, ports as numbers, times RFC 3339.
type Record struct {
	Time        time.Time         `json:"time"`
	Node        string            `json:"node"`
	Direction   ruleset.Direction `json:"direction"`
	Protocol    string            `json:"protocol"`
	SrcAddr     netip.Addr        `json:"srcAddr"`
	SrcPort     uint16            `json:"srcPort"`
	SrcWorkload string            `json:"srcWorkload"`
	SrcIdentity ruleset.Identity  `json:"srcIdentity"`
	DstAddr     netip.Addr        `json:"dstAddr"`
	DstPort     uint16            `json:"dstPort"`
	DstWorkload string            `json:"dstWorkload"`
	DstIdentity ruleset.Identity  `json:"dstIdentity"`
	Verdict     ruleset.Verdict   `json:"verdict"`
	Rule        string            `json:"rule"`
	Packets     uint64            `json:"packets"`
	Bytes       uint64            `json:"bytes"`
	FirstSeen   time.Time         `json:"firstSeen"`
	LastSeen    time.Time         `json:"lastSeen"`
	// ICMPType and ICMPCode are set for ICMP and ICMPv6 flows (whose
	// ports are 0).
	ICMPType *uint8 `json:"icmpType,omitempty"`
	ICMPCode *uint8 `json:"icmpCode,omitempty"`
	// Reason says which datapath check decided a non-policy verdict
	// (spoofed, malformed, fragment, no-endpoint, revalidated).
	Reason string `json:"reason,omitempty"`
}

// protocolName names a protocol the way flow records do: TCP, UDP, ICMP,
// ICMPv6, or the number for anything else.
func protocolName(p ruleset.Protocol) string {
	if p == ruleset.ProtocolAny {
		return "proto-0"
	}
	return p.String()
}

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
type LineWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

// NewLineWriter writes to w.
func NewLineWriter(w io.Writer) *LineWriter { return &LineWriter{enc: json.NewEncoder(w)} }

// Write writes one record as a line.
func (l *LineWriter) Write(r *Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.enc.Encode(r)
}
