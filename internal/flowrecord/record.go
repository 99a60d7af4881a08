// Package flowrecord defines the flow record, the unit every part of
// Eastguard that shows flows speaks (agent flow log, controller store and
// API, egctl, alerts, dashboard). It is plain data: it must not import the
// kernel side (agent/datapath) so that the controller can use it.
package flowrecord

import (
	"encoding/json"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Record is a flow as operators and scripts see it (docs/ARCHITECTURE.md, "Flow
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

// ProtocolName names a protocol the way flow records do: TCP, UDP, ICMP,
// ICMPv6, or proto-N for anything else.
func ProtocolName(p ruleset.Protocol) string {
	if p == ruleset.ProtocolAny {
		return "proto-0"
	}
	return p.String()
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
