package flows

import (
	"net/netip"
	"sync"
	"time"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// Key is what makes events the same flow for aggregation: the packet's
// addresses and ports as seen at one endpoint, and what was decided.
type Key struct {
	Src, Dst netip.Addr
	SrcPort  uint16
	DstPort  uint16 // ICMP: type<<8|code
	Protocol ruleset.Protocol
	Dir      ruleset.Direction
	Verdict  ruleset.Verdict
	Reason   datapath.Reason
	Rule     ruleset.RuleID
	Endpoint ruleset.EndpointID
}

// Flow is an aggregated flow in numbers (identities, rule id). Names are
// added by whoever knows them: the agent for its flow log (Names), the
// controller for everything it stores.
type Flow struct {
	Key
	SrcIdentity, DstIdentity ruleset.Identity
	// Packets and Bytes count what the datapath reported: the first packet
	// of an admitted flow, every denied or would-deny packet it did not
	// rate-limit.
	Packets, Bytes uint64
	// FirstSeen and LastSeen are Unix nanoseconds (no pointers: a large
	// pending set costs the garbage collector nothing to scan).
	FirstSeen, LastSeen int64
	// State is what the record reports: StateNew for the datapath's
	// events, StateActive and StateClosed for a connection's totals
	// (Tracker).
	State State
	// The counts per direction from Src's point of view (Src -> Dst is
	// the flow's first packet). Events count only packets of their own
	// direction: all sent. Packets and Bytes are the sums.
	PacketsSent, PacketsReceived, BytesSent, BytesReceived uint64
	// Time is when a volume record was made (Unix nanoseconds); 0 for
	// new flows, whose time is FirstSeen.
	Time int64
}

// State is what a flow record reports (flowrecord.State, as a number: no
// pointers in Flow).
type State uint8

// States of a flow record.
const (
	StateNew State = iota
	StateActive
	StateClosed
)

// Record returns the state's name in flow records.
func (s State) Record() flowrecord.State {
	switch s {
	case StateActive:
		return flowrecord.StateActive
	case StateClosed:
		return flowrecord.StateClosed
	}
	return flowrecord.StateNew
}

// time is when the record was made.
func (f *Flow) time() int64 {
	if f.Time != 0 {
		return f.Time
	}
	return f.FirstSeen
}

// Aggregator folds events into flows until Flush. A denied port scan or a
// retried connection attempt becomes one flow per flush interval with a
// packet count, not one record per packet. It is safe for concurrent use.
type Aggregator struct {
	mu    sync.Mutex
	index map[Key]int32
	flows []Flow
	max   int
}

// NewAggregator holds at most max flows between flushes (Add reports when
// it is full).
func NewAggregator(max int) *Aggregator {
	return &Aggregator{index: make(map[Key]int32, 1024), max: max}
}

// Add folds one event in. It returns true when the aggregator holds max
// flows and should be flushed; the event is kept either way.
func (a *Aggregator) Add(ev *datapath.FlowEvent) (full bool) {
	k := Key{
		Src: ev.Src, Dst: ev.Dst, SrcPort: ev.SrcPort, DstPort: ev.DstPort,
		Protocol: ev.Protocol, Dir: ev.Direction, Verdict: ev.Verdict, Reason: ev.Reason,
		Rule: ev.Rule, Endpoint: ev.Endpoint,
	}
	t := ev.Time.UnixNano()
	a.mu.Lock()
	defer a.mu.Unlock()
	if i, ok := a.index[k]; ok {
		f := &a.flows[i]
		f.Packets++
		f.Bytes += uint64(ev.Length)
		f.PacketsSent++
		f.BytesSent += uint64(ev.Length)
		f.FirstSeen = min(f.FirstSeen, t)
		f.LastSeen = max(f.LastSeen, t)
		return len(a.flows) >= a.max
	}
	a.index[k] = int32(len(a.flows))
	a.flows = append(a.flows, Flow{
		Key: k, SrcIdentity: ev.SrcIdentity, DstIdentity: ev.DstIdentity,
		Packets: 1, Bytes: uint64(ev.Length), FirstSeen: t, LastSeen: t,
		PacketsSent: 1, BytesSent: uint64(ev.Length),
	})
	return len(a.flows) >= a.max
}

// Flush returns the flows gathered since the last flush and starts over.
func (a *Aggregator) Flush() []Flow {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.flows
	a.flows = make([]Flow, 0, max(len(out), 16))
	clear(a.index)
	return out
}

// Len returns the number of flows held.
func (a *Aggregator) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.flows)
}

// Record names a flow for people and scripts (docs/ARCHITECTURE.md, "Flow record").
func (f *Flow) Record(node string, names Names) flowrecord.Record {
	first, last := time.Unix(0, f.FirstSeen).UTC(), time.Unix(0, f.LastSeen).UTC()
	src, dst := names.ends(f)
	r := flowrecord.Record{
		Time: first, Node: node, Direction: f.Dir, Protocol: flowrecord.ProtocolName(f.Protocol),
		SrcAddr: f.Src, SrcPort: f.SrcPort, SrcWorkload: src, SrcIdentity: f.SrcIdentity,
		DstAddr: f.Dst, DstPort: f.DstPort, DstWorkload: dst, DstIdentity: f.DstIdentity,
		Verdict: f.Verdict, Rule: names.rule(f.Rule), Packets: f.Packets, Bytes: f.Bytes,
		FirstSeen: first, LastSeen: last,
		PacketsSent: f.PacketsSent, PacketsReceived: f.PacketsReceived,
		BytesSent: f.BytesSent, BytesReceived: f.BytesReceived, State: f.State.Record(),
	}
	r.Time = time.Unix(0, f.time()).UTC()
	if f.Protocol.IsICMP() {
		typ, code := uint8(f.DstPort>>8), uint8(f.DstPort)
		r.ICMPType, r.ICMPCode = &typ, &code
		r.DstPort = 0
	}
	if f.Reason != datapath.ReasonPolicy {
		r.Reason = f.Reason.String()
	}
	return r
}
