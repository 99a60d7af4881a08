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

// EventReader reads flow events from eg_events, the per-CPU event rings
// (bpf/maps.h), woken through eg_wake.
type EventReader struct {
	rings *ringMem
	wake  *ringbuf.Reader
	clock *Clock
	rec   ringbuf.Record
	poll  time.Duration
	// corrupt, if set, is told of records that break the rings'
	// protocol; they are skipped.
	corrupt func(error)
}

// NewEventReader opens a reader on the event rings. Only one reader may
// consume them at a time: the rings have one consumer.
func (d *Datapath) NewEventReader() (*EventReader, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errClosed
	}
	geo, err := eventRingOf(d.cfg.RingBufBytes)
	if err != nil {
		return nil, err
	}
	rings, err := mapEventRing(d.objs.EgEvents, geo)
	if err != nil {
		return nil, err
	}
	wake, err := ringbuf.NewReader(d.objs.EgWake)
	if err != nil {
		rings.close()
		return nil, fmt.Errorf("open eg_wake reader: %w", err)
	}
	// Below the wake-up threshold the reader polls, so that a lone event
	// is delivered within this time.
	return &EventReader{rings: rings, wake: wake, clock: d.clock, poll: 100 * time.Millisecond}, nil
}

// OnCorrupt sets what is told of records that break the rings' protocol
// (each is skipped with what follows it on its CPU's ring). Call it
// before Run.
func (r *EventReader) OnCorrupt(f func(error)) { r.corrupt = f }

// Run calls handle for every event until ctx is done, then closes the
// reader and returns nil. handle must not keep ev.
func (r *EventReader) Run(ctx context.Context, handle func(ev *FlowEvent)) error {
	stop := context.AfterFunc(ctx, func() { r.Close() })
	defer stop()
	for {
		_, err := r.Drain(handle)
		switch {
		case errors.Is(err, errRingClosed):
			return nil
		case err != nil && r.corrupt != nil:
			r.corrupt(err)
		}
		r.wake.SetDeadline(time.Now().Add(r.poll))
		err = r.wake.ReadInto(&r.rec)
		switch {
		case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed):
			return nil
		default:
			return fmt.Errorf("read eg_wake: %w", err)
		}
	}
}

// Drain hands every event waiting in the rings to handle, without
// waiting for more, and returns how many it read. An error names the
// records it skipped as corrupt; the others were read.
func (r *EventReader) Drain(handle func(ev *FlowEvent)) (int, error) {
	var ev FlowEvent
	return r.rings.drain(func(rec []byte) error {
		if err := DecodeEvent(rec, r.clock, &ev); err != nil {
			return err
		}
		handle(&ev)
		return nil
	})
}

// Close stops the reader; Run returns.
func (r *EventReader) Close() error {
	return errors.Join(r.wake.Close(), r.rings.close())
}

// Pending returns how many bytes of events wait in the rings.
func (r *EventReader) Pending() int { return r.rings.pending() }

// RingSize returns the rings' capacity in bytes, all CPUs together.
func (r *EventReader) RingSize() int {
	return int(r.rings.geo.cpus) * int(r.rings.geo.slots) * evSlotBytes
}
