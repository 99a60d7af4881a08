package datapath

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Reason says which path decided a flow event (enum eg_reason).
type Reason uint8

const (
	ReasonPolicy      Reason = Reason(bpfEgReasonEG_REASON_POLICY)
	ReasonNoEndpoint  Reason = Reason(bpfEgReasonEG_REASON_NO_ENDPOINT)
	ReasonSpoofed     Reason = Reason(bpfEgReasonEG_REASON_SPOOFED)
	ReasonFragment    Reason = Reason(bpfEgReasonEG_REASON_FRAGMENT)
	ReasonRevalidated Reason = Reason(bpfEgReasonEG_REASON_REVALIDATED)
	ReasonMalformed   Reason = Reason(bpfEgReasonEG_REASON_MALFORMED)
	// ReasonCTFull: the policy admitted the flow, but conntrack had no
	// room for it (the table, or the endpoint's quota): refused.
	ReasonCTFull Reason = Reason(bpfEgReasonEG_REASON_CT_FULL)
)

func (r Reason) String() string {
	switch r {
	case ReasonPolicy:
		return "policy"
	case ReasonNoEndpoint:
		return "no-endpoint"
	case ReasonSpoofed:
		return "spoofed"
	case ReasonFragment:
		return "fragment"
	case ReasonRevalidated:
		return "revalidated"
	case ReasonMalformed:
		return "malformed"
	case ReasonCTFull:
		return "conntrack-full"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// FlowEvent is one record of the datapath: a new flow admitted, or a packet
// denied or let through by monitor mode.
type FlowEvent struct {
	// Time is when the packet was seen (wall clock, converted from the
	// kernel's jiffies: resolution 1/HZ).
	Time             time.Time
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // ICMP: SrcPort 0, DstPort type<<8|code
	Protocol         ruleset.Protocol
	Ifindex          uint32
	Endpoint         ruleset.EndpointID
	SrcIdentity      ruleset.Identity
	DstIdentity      ruleset.Identity
	Direction        ruleset.Direction
	Verdict          ruleset.Verdict
	Rule             ruleset.RuleID
	Reason           Reason
	TCPFlags         uint8
	Length           uint32
	// Suppressed counts the deny events this CPU dropped under its rate
	// limit just before this one.
	Suppressed uint32
}

// ICMP returns the ICMP type and code of an ICMP or ICMPv6 event.
func (e *FlowEvent) ICMP() (typ, code uint8) { return uint8(e.DstPort >> 8), uint8(e.DstPort) }

// Offsets in struct eg_flow_event; TestLayout checks them against the
// bpf2go type. struct eg_flow_event4 (IPv4) is evSize4 bytes, with 4-byte
// addresses at evSrc and evSrc4Dst, and every later field at its offset
// here minus ev4Shift.
const (
	evSize4       = 56
	evSrc4Dst     = 12
	ev4Shift      = evSize - evSize4
	evSize        = 80
	evJiffies     = 0
	evSrc         = 8
	evDst         = 24
	evIfindex     = 40
	evEndpoint    = 44
	evSrcIdentity = 48
	evDstIdentity = 52
	evRule        = 56
	evSuppressed  = 60
	evLength      = 64
	evSrcPort     = 68
	evDstPort     = 70
	evFamily      = 72
	evProtocol    = 73
	evDirection   = 74
	evVerdict     = 75
	evReason      = 76
	evTCPFlags    = 77
)

// ErrShortEvent is returned for a ring record too short to be an event.
var ErrShortEvent = errors.New("short flow event record")

// DecodeEvent decodes a raw ring record. It does no allocation; the
// timestamp is converted with clock.
func DecodeEvent(b []byte, clock *Clock, ev *FlowEvent) error {
	le := binary.LittleEndian
	shift := 0 // how much earlier than in eg_flow_event the fields after dst are
	switch {
	case len(b) == evSize4:
		if b[evFamily-ev4Shift] != 4 {
			return fmt.Errorf("%w: %d-byte record of family %d", ErrShortEvent, evSize4, b[evFamily-ev4Shift])
		}
		ev.Src = netip.AddrFrom4([4]byte(b[evSrc : evSrc+4]))
		ev.Dst = netip.AddrFrom4([4]byte(b[evSrc4Dst : evSrc4Dst+4]))
		shift = ev4Shift
	case len(b) < evSize:
		return fmt.Errorf("%w: %d bytes, want %d (IPv6) or %d (IPv4)", ErrShortEvent, len(b), evSize, evSize4)
	case b[evFamily] == 4:
		ev.Src = netip.AddrFrom4([4]byte(b[evSrc : evSrc+4]))
		ev.Dst = netip.AddrFrom4([4]byte(b[evDst : evDst+4]))
	default:
		ev.Src = netip.AddrFrom16([16]byte(b[evSrc : evSrc+16]))
		ev.Dst = netip.AddrFrom16([16]byte(b[evDst : evDst+16]))
	}
	ev.Time = clock.Wall(le.Uint64(b[evJiffies:]))
	ev.Ifindex = le.Uint32(b[evIfindex-shift:])
	ev.Endpoint = ruleset.EndpointID(le.Uint32(b[evEndpoint-shift:]))
	ev.SrcIdentity = ruleset.Identity(le.Uint32(b[evSrcIdentity-shift:]))
	ev.DstIdentity = ruleset.Identity(le.Uint32(b[evDstIdentity-shift:]))
	ev.Rule = ruleset.RuleID(le.Uint32(b[evRule-shift:]))
	ev.Suppressed = le.Uint32(b[evSuppressed-shift:])
	ev.Length = le.Uint32(b[evLength-shift:])
	ev.SrcPort = le.Uint16(b[evSrcPort-shift:])
	ev.DstPort = le.Uint16(b[evDstPort-shift:])
	ev.Protocol = ruleset.Protocol(b[evProtocol-shift])
	ev.Direction = ruleset.Direction(b[evDirection-shift])
	ev.Verdict = ruleset.Verdict(b[evVerdict-shift])
	ev.Reason = Reason(b[evReason-shift])
	ev.TCPFlags = b[evTCPFlags-shift]
	return nil
}

// EventReader reads flow events from the ring buffer.
type EventReader struct {
	rd    *ringbuf.Reader
	clock *Clock
	rec   ringbuf.Record
	poll  time.Duration
}

// NewEventReader opens a reader on the event ring. Only one reader should
// consume the ring at a time.
func (d *Datapath) NewEventReader() (*EventReader, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errClosed
	}
	rd, err := ringbuf.NewReader(d.objs.EgEvents)
	if err != nil {
		return nil, fmt.Errorf("open eg_events reader: %w", err)
	}
	// With batched wake-ups the reader must also poll, so a lone event is
	// delivered within this time.
	poll := time.Duration(0)
	if d.cfg.EventsWakeupBytes > 1 {
		poll = 100 * time.Millisecond
	}
	return &EventReader{rd: rd, clock: d.clock, poll: poll}, nil
}

// Run calls handle for every event until ctx is done, then closes the
// reader and returns nil. handle must not keep ev.
func (r *EventReader) Run(ctx context.Context, handle func(ev *FlowEvent)) error {
	stop := context.AfterFunc(ctx, func() { r.rd.Close() })
	defer stop()
	var ev FlowEvent
	for {
		if r.poll > 0 {
			r.rd.SetDeadline(time.Now().Add(r.poll))
		}
		err := r.rd.ReadInto(&r.rec)
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed):
			return nil
		default:
			return fmt.Errorf("read eg_events: %w", err)
		}
		if err := DecodeEvent(r.rec.RawSample, r.clock, &ev); err != nil {
			return err
		}
		handle(&ev)
	}
}

// Close stops the reader; Run returns.
func (r *EventReader) Close() error { return r.rd.Close() }

// Pending returns how many bytes are queued in the ring.
func (r *EventReader) Pending() int { return r.rd.AvailableBytes() }

// RingSize returns the ring's capacity in bytes.
func (r *EventReader) RingSize() int { return r.rd.BufferSize() }
