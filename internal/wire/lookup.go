package wire

import (
	"fmt"
	"net/netip"

	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// MaxLookupWorkload bounds LookupRequest.workload (a workload name is at
// most 253 bytes: policy's names).
const MaxLookupWorkload = 253

// Lookup is a LookupRequest checked (egctl explain --live): a new flow at
// the end of Workload, in Direction, with Peer at the other end.
type Lookup struct {
	ID        uint64
	Workload  string
	Direction ruleset.Direction
	Peer      netip.Addr
	Protocol  ruleset.Protocol
	Port      uint16
}

// FromLookup is the request on the wire.
func FromLookup(l Lookup) *pb.LookupRequest {
	return &pb.LookupRequest{Id: l.ID, Workload: l.Workload, Direction: uint32(l.Direction),
		PeerAddr: l.Peer.Unmap().AsSlice(), Protocol: uint32(l.Protocol), Port: uint32(l.Port)}
}

// ToLookup checks a request before the agent acts on it.
func ToLookup(m *pb.LookupRequest) (Lookup, error) {
	l := Lookup{ID: m.GetId(), Workload: m.GetWorkload()}
	if err := checkText("lookup.workload", l.Workload, MaxLookupWorkload); err != nil || l.Workload == "" {
		return l, fmt.Errorf("lookup.workload: want a workload name of 1 to %d bytes", MaxLookupWorkload)
	}
	if d := m.GetDirection(); d > uint32(ruleset.Egress) {
		return l, fmt.Errorf("lookup.direction: %d, want 0 (ingress) or 1 (egress)", d)
	}
	l.Direction = ruleset.Direction(m.GetDirection())
	a, ok := netip.AddrFromSlice(m.GetPeerAddr())
	if !ok {
		return l, fmt.Errorf("lookup.peerAddr: %d bytes, want 4 or 16", len(m.GetPeerAddr()))
	}
	l.Peer = a.Unmap()
	if m.GetProtocol() > 255 {
		return l, fmt.Errorf("lookup.protocol: %d is not an IP protocol number", m.GetProtocol())
	}
	l.Protocol = ruleset.Protocol(m.GetProtocol())
	if m.GetPort() > 65535 {
		return l, fmt.Errorf("lookup.port: %d, more than 65535", m.GetPort())
	}
	l.Port = uint16(m.GetPort())
	return l, nil
}

// CheckLookupAnswer checks what an agent answered before the controller
// shows any of it: its identifiers bounded, its enums in range. The error
// text is free and Cut by the caller.
func CheckLookupAnswer(a *pb.LookupAnswer) error {
	if err := checkText("lookupAnswer.appliedHash", a.GetAppliedHash(), MaxHashLen); err != nil {
		return err
	}
	if a.GetError() != "" {
		return nil
	}
	if v := a.GetVerdict(); v < uint32(ruleset.VerdictAllowed) || v > uint32(ruleset.VerdictWouldDeny) {
		return fmt.Errorf("lookupAnswer.verdict: %d is not a verdict", v)
	}
	if m := a.GetMode(); m > uint32(ruleset.ModeMonitor) {
		return fmt.Errorf("lookupAnswer.mode: %d is not a mode", m)
	}
	return nil
}
