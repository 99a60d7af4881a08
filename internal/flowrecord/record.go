// Package flowrecord defines the flow record, the unit every part of
// Eastguard that shows flows speaks (agent flow log, controller store and
// API, egctl, alerts, dashboard). It is plain data: it must not import the
// kernel side (agent/datapath) so that the controller can use it.
package flowrecord

import (
	"encoding/json"
	"fmt"
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
	// Packets and Bytes are the totals of both directions.
	Packets   uint64    `json:"packets"`
	Bytes     uint64    `json:"bytes"`
	FirstSeen time.Time `json:"firstSeen"`
	LastSeen  time.Time `json:"lastSeen"`
	// The volume per direction, from the source's point of view (src ->
	// dst is the direction of the flow's first packet): Sent is src ->
	// dst, Received dst -> src. Sent + Received = Packets (Bytes).
	PacketsSent     uint64 `json:"packetsSent"`
	PacketsReceived uint64 `json:"packetsReceived"`
	BytesSent       uint64 `json:"bytesSent"`
	BytesReceived   uint64 `json:"bytesReceived"`
	// State says what the record reports: StateNew, the flow's first
	// record (the datapath's event; denied flows only ever have these);
	// StateActive, a connection's totals so far while it lasts; StateClosed,
	// its final totals.
	State State `json:"state"`
	// ICMPType and ICMPCode are set for ICMP and ICMPv6 flows (whose
	// ports are 0).
	ICMPType *uint8 `json:"icmpType,omitempty"`
	ICMPCode *uint8 `json:"icmpCode,omitempty"`
	// Reason says which datapath check decided a non-policy verdict
	// (spoofed, malformed, fragment, no-endpoint, revalidated).
	Reason string `json:"reason,omitempty"`
}

// State is what a record reports of its flow.
type State string

// States of a record.
const (
	StateNew    State = "new"
	StateActive State = "active"
	StateClosed State = "closed"
)

// ParseState parses a state name.
func ParseState(s string) (State, error) {
	switch st := State(s); st {
	case StateNew, StateActive, StateClosed:
		return st, nil
	}
	return "", fmt.Errorf("flow state %q: want new, active or closed", s)
}

// IsUpdate reports whether the record reports volume of a flow an
// earlier record already reported (active or closed): not a new attempt.
func (s State) IsUpdate() bool { return s == StateActive || s == StateClosed }

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
