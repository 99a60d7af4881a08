package wire

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	pb "github.com/eastguard/eastguard/proto/eastguard/v1"

	"github.com/eastguard/eastguard/internal/flowrecord"
	"github.com/eastguard/eastguard/internal/ruleset"
)

// MaxFlowBatchRecords bounds the records of one FlowBatch; an agent splits
// larger flushes.
const MaxFlowBatchRecords = 65536

// Flow record times must fall in [minFlowTime, maxFlowTime): anything
// else is a broken clock or a broken encoder, not a flow.
var (
	minFlowTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	maxFlowTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
)

// maxReasonLen bounds FlowRecord.reason (datapath reasons are short words).
const maxReasonLen = 32

// ToRecords checks every field of every record of the batch and returns
// the records as ARCHITECTURE's flow records, on behalf of node (the node
// of the stream's certificate: a batch never names its node). rules names
// rule ids and workloads names addresses ("" for an unmanaged address).
// One invalid record rejects the whole batch: the error names the record
// index and the field, e.g. "records[3].direction: 7 out of range (max 1)".
func ToRecords(b *pb.FlowBatch, node string, rules func(ruleset.RuleID) string, workloads func(netip.Addr) string) ([]flowrecord.Record, error) {
	if b.GetSeq() == 0 {
		return nil, errors.New("seq: 0 (batches are numbered from 1)")
	}
	if n := len(b.GetRecords()); n > MaxFlowBatchRecords {
		return nil, fmt.Errorf("records: %d records, more than the %d a batch may hold", n, MaxFlowBatchRecords)
	}
	out := make([]flowrecord.Record, len(b.GetRecords()))
	for i, m := range b.GetRecords() {
		if err := toRecord(m, &out[i], node, rules, workloads); err != nil {
			return nil, fmt.Errorf("records[%d].%w", i, err)
		}
	}
	return out, nil
}

// toRecord checks m and fills r. Errors start with the field name.
func toRecord(m *pb.FlowRecord, r *flowrecord.Record, node string, rules func(ruleset.RuleID) string, workloads func(netip.Addr) string) error {
	if m == nil {
		return errors.New("record: missing")
	}
	if err := errors.Join(
		small(m.GetDirection(), 1, "direction"), small(m.GetProtocol(), 8, "protocol"),
		small(m.GetSrcPort(), 16, "srcPort"), small(m.GetDstPort(), 16, "dstPort"),
	); err != nil {
		return err
	}
	if v := m.GetVerdict(); v < uint32(ruleset.VerdictAllowed) || v > uint32(ruleset.VerdictWouldDeny) {
		return fmt.Errorf("verdict: %d %w (want 1 allowed, 2 denied or 3 would-deny)", v, errRange)
	}
	for _, t := range []struct {
		name string
		v    int64
	}{{"timeUnixNano", m.GetTimeUnixNano()}, {"firstSeenUnixNano", m.GetFirstSeenUnixNano()}, {"lastSeenUnixNano", m.GetLastSeenUnixNano()}} {
		if t.v < minFlowTime || t.v >= maxFlowTime {
			return fmt.Errorf("%s: %d %w (want a time between 2000 and 2200)", t.name, t.v, errRange)
		}
	}
	if m.GetFirstSeenUnixNano() > m.GetLastSeenUnixNano() {
		return fmt.Errorf("lastSeenUnixNano: %d is before firstSeenUnixNano %d", m.GetLastSeenUnixNano(), m.GetFirstSeenUnixNano())
	}
	src, ok := netip.AddrFromSlice(m.GetSrcAddr())
	if !ok {
		return fmt.Errorf("srcAddr: address of %d bytes (want 4 or 16)", len(m.GetSrcAddr()))
	}
	dst, ok := netip.AddrFromSlice(m.GetDstAddr())
	if !ok {
		return fmt.Errorf("dstAddr: address of %d bytes (want 4 or 16)", len(m.GetDstAddr()))
	}
	if src.Is4() != dst.Is4() {
		return fmt.Errorf("dstAddr: %s and srcAddr %s are not of one address family", dst, src)
	}
	proto := ruleset.Protocol(m.GetProtocol())
	if proto.IsICMP() {
		if m.GetSrcPort() != 0 || m.GetDstPort() != 0 {
			return fmt.Errorf("dstPort: ports %d and %d given for %s (type and code go in icmpType and icmpCode)", m.GetSrcPort(), m.GetDstPort(), proto)
		}
	} else if m.IcmpType != nil || m.IcmpCode != nil {
		return fmt.Errorf("icmpType: ICMP type or code given for %s", flowrecord.ProtocolName(proto))
	}
	if len(m.GetReason()) > maxReasonLen || !isWord(m.GetReason()) {
		return fmt.Errorf("reason: %q is not a datapath reason (lowercase letters, digits and '-', at most %d)", m.GetReason(), maxReasonLen)
	}
	sentP, recvP, sentB, recvB := m.GetPacketsSent(), m.GetPacketsReceived(), m.GetBytesSent(), m.GetBytesReceived()
	if sentP == 0 && recvP == 0 && sentB == 0 && recvB == 0 {
		// An agent that predates per-direction counts: its records are
		// new-flow events, whose packets all went src -> dst.
		sentP, sentB = m.GetPackets(), m.GetBytes()
	}
	if s, c := sentP+recvP, m.GetPackets(); s < sentP || s != c {
		return fmt.Errorf("packetsSent: %d + packetsReceived %d is not packets %d", sentP, recvP, c)
	}
	if s, c := sentB+recvB, m.GetBytes(); s < sentB || s != c {
		return fmt.Errorf("bytesSent: %d + bytesReceived %d is not bytes %d", sentB, recvB, c)
	}
	var state flowrecord.State
	switch m.GetState() {
	case 0:
		state = flowrecord.StateNew
	case 1:
		state = flowrecord.StateActive
	case 2:
		state = flowrecord.StateClosed
	default:
		return fmt.Errorf("state: %d %w (want 0 new, 1 active or 2 closed)", m.GetState(), errRange)
	}
	*r = flowrecord.Record{
		Time:        time.Unix(0, m.GetTimeUnixNano()).UTC(),
		Node:        node,
		Direction:   ruleset.Direction(m.GetDirection()),
		Protocol:    flowrecord.ProtocolName(proto),
		SrcAddr:     src,
		SrcPort:     uint16(m.GetSrcPort()),
		SrcWorkload: workloads(src),
		SrcIdentity: ruleset.Identity(m.GetSrcIdentity()),
		DstAddr:     dst,
		DstPort:     uint16(m.GetDstPort()),
		DstWorkload: workloads(dst),
		DstIdentity: ruleset.Identity(m.GetDstIdentity()),
		Verdict:     ruleset.Verdict(m.GetVerdict()),
		Rule:        rules(ruleset.RuleID(m.GetRule())),
		Packets:     m.GetPackets(),
		Bytes:       m.GetBytes(),
		FirstSeen:   time.Unix(0, m.GetFirstSeenUnixNano()).UTC(),
		LastSeen:    time.Unix(0, m.GetLastSeenUnixNano()).UTC(),
		Reason:      m.GetReason(),

		PacketsSent: sentP, PacketsReceived: recvP, BytesSent: sentB, BytesReceived: recvB,
		State: state,
	}
	if m.IcmpType != nil {
		if err := small(*m.IcmpType, 8, "icmpType"); err != nil {
			return err
		}
		v := uint8(*m.IcmpType)
		r.ICMPType = &v
	}
	if m.IcmpCode != nil {
		if err := small(*m.IcmpCode, 8, "icmpCode"); err != nil {
			return err
		}
		v := uint8(*m.IcmpCode)
		r.ICMPCode = &v
	}
	return nil
}

func isWord(s string) bool {
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
